//! The `execve` limit, checked at admission: a config refused there could
//! never start (Linux refuses the exec), and the largest config admitted
//! starts — so admission refuses exactly what would strand a workspace.

use super::*;

/// `launch` with `n` secrets of `len` bytes each (every one within the
/// secret limit of 64 KiB), and the default agent command.
fn with_secrets(ws: WorkspaceId, generation: u64, n: usize, len: usize) -> Launch {
    let mut launch = launch(ws, generation, &[]);
    launch.secrets = (0..n)
        .map(|i| (format!("BIG{i}"), Secret::new("x".repeat(len))))
        .collect();
    launch
}

#[tokio::test]
async fn a_config_past_the_exec_limit_is_refused_and_the_largest_admitted_starts() {
    let dir = reachable_tempdir();
    let backend = backend_in(dir.path(), Duration::from_millis(200)).await;
    let ws = WorkspaceId::new();

    // The reported case: 40 secrets of 65,000 bytes (2.6 MB) on a machine
    // whose ARG_MAX is the usual 2 MiB.
    if spawn::exec_limit() < 40 * 65_000 {
        let refused = backend
            .admits(&with_secrets(ws, 1, 40, 65_000).footprint())
            .unwrap_err();
        assert_eq!(refused.limit, EXEC_LIMIT);
        assert!(refused.to_string().contains(EXEC_LIMIT), "{refused}");
    }

    let admitted = (1..200)
        .take_while(|&n| {
            backend
                .admits(&with_secrets(ws, 1, n, 65_000).footprint())
                .is_ok()
        })
        .last()
        .expect("a few large secrets fit");
    // The largest admitted config starts…
    backend
        .start(&with_secrets(ws, 1, admitted, 65_000))
        .await
        .expect("an admitted config starts");
    let state = backend.state(ws).await.unwrap();
    assert_eq!(state.generation, Some(Generation(1)), "{state:?}");
    assert!(!state.is_down(), "{state:?}");
    // …and two secrets more (past the margin) the kernel refuses: the
    // refusal at admission is what spares a cycle from failing on it.
    let past = with_secrets(ws, 2, admitted + 2, 65_000);
    assert!(backend.admits(&past.footprint()).is_err());
    let err = backend.start(&past).await.unwrap_err();
    assert!(
        err.to_string().contains("Argument list too long"),
        "the exec itself fails: {err}"
    );
    backend.stop(ws, Generation(2), Halt::Force).await.unwrap();
}
