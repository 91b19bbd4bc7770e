//! `wl`: the control plane for a person at a terminal (and for scripts).
//! A restart shows its phases live on a terminal, plain lines when piped,
//! JSON with `--output json`; the exit code says how it ended.
//! No server contract (C1–C20): the caller's side; it relies on C13 and C20.

mod args;
mod exit;
mod progress;
mod render;

use std::{io::IsTerminal, process::ExitCode};

use clap::Parser;
use workspace_lifecycle_client::{Client, CycleStream, Error, Tls, proto as pb};

use args::{Cli, Command, FileCommand, Output, SecretCommand};
use exit::Exit;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let output = cli.output;
    match run(cli).await {
        Ok(exit) => exit.into(),
        Err(err) => {
            let exit = Exit::of(&err);
            render::error(output, &err, exit);
            exit.into()
        }
    }
}

async fn connect(cli: &Cli) -> Result<Client, Error> {
    let token = cli.token()?;
    let mut builder = Client::builder(cli.endpoint.clone()).token(token);
    if cli.ca.is_some() || cli.cert.is_some() {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
        };
        let identity = match (&cli.cert, &cli.key) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            (None, None) => None,
            _ => return Err(Error::Config("--cert and --key go together".into())),
        };
        builder = builder.tls(Tls {
            ca_pem: cli.ca.as_deref().map(read).transpose()?,
            identity,
            domain: None,
        });
    }
    builder.connect().await
}

/// A workspace named by id or by name.
async fn resolve(client: &Client, which: &str) -> Result<String, Error> {
    if which.len() == 36 && which.chars().filter(|c| *c == '-').count() == 4 {
        return Ok(which.to_owned());
    }
    let all = client.all_workspaces(false).await?;
    all.into_iter()
        .find(|w| w.name == which)
        .map(|w| w.id)
        .ok_or_else(|| {
            Error::Status(Box::new(tonic::Status::not_found(format!(
                "no live workspace named {which:?}"
            ))))
        })
}

async fn run(cli: Cli) -> Result<Exit, Error> {
    let client = connect(&cli).await?;
    let out = cli.output;
    let tty = out == Output::Text && std::io::stdout().is_terminal();
    match &cli.command {
        Command::Ls { all } => {
            let workspaces = client.all_workspaces(*all).await?;
            render::workspaces(out, &workspaces);
        }
        Command::Get { workspace } => {
            let id = resolve(&client, workspace).await?;
            render::workspace(out, &client.get_workspace(&id).await?);
        }
        Command::Create {
            name,
            backend,
            image,
            env,
            follow,
        } => {
            let spec = pb::WorkspaceSpec {
                image: image.clone().unwrap_or_default(),
                env: env.iter().cloned().collect(),
                ..Default::default()
            };
            let created = client
                .create_workspace(name, backend.proto(), Some(spec))
                .await?;
            if !follow {
                render::workspace(out, &created);
                return Ok(Exit::Ok);
            }
            return follow_create(&client, out, tty, created).await;
        }
        Command::Restart {
            workspace,
            trigger,
            reason,
            follow,
        } => {
            let id = resolve(&client, workspace).await?;
            let stream = client.restart(&id, trigger.proto(), reason).await?;
            return follow_cycle(out, tty, stream, *follow, "restart").await;
        }
        Command::Stop {
            workspace,
            reason,
            follow,
        } => {
            let id = resolve(&client, workspace).await?;
            let stream = client.stop(&id, reason).await?;
            return follow_cycle(out, tty, stream, *follow, "stop").await;
        }
        Command::Delete {
            workspace,
            reason,
            follow,
        } => {
            let id = resolve(&client, workspace).await?;
            let stream = client.delete(&id, reason).await?;
            return follow_cycle(out, tty, stream, *follow, "delete").await;
        }
        Command::Secret(SecretCommand::Set {
            workspace,
            name,
            value,
        }) => {
            let id = resolve(&client, workspace).await?;
            let value = match value {
                Some(value) => value.clone(),
                None => read_stdin_value()?,
            };
            render::change(out, &client.set_secret(&id, name, &value).await?);
        }
        Command::Secret(SecretCommand::Rm { workspace, name }) => {
            let id = resolve(&client, workspace).await?;
            render::change(out, &client.delete_secret(&id, name).await?);
        }
        Command::File(FileCommand::Put {
            workspace,
            path,
            from,
        }) => {
            let id = resolve(&client, workspace).await?;
            let content = if from.as_os_str() == "-" {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
                    .map_err(|e| Error::Config(format!("stdin: {e}")))?;
                bytes
            } else {
                std::fs::read(from)
                    .map_err(|e| Error::Config(format!("{}: {e}", from.display())))?
            };
            render::change(out, &client.write_file(&id, path, content).await?);
        }
        Command::Watch { workspace } => {
            let id = resolve(&client, workspace).await?;
            let mut events = client.watch(&id).await?;
            while let Some(event) = events.message().await? {
                render::watch_event(out, &event);
            }
        }
        Command::Cycles { workspace, limit } => {
            let id = resolve(&client, workspace).await?;
            let page = client.list_cycles(&id, *limit, "").await?;
            render::cycles(out, &page.cycles);
        }
    }
    Ok(Exit::Ok)
}

/// A secret value from stdin (so it stays out of shell history); one
/// trailing newline is dropped.
fn read_stdin_value() -> Result<String, Error> {
    let mut value = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut value)
        .map_err(|e| Error::Config(format!("stdin: {e}")))?;
    if value.ends_with('\n') {
        value.pop();
    }
    Ok(value)
}

/// Follows a cycle stream: a live progress line on a terminal, a line per
/// event otherwise; without `follow`, only the admission.
async fn follow_cycle(
    out: Output,
    tty: bool,
    mut stream: CycleStream,
    follow: bool,
    what: &'static str,
) -> Result<Exit, Error> {
    if !follow {
        if let Some(event) = stream.next().await {
            render::restart_event(out, &event?);
        }
        return Ok(Exit::Ok);
    }
    let mut progress = progress::Progress::new(tty, out, what);
    let ended = stream.wait_for(|event| progress.event(event)).await;
    progress.finish(&ended);
    Ok(match (what, ended) {
        (_, Ok(_)) => Exit::Ok,
        ("stop", Err(Error::Stopped { .. })) | ("delete", Err(Error::Deleted)) => Exit::Ok,
        (_, Err(err)) => Exit::of(&err),
    })
}

/// Follows a new workspace until its first generation is online (or not),
/// watching it, since CreateWorkspace answers at once.
async fn follow_create(
    client: &Client,
    out: Output,
    tty: bool,
    created: pb::Workspace,
) -> Result<Exit, Error> {
    let mut progress = progress::Progress::new(tty, out, "create");
    let mut events = client.watch(&created.id).await?;
    let ended = loop {
        let current = client.get_workspace(&created.id).await?;
        if let Some(end) = progress.workspace(&current) {
            break end;
        }
        match events.message().await? {
            Some(_) => continue,
            None => break Err(Error::StreamEnded),
        }
    };
    progress.finish(&ended);
    Ok(match ended {
        Ok(_) => Exit::Ok,
        Err(err) => Exit::of(&err),
    })
}
