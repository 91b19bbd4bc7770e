//! An EC2-compatible endpoint for the tests: `moto_server` (PyPI
//! `moto[server]`, installed by `.ci/run`) on a free loopback port, and a
//! stand-in for what a real instance does when it boots — read its user data
//! and run the agent with it. Moto keeps instances as records only, so the
//! test plays the machine: the agent binary runs here with exactly the
//! environment the user-data script would export.

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpListener},
    process::Stdio,
    time::Duration,
};

use aws_sdk_ec2::{
    Client,
    config::{BehaviorVersion, Credentials, Region},
    types::Filter,
};
use tokio::{process::Child, task::JoinHandle};
use workspace_backends::{
    WorkspaceId,
    ec2::{TAG_GENERATION, TAG_MANAGED, TAG_WORKSPACE, user_data},
};

use super::server_binary;

/// A running `moto_server`; killed on drop.
pub struct Moto {
    addr: SocketAddr,
    _child: Child,
}

impl Moto {
    /// Starts moto on a free port and waits (bounded) until it answers.
    pub async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let program = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let child = tokio::process::Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("the EC2 tests need {program} (pip install 'moto[server]'): {e}")
            });
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let moto = Self {
            addr,
            _child: child,
        };
        super::bounded("moto answers", async {
            while moto.client().describe_regions().send().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        moto
    }

    /// A client with static test credentials.
    pub fn client(&self) -> Client {
        let config = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(format!("http://{}", self.addr))
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
            .build();
        Client::from_conf(config)
    }

    /// An AMI moto knows.
    pub async fn ami(&self) -> String {
        let images = self
            .client()
            .describe_images()
            .owners("amazon")
            .send()
            .await
            .expect("describe images");
        images.images()[0].image_id().unwrap().to_owned()
    }

    /// (generation tag, state) of every instance of the workspace that is
    /// not terminated.
    pub async fn live_instances(&self, ws: WorkspaceId) -> Vec<(String, String)> {
        let described = self
            .client()
            .describe_instances()
            .filters(
                Filter::builder()
                    .name(format!("tag:{TAG_WORKSPACE}"))
                    .values(ws.to_string())
                    .build(),
            )
            .send()
            .await
            .expect("describe instances");
        described
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(|i| {
                let state = i.state()?.name()?.as_str().to_owned();
                let generation = i
                    .tags()
                    .iter()
                    .find(|t| t.key() == Some(TAG_GENERATION))?
                    .value()?
                    .to_owned();
                (state != "terminated").then_some((generation, state))
            })
            .collect()
    }
}

/// Boots every managed instance moto launches: runs the agent with the
/// environment of its user data, and kills it when the instance is gone.
pub struct InstanceBooter {
    task: JoinHandle<()>,
}

impl InstanceBooter {
    pub fn start(client: Client) -> Self {
        Self {
            task: tokio::spawn(boot_loop(client)),
        }
    }
}

impl Drop for InstanceBooter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn boot_loop(client: Client) {
    let mut agents: HashMap<String, Child> = HashMap::new();
    loop {
        let described = client
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("tag-key")
                    .values(TAG_MANAGED)
                    .build(),
            )
            .send()
            .await;
        if let Ok(described) = described {
            for instance in described.reservations().iter().flat_map(|r| r.instances()) {
                let (Some(id), Some(state)) = (
                    instance.instance_id(),
                    instance.state().and_then(|s| s.name()),
                ) else {
                    continue;
                };
                let alive = matches!(state.as_str(), "pending" | "running");
                if !alive {
                    // The machine is gone, and its agent with it.
                    agents.remove(id);
                } else if !agents.contains_key(id) {
                    if let Some(agent) = boot(&client, id).await {
                        agents.insert(id.to_owned(), agent);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the instance's boot script does: export its variables, exec the
/// agent.
async fn boot(client: &Client, instance: &str) -> Option<Child> {
    let attribute = client
        .describe_instance_attribute()
        .instance_id(instance)
        .attribute("userData".into())
        .send()
        .await
        .ok()?;
    let encoded = attribute.user_data()?.value()?;
    Some(run_agent(encoded, instance))
}

/// Runs the agent binary with the environment the user data `encoded`
/// exports, as the instance `instance` would.
pub fn run_agent(encoded: &str, instance: &str) -> Child {
    let environment = user_data::environment(encoded).expect("user data the backend wrote");
    tokio::process::Command::new(server_binary())
        .arg("agent")
        .env_clear()
        .envs(environment)
        .env(workspace_agent::env::ENDPOINT, format!("ec2:{instance}"))
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the agent starts")
}
