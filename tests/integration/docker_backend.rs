//! The Docker backend against the real Docker Engine of this machine, with
//! the project's agent image (`scripts/build-agent-image`) on host
//! networking. These tests fail — never skip — when no engine answers.

use std::{collections::BTreeMap, time::Duration};

use futures::future::join_all;
use tokio::sync::OnceCell;
use workspace_backends::{
    AgentToken, Backend, BackendError, ConfigVersion, Generation, Halt, InstancePhase, InstanceRef,
    Launch, Secret, WorkspaceSpec,
    docker::{DockerBackend, DockerConfig},
};
use workspace_lifecycle::{domain::WorkspaceId, proto as pb, proto::restart_event::Event};

use crate::support::{
    AGENT_IMAGE, BackendChoice, Options, TestServer, bounded, collect, cycles, last,
};

fn docker_options() -> Options {
    Options {
        backend: BackendChoice::Docker,
        wall_clock: true,
        window: Duration::from_secs(2),
        deadline: Duration::from_secs(60),
        ..Options::default()
    }
}

async fn docker(args: &[&str]) -> String {
    let output = tokio::process::Command::new("docker")
        .args(args)
        .output()
        .await
        .expect("the docker CLI runs");
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// (generation label, state) of every container of the workspace.
async fn containers(ws: WorkspaceId) -> Vec<(String, String)> {
    let listed = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=wl.workspace={ws}"),
        "--format",
        "{{.Label \"wl.generation\"}} {{.State}}",
    ])
    .await;
    listed
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (g, s) = l.split_once(' ').unwrap();
            (g.to_owned(), s.to_owned())
        })
        .collect()
}

/// Removes whatever the test left on the engine.
async fn clean_up(ws: WorkspaceId) {
    let ids = docker(&["ps", "-aq", "--filter", &format!("label=wl.workspace={ws}")]).await;
    for id in ids.lines().filter(|l| !l.is_empty()) {
        docker(&["rm", "-f", id]).await;
    }
}

async fn server() -> TestServer {
    let images = docker(&["images", "-q", AGENT_IMAGE]).await;
    assert!(
        !images.is_empty(),
        "the agent image {AGENT_IMAGE} is missing: run scripts/build-agent-image"
    );
    TestServer::start(docker_options()).await
}

#[tokio::test]
async fn create_restart_config_stop_and_delete_on_real_containers() {
    let s = server().await;
    let ws = s.create("docker-life").await;
    s.online_at(ws, 1).await;
    assert_eq!(
        containers(ws).await,
        [("1".to_owned(), "running".to_owned())]
    );

    // A file and a secret, then restart: generation 2 alone, with both.
    s.write_file(ws, "conf/app.toml", b"x = 1").await;
    let set = s.set_secret(ws, "API_KEY", "sk-docker").await;
    let events = s.restart(ws, pb::Trigger::Manual).await;
    assert!(
        matches!(last(&events), Event::Online(o) if o.generation == 2),
        "{events:?}"
    );
    let w = s.online_at(ws, 2).await;
    let agent = w.agent.unwrap();
    assert_eq!(agent.config_version, set.config_version);
    assert_eq!(agent.secret_names, ["API_KEY"]);
    assert_eq!(
        agent.file_paths,
        ["conf/app.toml"],
        "files were placed before start"
    );
    assert_eq!(
        containers(ws).await,
        [("2".to_owned(), "running".to_owned())]
    );

    assert!(matches!(last(&s.stop(ws, "").await), Event::Stopped(_)));
    assert!(containers(ws).await.is_empty(), "stop left a container");

    let events = s.restart(ws, pb::Trigger::Manual).await;
    assert!(matches!(last(&events), Event::Online(_)));
    assert!(matches!(last(&s.delete(ws, "").await), Event::Deleted(_)));
    assert!(containers(ws).await.is_empty(), "delete left a container");
    s.shutdown().await;
}

#[tokio::test]
async fn twenty_concurrent_mixed_restarts_never_conflict_and_run_at_most_two_cycles() {
    let s = server().await;
    let ws = s.create("docker-storm").await;
    s.online_at(ws, 1).await;
    let triggers = [
        pb::Trigger::Manual,
        pb::Trigger::ConfigChanged,
        pb::Trigger::HealthProbe,
        pb::Trigger::Reconciler,
    ];
    let streams = join_all((0..20).map(|i| s.restart_stream(ws, triggers[i % 4]))).await;
    let all = bounded(
        "storm",
        join_all(streams.into_iter().map(|st| collect(st.expect("answered")))),
    )
    .await;
    assert_eq!(all.len(), 20);
    let docker = s.docker.as_ref().unwrap();
    let cycles = docker.starts(ws).len() - 1;
    assert!((1..=2).contains(&cycles), "{cycles} cycles");
    assert!(
        docker
            .errors()
            .iter()
            .all(|e| !e.contains("Conflict") && !e.contains("already in use")),
        "{:?}",
        docker.errors()
    );
    assert_eq!(docker.max_in_flight(ws), 1);
    let w = s
        .wait_for(ws, |w| {
            w.status == pb::WorkspaceStatus::Online as i32
                && w.pending_cycle_id.is_empty()
                && w.running_cycle_id.is_empty()
        })
        .await;
    assert_eq!(
        containers(ws).await,
        [(w.generation.to_string(), "running".to_owned())]
    );
    s.shutdown().await;
    clean_up(ws).await;
}

#[tokio::test]
async fn a_container_killed_out_of_band_is_brought_back_by_exactly_one_reconciler_cycle() {
    let s = server().await;
    let ws = s.create("docker-kill").await;
    s.online_at(ws, 1).await;
    docker(&["kill", &format!("ws-{ws}-g1")]).await;

    let w = s.online_at(ws, 2).await;
    let reconciler = w
        .trigger_stats
        .iter()
        .find(|t| t.trigger == pb::Trigger::Reconciler as i32)
        .cloned()
        .unwrap_or_default();
    assert_eq!(reconciler.accepted, 1, "{:?}", w.trigger_stats);
    assert_eq!(
        containers(ws).await,
        [("2".to_owned(), "running".to_owned())]
    );
    let cycles = cycles(&s, ws).await;
    assert_eq!(cycles.len(), 2);
    assert!(
        cycles[0]
            .triggers
            .iter()
            .any(|t| t.trigger == pb::Trigger::Reconciler as i32)
    );
    assert_eq!(
        s.docker.as_ref().unwrap().starts(ws).len(),
        2,
        "exactly one more start"
    );
    s.shutdown().await;
    clean_up(ws).await;
}

#[tokio::test]
async fn a_leftover_container_of_an_older_generation_is_removed_before_start() {
    let s = server().await;
    let ws = s.create("docker-leftover").await;
    s.online_at(ws, 1).await;
    // A crash left a stray container of generation 1 under another name.
    docker(&[
        "create",
        "--label",
        &format!("wl.workspace={ws}"),
        "--label",
        "wl.generation=1",
        "--name",
        &format!("stray-{ws}"),
        AGENT_IMAGE,
    ])
    .await;
    let events = s.restart(ws, pb::Trigger::Manual).await;
    assert!(matches!(last(&events), Event::Online(o) if o.generation == 2));
    assert_eq!(
        containers(ws).await,
        [("2".to_owned(), "running".to_owned())]
    );
    s.shutdown().await;
    clean_up(ws).await;
}

// === The backend alone, judged by `docker ps` ===

/// An image with a static busybox only (from Debian's busybox-static), for
/// containers that must ignore SIGTERM; imported once per test run.
const BUSYBOX_IMAGE: &str = "wl-test-busybox:latest";

async fn busybox_image() -> &'static str {
    static IMPORTED: OnceCell<()> = OnceCell::const_new();
    IMPORTED
        .get_or_init(|| async {
            let busybox = std::path::Path::new("/bin/busybox");
            assert!(
                busybox.exists(),
                "the Docker tests need a static /bin/busybox (apt-get install busybox-static)"
            );
            let root = tempfile::tempdir().unwrap();
            std::fs::create_dir(root.path().join("bin")).unwrap();
            std::fs::copy(busybox, root.path().join("bin/busybox")).unwrap();
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "tar -C '{}' -c . | docker import - {BUSYBOX_IMAGE} >/dev/null",
                    root.path().display()
                ))
                .status()
                .unwrap();
            assert!(status.success(), "docker import of busybox failed");
        })
        .await;
    BUSYBOX_IMAGE
}

async fn backend(grace: Duration, boot_window: Duration) -> DockerBackend {
    DockerBackend::connect(DockerConfig {
        default_image: AGENT_IMAGE.into(),
        network_mode: Some("host".into()),
        stop_grace: grace,
        boot_window,
    })
    .await
    .expect("the Docker tests need a Docker Engine")
}

/// A launch of a container that ignores SIGTERM and never exits by itself.
async fn stubborn(workspace: WorkspaceId, generation: u64) -> Launch {
    Launch {
        workspace,
        generation: Generation(generation),
        config_version: ConfigVersion(1),
        spec: WorkspaceSpec {
            image: busybox_image().await.into(),
            command: [
                "/bin/busybox",
                "sh",
                "-c",
                "trap '' TERM; exec /bin/busybox sleep 1000",
            ]
            .map(String::from)
            .to_vec(),
            ..WorkspaceSpec::default()
        },
        secrets: [("API_KEY".to_owned(), Secret::new("v"))].into(),
        files: BTreeMap::from([("a.txt".to_owned(), b"a".to_vec())]),
        token: AgentToken::new("t"),
        service_url: "http://127.0.0.1:1".into(),
    }
}

#[tokio::test]
async fn a_start_removes_only_older_generations_and_a_stale_start_or_stop_touches_nothing() {
    let docker = backend(Duration::from_secs(1), Duration::from_secs(120)).await;
    let ws = WorkspaceId::new();
    docker.start(&stubborn(ws, 1).await).await.unwrap();
    docker.start(&stubborn(ws, 2).await).await.unwrap();
    assert_eq!(
        containers(ws).await,
        [("2".to_owned(), "running".to_owned())]
    );
    // A retry of generation 2 is the same container.
    docker.start(&stubborn(ws, 2).await).await.unwrap();
    assert_eq!(containers(ws).await.len(), 1);

    let stale = docker.start(&stubborn(ws, 1).await).await.unwrap_err();
    assert!(matches!(stale, BackendError::Superseded { .. }), "{stale}");
    docker.stop(ws, Generation(1), Halt::Force).await.unwrap();
    docker.delete(ws, Generation(1), Halt::Force).await.unwrap();
    assert_eq!(
        containers(ws).await,
        [("2".to_owned(), "running".to_owned())],
        "a stale call touched generation 2"
    );
    docker.delete(ws, Generation(2), Halt::Force).await.unwrap();
    assert!(containers(ws).await.is_empty());
    docker.delete(ws, Generation(2), Halt::Force).await.unwrap();
}

#[tokio::test]
async fn a_forced_stop_removes_a_container_that_ignores_sigterm_at_once() {
    // A grace far beyond the bound below: only a forced removal is in time.
    let docker = backend(Duration::from_secs(600), Duration::from_secs(120)).await;
    let ws = WorkspaceId::new();
    docker.start(&stubborn(ws, 1).await).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(20),
        docker.stop(ws, Generation(1), Halt::Force),
    )
    .await
    .expect("a forced stop does not wait for the grace")
    .unwrap();
    assert!(containers(ws).await.is_empty(), "the container survived");
}

#[tokio::test]
async fn a_graceful_stop_kills_a_container_that_ignores_sigterm_after_the_grace() {
    let docker = backend(Duration::from_secs(2), Duration::from_secs(120)).await;
    let ws = WorkspaceId::new();
    docker.start(&stubborn(ws, 1).await).await.unwrap();
    let began = tokio::time::Instant::now();
    docker
        .stop(ws, Generation(1), Halt::Graceful)
        .await
        .unwrap();
    assert!(began.elapsed() >= Duration::from_secs(2), "no grace given");
    assert!(containers(ws).await.is_empty());
}

#[tokio::test]
async fn the_inventory_lists_the_managed_containers_that_exist() {
    let docker = backend(Duration::from_secs(1), Duration::from_secs(120)).await;
    let (a, b) = (WorkspaceId::new(), WorkspaceId::new());
    docker.start(&stubborn(a, 1).await).await.unwrap();
    docker.start(&stubborn(b, 5).await).await.unwrap();
    let mine = |listed: Vec<InstanceRef>| -> Vec<(WorkspaceId, Option<Generation>, InstancePhase)> {
        let mut mine: Vec<_> = listed
            .into_iter()
            .filter(|i| i.workspace == a || i.workspace == b)
            .map(|i| (i.workspace, i.generation, i.phase))
            .collect();
        mine.sort_by_key(|i| i.1);
        mine
    };
    assert_eq!(
        mine(docker.inventory().await.unwrap()),
        [
            (a, Some(Generation(1)), InstancePhase::Running),
            (b, Some(Generation(5)), InstancePhase::Running)
        ]
    );
    docker.stop(a, Generation(1), Halt::Force).await.unwrap();
    assert_eq!(
        mine(docker.inventory().await.unwrap()),
        [(b, Some(Generation(5)), InstancePhase::Running)]
    );
    docker.stop(b, Generation(5), Halt::Force).await.unwrap();
}

#[tokio::test]
async fn a_container_stuck_in_created_stops_counting_as_booting_after_the_boot_window() {
    let window = Duration::from_secs(2);
    let docker = backend(Duration::from_secs(1), window).await;
    let ws = WorkspaceId::new();
    // Created and never started (what an engine that wedged leaves).
    docker_cli_create(ws, 1).await;
    let state = docker.state(ws).await.unwrap();
    assert_eq!(state.phase, InstancePhase::Pending, "fresh: booting");
    tokio::time::sleep(window + Duration::from_millis(1500)).await;
    let state = docker.state(ws).await.unwrap();
    assert!(!state.is_booting(), "{state:?}");
    assert!(
        matches!(&state.phase, InstancePhase::Failed(r) if r.starts_with("stuck in created")),
        "{state:?}"
    );
    assert!(state.is_down());
    let listed = docker.inventory().await.unwrap();
    assert!(
        listed
            .iter()
            .any(|i| i.workspace == ws && matches!(i.phase, InstancePhase::Failed(_))),
        "{listed:?}"
    );
    docker.delete(ws, Generation(1), Halt::Force).await.unwrap();
    assert!(containers(ws).await.is_empty());
}

async fn docker_cli_create(ws: WorkspaceId, generation: u64) {
    docker(&[
        "create",
        "--label",
        &format!("wl.workspace={ws}"),
        "--label",
        &format!("wl.generation={generation}"),
        "--label",
        "wl.managed-by=workspace-lifecycle",
        "--name",
        &format!("created-{ws}"),
        AGENT_IMAGE,
    ])
    .await;
}

// Found from outside: each of these was stored, went PROVISIONING and
// failed in its first cycle with the engine's own refusal.
#[tokio::test]
async fn a_spec_the_engine_would_refuse_is_refused_at_create_and_stores_nothing() {
    let s = server().await;
    let cases = [
        ("spec.image", "UPPER/Case:tag", 0, 0),
        ("spec.image", "x:y:z", 0, 0),
        ("spec.image", "img@sha256:zz", 0, 0),
        ("spec.cpu_millis", AGENT_IMAGE, 1, 0),
        ("spec.memory_mib", AGENT_IMAGE, 0, 1),
    ];
    for (i, (field, image, cpu_millis, memory_mib)) in cases.into_iter().enumerate() {
        let mut request = test_support::workspace::create_request(
            &format!("refused-{i}"),
            pb::BackendKind::Docker,
        );
        request.spec = Some(pb::WorkspaceSpec {
            image: image.into(),
            cpu_millis,
            memory_mib,
            ..Default::default()
        });
        let refused = s.client().create_workspace(request).await.unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::InvalidArgument,
            "{field}: {refused:?}"
        );
        assert!(refused.message().contains(field), "{field}: {refused:?}");
    }
    let listed = s.listed().await;
    assert!(listed.is_empty(), "a refused create stored a workspace");
    s.shutdown().await;
}

// Found from outside: an image with 60 KB of its own ENV and a config that
// admission allowed (it can count only 8 KiB for the image) gave a
// container that exited at once, "exited with code 1". The start now counts
// the image's environment as it is and names the limit, creating nothing.
#[tokio::test]
async fn a_start_past_the_exec_limit_with_the_images_own_environment_names_the_limit() {
    const BIG_ENV_IMAGE: &str = "wl-test-big-env:latest";
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf 'FROM {AGENT_IMAGE}\\nENV BIG=%s\\n' \"$(head -c 60000 /dev/zero | tr '\\0' x)\" \
             | docker build -q -t {BIG_ENV_IMAGE} - >/dev/null"
        ))
        .status()
        .unwrap();
    assert!(status.success(), "docker build of the big-ENV image failed");
    let docker = backend(Duration::from_secs(5), Duration::from_secs(60)).await;
    let ws = WorkspaceId::new();
    let mut launch = stubborn(ws, 1).await;
    launch.spec = WorkspaceSpec {
        image: BIG_ENV_IMAGE.into(),
        ..WorkspaceSpec::default()
    };
    // Secrets that fill what admission allows.
    launch.secrets = (0..31)
        .map(|i| (format!("S{i}"), Secret::new("v".repeat(65_536))))
        .collect();
    launch
        .secrets
        .insert("S31".into(), Secret::new("v".repeat(50_000)));
    assert_eq!(
        docker.admits(&launch.footprint()),
        Ok(()),
        "admission allows it"
    );
    let refused = docker.start(&launch).await;
    assert!(
        matches!(&refused, Err(BackendError::Limit(l)) if l.limit == "docker.exec_bytes"),
        "{refused:?}"
    );
    assert!(containers(ws).await.is_empty(), "a container was created");
    clean_up(ws).await;
}
