//! How things print: aligned text for people, one JSON object per line for
//! scripts. Secret values are never printed (no RPC returns them).
//! No server contract (C1–C20): the caller's side; it relies on C13 and C20.

use serde_json::{Value, json};
use workspace_lifecycle_client::{Error, Served, proto as pb, proto::restart_event::Event};

use crate::{args::Output, exit::Exit};

fn ts(at: &Option<prost_types::Timestamp>) -> Value {
    match at {
        Some(at) => json!(at.to_string()),
        None => Value::Null,
    }
}

fn status_name(status: i32) -> &'static str {
    pb::WorkspaceStatus::try_from(status)
        .map(|s| s.as_str_name())
        .unwrap_or("UNKNOWN")
}

fn workspace_json(w: &pb::Workspace) -> Value {
    json!({
        "id": w.id,
        "name": w.name,
        "backend": pb::BackendKind::try_from(w.backend).map(|b| b.as_str_name()).unwrap_or("UNKNOWN"),
        "status": status_name(w.status),
        "status_reason": w.status_reason,
        "generation": w.generation,
        "config_version": w.config_version,
        "secret_names": w.secret_names,
        "file_paths": w.file_paths,
        "agent_config_version": w.agent.as_ref().map(|a| a.config_version),
        "running_cycle_id": w.running_cycle_id,
        "pending_cycle_id": w.pending_cycle_id,
        "created_at": ts(&w.created_at),
        "updated_at": ts(&w.updated_at),
    })
}

/// A table of workspaces, or one JSON object per workspace.
pub(crate) fn workspaces(out: Output, all: &[pb::Workspace]) {
    match out {
        Output::Json => all.iter().for_each(|w| println!("{}", workspace_json(w))),
        Output::Text => {
            println!(
                "{:<36}  {:<20}  {:<12}  {:>4}  {:>6}",
                "ID", "NAME", "STATUS", "GEN", "CONFIG"
            );
            for w in all {
                println!(
                    "{:<36}  {:<20}  {:<12}  {:>4}  {:>6}",
                    w.id,
                    w.name,
                    status_name(w.status),
                    w.generation,
                    w.config_version
                );
            }
        }
    }
}

/// One workspace in full.
pub(crate) fn workspace(out: Output, w: &pb::Workspace) {
    match out {
        Output::Json => println!("{}", workspace_json(w)),
        Output::Text => {
            let json = workspace_json(w);
            for (key, value) in json.as_object().expect("an object") {
                let shown = match value {
                    Value::String(s) => s.clone(),
                    Value::Null => "-".into(),
                    other => other.to_string(),
                };
                println!("{key:<22} {shown}");
            }
        }
    }
}

/// One line for a create's status change.
pub(crate) fn status_line(out: Output, w: &pb::Workspace) {
    match out {
        Output::Json => println!(
            "{}",
            json!({"event": "status", "status": status_name(w.status), "generation": w.generation})
        ),
        Output::Text => println!("{} generation {}", status_name(w.status), w.generation),
    }
}

/// The last line of a followed create when not on a terminal.
pub(crate) fn served_line(out: Output, ended: &Result<Served, Error>) {
    if let (Output::Text, Ok(served)) = (out, ended) {
        println!(
            "online generation {} config_version {}",
            served.generation, served.config_version
        );
    }
}

/// The short name of a progress step, for the live line.
pub(crate) fn event_step(event: &pb::RestartEvent) -> Option<String> {
    Some(match event.event.as_ref()? {
        Event::Accepted(a) => format!("accepted (gen {})", a.generation),
        Event::Coalesced(_) => "coalesced: waiting for the follow-up cycle".into(),
        Event::Debounced(d) => format!("debounced: {}", d.reason),
        Event::Phase(p) => pb::restart_event::Phase::try_from(p.phase)
            .map(|p| p.as_str_name())
            .unwrap_or("PHASE")
            .to_owned(),
        Event::Online(o) => format!("online gen {}", o.generation),
        Event::Failed(f) => format!("failed gen {}: {}", f.generation, f.reason),
        Event::Stopped(s) => format!("stopped gen {}", s.generation),
        Event::Deleted(_) => "deleted".into(),
    })
}

fn event_json(event: &pb::RestartEvent) -> Value {
    let mut value = match &event.event {
        Some(Event::Accepted(a)) => json!({"event": "accepted", "generation": a.generation}),
        Some(Event::Coalesced(c)) => {
            json!({"event": "coalesced", "not_before": ts(&c.not_before)})
        }
        Some(Event::Debounced(d)) => {
            json!({"event": "debounced", "until": ts(&d.until), "reason": d.reason})
        }
        Some(Event::Phase(p)) => json!({
            "event": "phase",
            "phase": pb::restart_event::Phase::try_from(p.phase).map(|p| p.as_str_name()).unwrap_or("UNKNOWN"),
            "generation": p.generation,
        }),
        Some(Event::Online(o)) => json!({
            "event": "online", "generation": o.generation, "config_version": o.config_version,
        }),
        Some(Event::Failed(f)) => {
            json!({"event": "failed", "generation": f.generation, "reason": f.reason})
        }
        Some(Event::Stopped(s)) => json!({"event": "stopped", "generation": s.generation}),
        Some(Event::Deleted(_)) => json!({"event": "deleted"}),
        None => json!({"event": null}),
    };
    value["cycle_id"] = json!(event.cycle_id);
    value["at"] = ts(&event.at);
    value
}

/// One restart event as a line.
pub(crate) fn restart_event(out: Output, event: &pb::RestartEvent) {
    match out {
        Output::Json => println!("{}", event_json(event)),
        Output::Text => {
            if let Some(step) = event_step(event) {
                println!("{step}");
            }
        }
    }
}

/// What a config change did.
pub(crate) fn change(out: Output, c: &pb::ConfigChangeResponse) {
    let delivery = pb::config_change_response::Delivery::try_from(c.delivery)
        .map(|d| d.as_str_name())
        .unwrap_or("UNKNOWN");
    match out {
        Output::Json => println!(
            "{}",
            json!({
                "config_version": c.config_version,
                "delivery": delivery,
                "cycle_id": c.cycle_id,
                "not_before": ts(&c.not_before),
            })
        ),
        Output::Text => println!("config version {} ({delivery})", c.config_version),
    }
}

/// One workspace event (watch).
pub(crate) fn watch_event(out: Output, e: &pb::WorkspaceEvent) {
    use pb::workspace_event::Event as W;
    let (kind, detail) = match &e.event {
        Some(W::Snapshot(w)) => (
            "snapshot",
            format!("{} gen {}", status_name(w.status), w.generation),
        ),
        Some(W::Status(s)) => ("status", format!("{s:?}")),
        Some(W::Cycle(c)) => ("cycle", format!("{c:?}")),
        Some(W::Trigger(t)) => ("trigger", format!("{t:?}")),
        Some(W::Agent(a)) => ("agent", format!("{a:?}")),
        None => ("unknown", String::new()),
    };
    match out {
        Output::Json => println!(
            "{}",
            json!({"at": ts(&e.at), "workspace_id": e.workspace_id, "event": kind, "detail": detail})
        ),
        Output::Text => println!(
            "{} {kind:<8} {detail}",
            e.at.as_ref().map(ToString::to_string).unwrap_or_default()
        ),
    }
}

/// A table of cycles.
pub(crate) fn cycles(out: Output, all: &[pb::Cycle]) {
    let outcome = |c: &pb::Cycle| {
        pb::CycleOutcome::try_from(c.outcome)
            .map(|o| o.as_str_name())
            .unwrap_or("UNKNOWN")
    };
    let state = |c: &pb::Cycle| {
        pb::CycleState::try_from(c.state)
            .map(|s| s.as_str_name())
            .unwrap_or("UNKNOWN")
    };
    match out {
        Output::Json => all.iter().for_each(|c| {
            println!(
                "{}",
                json!({
                    "id": c.id, "generation": c.generation, "config_version": c.config_version,
                    "state": state(c), "outcome": outcome(c), "reason": c.reason,
                    "created_at": ts(&c.created_at), "ended_at": ts(&c.ended_at),
                    "trace_id": c.trace_id,
                })
            );
        }),
        Output::Text => {
            println!(
                "{:<36}  {:>4}  {:>6}  {:<10}  {:<20}  REASON",
                "CYCLE", "GEN", "CONFIG", "STATE", "OUTCOME"
            );
            for c in all {
                println!(
                    "{:<36}  {:>4}  {:>6}  {:<10}  {:<20}  {}",
                    c.id,
                    c.generation,
                    c.config_version,
                    state(c),
                    outcome(c),
                    c.reason
                );
            }
        }
    }
}

/// An error on stderr (JSON on stdout for scripts), with the server's
/// details: the field at fault, the stable reason, when to retry.
pub(crate) fn error(out: Output, err: &Error, exit: Exit) {
    let violations = err.field_violations();
    match out {
        Output::Json => println!(
            "{}",
            json!({
                "error": err.to_string(),
                "code": err.code().map(|c| format!("{c:?}")),
                "reason": err.reason(),
                "fields": violations.iter().map(|(f, d)| json!({"field": f, "description": d})).collect::<Vec<_>>(),
                "retry_after_ms": err.retry_delay().map(|d| d.as_millis() as u64),
                "exit": exit as u8,
            })
        ),
        Output::Text => {
            eprintln!("wl: {err}");
            for (field, description) in violations {
                eprintln!("  {field}: {description}");
            }
            if let Some(reason) = err.reason() {
                eprintln!("  reason: {reason}");
            }
        }
    }
}
