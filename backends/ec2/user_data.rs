//! The user data an instance boots with: a shell script that writes the
//! workspace's files, exports its environment (secrets and the agent's
//! variables, each base64-encoded so no value can break the quoting), and
//! execs the agent. EC2 limits user data to 16 KiB, so a config that does
//! not fit is refused with a clear error rather than cut.

use base64::{Engine, engine::general_purpose::STANDARD};

use crate::{BackendError, Launch};

/// Where the agent binary lives on the AMI.
pub const AGENT_PATH: &str = "/usr/local/bin/workspace-agent";
/// Where files are written.
pub const FILES_DIR: &str = "/workspace/files";
/// EC2's limit on (unencoded) user data.
pub const MAX_USER_DATA: usize = 16 * 1024;

const EXPORT: &str = "export ";

/// The script, base64-encoded as RunInstances expects.
pub fn encode(launch: &Launch) -> Result<String, BackendError> {
    let mut script = String::from("#!/bin/sh\n# workspace-lifecycle bootstrap\nset -e\n");
    script.push_str(&format!("mkdir -p {FILES_DIR}\n"));
    for (path, content) in &launch.files {
        if path
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(BackendError::Rejected(format!(
                "file path {path:?} is not plain"
            )));
        }
        let target = format!("{FILES_DIR}/{path}");
        let dir = target.rsplit_once('/').map(|(d, _)| d).unwrap_or(FILES_DIR);
        script.push_str(&format!(
            "mkdir -p '{dir}' && printf %s '{}' | base64 -d > '{target}'\n",
            STANDARD.encode(content)
        ));
    }
    for (name, value) in launch.environment(FILES_DIR) {
        script.push_str(&format!(
            "{EXPORT}{name}=\"$(printf %s '{}' | base64 -d)\"\n",
            STANDARD.encode(value)
        ));
    }
    script.push_str(&format!("exec {AGENT_PATH}\n"));
    if script.len() > MAX_USER_DATA {
        return Err(BackendError::Rejected(format!(
            "the workspace's config ({} bytes of user data) exceeds EC2's {MAX_USER_DATA} bytes",
            script.len()
        )));
    }
    Ok(STANDARD.encode(script))
}

/// The environment a user-data script exports (what an agent on the
/// instance will see). Used by tests that play the agent.
pub fn environment(encoded: &str) -> Result<Vec<(String, String)>, String> {
    let script = STANDARD.decode(encoded).map_err(|e| e.to_string())?;
    let script = String::from_utf8(script).map_err(|e| e.to_string())?;
    script
        .lines()
        .filter_map(|line| line.strip_prefix(EXPORT))
        .map(|line| {
            let (name, rest) = line.split_once('=').ok_or("malformed export")?;
            let value = rest.split('\'').nth(1).ok_or("malformed export value")?;
            let value = STANDARD.decode(value).map_err(|e| e.to_string())?;
            Ok((
                name.to_owned(),
                String::from_utf8(value).map_err(|e| e.to_string())?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{AgentToken, ConfigVersion, Generation, Secret, WorkspaceId, WorkspaceSpec};

    fn launch() -> Launch {
        Launch {
            workspace: WorkspaceId::new(),
            generation: Generation(7),
            config_version: ConfigVersion(3),
            spec: WorkspaceSpec::default(),
            secrets: [(
                "API_KEY".to_owned(),
                Secret::new("it's \"quoted\" $(rm -rf /)"),
            )]
            .into(),
            files: BTreeMap::from([("etc/app.conf".to_owned(), b"a=1\n".to_vec())]),
            token: AgentToken::new("wla_token"),
            service_url: "http://10.0.0.1:50051".into(),
        }
    }

    #[test]
    fn the_agent_finds_its_token_config_version_and_secrets_intact() {
        let env: BTreeMap<_, _> = environment(&encode(&launch()).unwrap())
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(env["WL_AGENT_TOKEN"], "wla_token");
        assert_eq!(env["WL_CONFIG_VERSION"], "3");
        assert_eq!(env["WL_SERVICE_URL"], "http://10.0.0.1:50051");
        assert_eq!(env["API_KEY"], "it's \"quoted\" $(rm -rf /)");
    }

    #[test]
    fn a_config_too_large_for_user_data_is_refused() {
        let mut big = launch();
        big.files.insert("big".into(), vec![b'x'; MAX_USER_DATA]);
        let err = encode(&big).unwrap_err();
        assert!(matches!(err, BackendError::Rejected(m) if m.contains("16384")));
    }
}
