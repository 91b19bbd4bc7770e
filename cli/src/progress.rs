//! Following a cycle as a person sees it: on a terminal, one live line — a
//! spinner, the phase, the elapsed time — that ends as "online gen N"; when
//! piped, one plain line per event; with `--output json`, one object per
//! event.
//! No server contract (C1–C20): the caller's side; it relies on C13 and C20.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use workspace_lifecycle_client::{Error, Served, proto as pb};

use crate::{args::Output, render};

/// The display of one followed cycle.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    out: Output,
    what: &'static str,
    /// The last status shown while following a create.
    last_status: Option<i32>,
}

impl Progress {
    /// A live line when `tty`, else plain or JSON lines.
    pub(crate) fn new(tty: bool, out: Output, what: &'static str) -> Self {
        let bar = tty.then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {msg} [{elapsed_precise}]")
                    .expect("a valid template"),
            );
            bar.set_prefix(what);
            bar.set_message("requested");
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Self {
            bar,
            out,
            what,
            last_status: None,
        }
    }

    /// Shows one restart event.
    pub(crate) fn event(&mut self, event: &pb::RestartEvent) {
        match &self.bar {
            Some(bar) => {
                if let Some(step) = render::event_step(event) {
                    // Each step stays on screen as a line of its own, so
                    // the whole cycle can be read back.
                    bar.println(format!("  {step} (+{:.1}s)", bar.elapsed().as_secs_f64()));
                    bar.set_message(step);
                }
            }
            None => render::restart_event(self.out, event),
        }
    }

    /// Shows a create's progress from the workspace's state; the end once
    /// it is ONLINE or FAILED.
    pub(crate) fn workspace(&mut self, w: &pb::Workspace) -> Option<Result<Served, Error>> {
        if self.last_status != Some(w.status) {
            self.last_status = Some(w.status);
            let status = pb::WorkspaceStatus::try_from(w.status)
                .map(|s| s.as_str_name())
                .unwrap_or("UNKNOWN");
            match &self.bar {
                Some(bar) => {
                    bar.println(format!(
                        "  {status} gen {} (+{:.1}s)",
                        w.generation,
                        bar.elapsed().as_secs_f64()
                    ));
                    bar.set_message(status);
                }
                None => render::status_line(self.out, w),
            }
        }
        match pb::WorkspaceStatus::try_from(w.status) {
            Ok(pb::WorkspaceStatus::Online) => Some(Ok(Served {
                generation: w.generation,
                config_version: w.config_version,
            })),
            Ok(pb::WorkspaceStatus::Failed) => Some(Err(Error::CycleFailed {
                generation: w.generation,
                reason: w.status_reason.clone(),
            })),
            _ => None,
        }
    }

    /// Ends the display with how the cycle ended.
    pub(crate) fn finish(self, ended: &Result<Served, Error>) {
        let Some(bar) = self.bar else {
            // Plain and JSON output printed the final event already; a
            // create prints its end here.
            if self.what == "create" {
                render::served_line(self.out, ended);
            }
            return;
        };
        let elapsed = bar.elapsed().as_secs_f64();
        let line = match ended {
            Ok(served) => format!(
                "✓ online gen {} (config {}) in {elapsed:.1}s",
                served.generation, served.config_version
            ),
            Err(Error::Stopped { generation }) => {
                format!("✓ stopped gen {generation} in {elapsed:.1}s")
            }
            Err(Error::Deleted) => format!("✓ deleted in {elapsed:.1}s"),
            Err(err) => format!("✗ {} {err} after {elapsed:.1}s", self.what),
        };
        bar.finish_and_clear();
        println!("{line}");
    }
}
