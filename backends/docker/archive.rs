//! The workspace's files as the tar archive the engine unpacks into a
//! created container before its first start, private to the agent (0600).
//! Contracts: C2 (the files of exactly the config the cycle read).

use crate::{BackendError, Launch};

/// The files of `launch` as a tar archive rooted at `/`.
pub(super) fn files_archive(launch: &Launch, files_dir: &str) -> Result<Vec<u8>, BackendError> {
    let mut archive = tar::Builder::new(Vec::new());
    for (path, content) in &launch.files {
        if path
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(BackendError::Rejected(format!(
                "file path {path:?} is not a plain relative path"
            )));
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o600);
        header.set_cksum();
        let full = format!("{}/{path}", files_dir.trim_start_matches('/'));
        archive.append_data(&mut header, full, content.as_slice())?;
    }
    Ok(archive.into_inner()?)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{AgentToken, ConfigVersion, Generation, WorkspaceId, WorkspaceSpec};

    #[test]
    fn files_are_archived_under_the_files_directory_and_escapes_refused() {
        let mut launch = Launch {
            workspace: WorkspaceId::new(),
            generation: Generation(1),
            config_version: ConfigVersion(1),
            spec: WorkspaceSpec::default(),
            secrets: BTreeMap::new(),
            files: BTreeMap::from([("a/b.txt".to_owned(), b"hi".to_vec())]),
            token: AgentToken::new("t"),
            service_url: String::new(),
        };
        let bytes = files_archive(&launch, "/workspace/files").unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let paths: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(paths, ["workspace/files/a/b.txt"]);
        launch.files.insert("../escape".into(), vec![]);
        assert!(files_archive(&launch, "/workspace/files").is_err());
    }
}
