//! Revoking a token without a restart (README, "Who may call what"): the
//! operator edits the token file (or the embedded default's admin token);
//! from then on the token is refused, and a file that no longer parses
//! changes nothing. Checked on the real binary.

use std::time::Duration;

use test_support::{agent_reachable_tempdir, bounded_by, server_process::ServerProcess};
use tonic::Code;
use workspace_lifecycle::{
    auth::{Role, entry, generate_token},
    proto as pb,
};

use crate::support::{SECRETS_KEY_HEX, TestDb};

/// What a ListWorkspaces with `token` gets: `Ok` or the status code.
async fn list(server: &ServerProcess, token: &str) -> Result<(), Code> {
    server
        .client_with(token)
        .await
        .list_workspaces(pb::ListWorkspacesRequest::default())
        .await
        .map(|_| ())
        .map_err(|status| status.code())
}

#[tokio::test]
async fn a_token_taken_out_of_the_file_is_refused_and_a_broken_file_changes_nothing() {
    let db = TestDb::create().await;
    let dir = agent_reachable_tempdir();
    let file = dir.path().join("tokens");
    let (ops, leaked) = (generate_token(), generate_token());
    let kept = entry(Role::Admin, "ops", &ops);
    std::fs::write(
        &file,
        format!("{kept}\n{}\n", entry(Role::Reader, "ci", &leaked)),
    )
    .unwrap();
    let server = ServerProcess::start(dir.path(), "server", |command| {
        command
            .args(["--database-url", &db.url])
            .arg("--auth-tokens-file")
            .arg(&file)
            .env("WL_SECRETS_KEY", SECRETS_KEY_HEX);
    })
    .await;
    assert_eq!(list(&server, &leaked).await, Ok(()), "accepted at start");

    // Revoked: the file without it.
    std::fs::write(&file, format!("{kept}\n")).unwrap();
    until_refused(
        &server,
        &leaked,
        "the revoked token is refused once the file changed",
    )
    .await;
    assert_eq!(
        list(&server, &ops).await,
        Ok(()),
        "the kept token still works"
    );

    // A file that no longer parses: the server says so and keeps its set.
    std::fs::write(&file, "admin:ops:not-a-hash\n").unwrap();
    bounded_by(
        Duration::from_secs(10),
        "the server reports the broken file",
        async {
            while !std::fs::read_to_string(&server.log)
                .unwrap_or_default()
                .contains("could not be reloaded")
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )
    .await;
    assert_eq!(list(&server, &ops).await, Ok(()), "the set stays as it was");
    assert_eq!(list(&server, &leaked).await, Err(Code::Unauthenticated));
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(
        !log.contains(&ops) && !log.contains(&leaked),
        "no token in the log"
    );
}

/// The embedded default's admin token revokes the same way: a token
/// written into its file replaces the old one, and a removed file is made
/// anew with a fresh token, all without a restart. (Before, the server read
/// the file once: a leaked admin token stayed valid until it restarted.)
#[tokio::test]
async fn the_embedded_admin_token_is_replaced_by_editing_or_removing_its_file() {
    let db = TestDb::create().await;
    let dir = agent_reachable_tempdir();
    let server = ServerProcess::start(dir.path(), "server", |command| {
        command
            .args(["--database-url", &db.url])
            .env("WL_SECRETS_KEY", SECRETS_KEY_HEX);
    })
    .await;
    let file = workspace_lifecycle::auth::admin_token_path(&server.dir);
    let leaked = server.token();
    assert_eq!(list(&server, &leaked).await, Ok(()), "accepted at start");

    // Replaced: another token written into the file.
    let replacement = generate_token();
    std::fs::write(&file, format!("{replacement}\n")).unwrap();
    until_refused(&server, &leaked, "the replaced token is refused").await;
    assert_eq!(list(&server, &replacement).await, Ok(()));

    // Removed: the server makes a fresh one, and only that one works.
    std::fs::remove_file(&file).unwrap();
    until_refused(&server, &replacement, "the removed token is refused").await;
    let fresh = server.token();
    assert_ne!(fresh, replacement);
    assert_eq!(list(&server, &fresh).await, Ok(()), "the fresh token works");
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(
        !log.contains(&leaked) && !log.contains(&replacement) && !log.contains(&fresh),
        "no token in the log"
    );
}

/// Waits (bounded) until `token` is refused as unauthenticated.
async fn until_refused(server: &ServerProcess, token: &str, what: &str) {
    bounded_by(Duration::from_secs(10), what, async {
        while list(server, token).await != Err(Code::Unauthenticated) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}
