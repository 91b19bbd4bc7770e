//! `wl` as a person and a script use it: in a real terminal (tmux), what
//! the screen shows while a restart runs and when it ends; piped, JSON
//! lines that parse; and exit codes that say what happened.

use std::{path::PathBuf, process::Output, time::Duration};

use tokio::process::Command;
use workspace_lifecycle::proto as pb;

use crate::support::{ADMIN_TOKEN, Options, TestServer, WAIT, last};

/// The `wl` binary `cargo test --workspace` built beside this test binary.
fn wl() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("wl");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p wl` (cargo test --workspace does)",
        path.display()
    );
    path
}

async fn run_wl(s: &TestServer, args: &[&str]) -> Output {
    Command::new(wl())
        .arg("--endpoint")
        .arg(format!("http://{}", s.addr))
        .args(args)
        .env("WL_TOKEN", ADMIN_TOKEN)
        .output()
        .await
        .unwrap()
}

/// A tmux session that ends when dropped.
struct Tmux(String);

impl Tmux {
    fn start(command: &str) -> Self {
        let name = format!("wl-test-{}", uuid::Uuid::new_v4().simple());
        let status = std::process::Command::new("tmux")
            .args([
                "-u",
                "new-session",
                "-d",
                "-s",
                &name,
                "-x",
                "120",
                "-y",
                "40",
                command,
            ])
            .status()
            .expect("tmux is installed (apt-get install tmux)");
        assert!(status.success());
        Self(name)
    }

    fn screen(&self) -> String {
        let out = std::process::Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.0])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The screen once it shows `marker` (bounded).
    async fn wait_for(&self, marker: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let screen = self.screen();
            if screen.contains(marker) {
                return screen;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the screen never showed {marker:?}:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

#[tokio::test]
async fn restart_follow_shows_each_phase_and_the_generation_on_a_terminal() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("on-screen").await;
    let command = format!(
        "WL_TOKEN={ADMIN_TOKEN} {} --endpoint http://{} restart on-screen --follow; \
         echo EXIT=$?; sleep 600",
        wl().display(),
        s.addr
    );
    let tmux = Tmux::start(&command);
    let screen = tmux.wait_for("EXIT=").await;
    for step in ["accepted", "STOPPING", "PROVISIONING", "WAITING_FOR_AGENT"] {
        assert!(screen.contains(step), "{step} not on screen:\n{screen}");
    }
    let generation = s.get(ws).await.generation;
    assert_eq!(generation, 2);
    assert!(
        screen.contains(&format!("online gen {generation} (config")),
        "no final line:\n{screen}"
    );
    assert!(screen.contains("EXIT=0"), "{screen}");
    // The phases appear in order.
    let at = |s: &str| screen.find(s).unwrap();
    assert!(at("STOPPING") < at("PROVISIONING"));
    assert!(at("PROVISIONING") < at("WAITING_FOR_AGENT"));
    assert!(at("WAITING_FOR_AGENT") < at("online gen"));
    s.shutdown().await;
}

#[tokio::test]
async fn piped_json_parses_and_exit_codes_say_what_happened() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("scripted").await.to_string();

    // Piped JSON: one object per event, ending online.
    let out = run_wl(&s, &["--output", "json", "restart", &ws, "--follow"]).await;
    assert!(out.status.success(), "{out:?}");
    let events: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect();
    assert_eq!(events.first().unwrap()["event"], "accepted");
    let end = events.last().unwrap();
    assert_eq!(end["event"], "online");
    assert_eq!(end["generation"], 2);

    // Piped text: plain lines, no progress drawing.
    let out = run_wl(&s, &["ls"]).await;
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("ID"), "{text}");
    assert!(
        text.contains("scripted") && text.contains("ONLINE"),
        "{text}"
    );
    assert!(!text.contains('\r'), "no terminal control when piped");

    // A cycle that fails: exit 3.
    s.backend.fail_next_starts(1);
    let out = run_wl(&s, &["restart", "scripted", "--follow"]).await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("failed gen"));

    // Unknown workspace: exit 5.
    let unknown = uuid::Uuid::new_v4().to_string();
    let out = run_wl(&s, &["get", &unknown]).await;
    assert_eq!(out.status.code(), Some(5), "{out:?}");

    // Bad input: exit 6, and the field is named.
    let out = run_wl(&s, &["secret", "set", &ws, "LD_PRELOAD", "--value", "x"]).await;
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("name:") && err.contains("INVALID_FIELD"),
        "{err}"
    );

    // A deleted workspace: exit 6 with the reason, as JSON on request.
    assert!(matches!(
        last(&s.delete(ws.parse().unwrap(), "").await),
        pb::restart_event::Event::Deleted(_)
    ));
    let out = run_wl(&s, &["-o", "json", "restart", &ws]).await;
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(err["reason"], "WORKSPACE_DELETED");

    // A bad token: exit 7.
    let out = Command::new(wl())
        .args(["--endpoint", &format!("http://{}", s.addr), "ls"])
        .env("WL_TOKEN", "wrong")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    s.shutdown().await;
}
