//! Restart a workspace and wait until its new generation is online:
//! No server contract (C1–C20): the caller's side; it relies on C13 and C20.
//!
//! ```sh
//! cargo run -p workspace-lifecycle-client --example restart -- <workspace id> [endpoint]
//! ```
//!
//! The token is read from `WL_TOKEN` or the embedded server's
//! `.wl-data/admin-token`.

use workspace_lifecycle_client::{Client, Error, proto::Trigger, proto::restart_event::Event};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let workspace = args
        .next()
        .expect("usage: restart <workspace id> [endpoint]");
    let endpoint = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let token = match std::env::var("WL_TOKEN") {
        Ok(token) => token,
        Err(_) => std::fs::read_to_string(".wl-data/admin-token")
            .map_err(|e| Error::Config(format!(".wl-data/admin-token: {e}")))?,
    };
    let client = Client::connect(endpoint, &token).await?;

    // A config change first: retried on UNAVAILABLE, applied once.
    let change = client
        .set_secret(&workspace, "EXAMPLE_KEY", "example")
        .await?;
    println!("config version {}", change.config_version);

    let mut cycle = client
        .restart(&workspace, Trigger::Manual, "example")
        .await?;
    let served = cycle
        .wait_for(|event| {
            if let Some(Event::Phase(phase)) = &event.event {
                println!("phase {:?}", phase.phase());
            }
        })
        .await?;
    println!(
        "online: generation {} serving config version {}",
        served.generation, served.config_version
    );
    Ok(())
}
