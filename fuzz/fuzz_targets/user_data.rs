//! Fuzzes the EC2 user-data builder: for any launch, the script is either
//! refused or (1) made of the builder's own lines and base64 only, (2)
//! within the size bound admission uses, and (3) hands the agent exactly
//! the environment of the launch.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use workspace_backends::{
    AgentToken, ConfigVersion, Generation, Launch, Secret, WorkspaceId, WorkspaceSpec,
    ec2::user_data,
};

#[derive(Arbitrary, Debug)]
struct Input {
    files: BTreeMap<String, Vec<u8>>,
    secrets: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
    service_url: String,
    token: String,
    generation: u64,
    config_version: u64,
}

fuzz_target!(|input: Input| {
    let launch = Launch {
        workspace: WorkspaceId::new(),
        generation: Generation(input.generation),
        config_version: ConfigVersion(input.config_version),
        spec: WorkspaceSpec {
            env: input.env,
            ..WorkspaceSpec::default()
        },
        secrets: input
            .secrets
            .into_iter()
            .map(|(k, v)| (k, Secret::new(v)))
            .collect(),
        files: input.files,
        token: AgentToken::new(input.token),
        service_url: input.service_url,
    };
    let Ok(script) = user_data::script(&launch, &user_data::PRODUCTION) else {
        return;
    };
    assert!(user_data::only_encoded_data(&script), "{script}");
    let within_maxima = launch.service_url.len() <= user_data::MAX_SERVICE_URL
        && launch.token.expose().len() <= user_data::MAX_TOKEN;
    if within_maxima {
        assert!(script.len() <= user_data::bound(&launch.footprint()));
    }
    if let Ok(encoded) = user_data::encode(&launch) {
        let seen = user_data::environment(&encoded).expect("the builder's own script parses");
        assert_eq!(seen, launch.environment(user_data::FILES_DIR));
    }
});
