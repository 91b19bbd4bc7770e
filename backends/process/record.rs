//! The files through which server processes share what the process backend
//! started: which pid runs which generation, and how it exited. One record
//! per generation directory, so two generations are always two records and
//! a call addresses exactly the generations it names (C18).

use std::{
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::ExitStatus,
};

use serde::{Deserialize, Serialize};

use crate::Generation;

pub(super) const INSTANCE_FILE: &str = "instance.json";
const EXIT_FILE: &str = "exit.json";

/// Which process runs a generation, and who started it.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct InstanceRecord {
    pub(super) generation: Generation,
    pub(super) pid: u32,
    /// Guards against pid reuse.
    pub(super) start_time: u64,
    /// The server that spawned it; if that server is gone, so must this be.
    pub(super) server_pid: u32,
}

impl InstanceRecord {
    pub(super) async fn read(generation_dir: &Path) -> Option<Self> {
        let bytes = tokio::fs::read(generation_dir.join(INSTANCE_FILE))
            .await
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes atomically (temp file + rename) so a reader never sees half.
    pub(super) async fn write(&self, generation_dir: &Path) -> std::io::Result<()> {
        let tmp = generation_dir.join(format!("{INSTANCE_FILE}.{}", std::process::id()));
        write_private(&tmp, &serde_json::to_vec(self)?).await?;
        tokio::fs::rename(&tmp, generation_dir.join(INSTANCE_FILE)).await
    }

    pub(super) async fn remove(generation_dir: &Path) -> std::io::Result<()> {
        match tokio::fs::remove_file(generation_dir.join(INSTANCE_FILE)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// How an instance's process ended.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum ExitRecord {
    Code(i32),
    Signal(i32),
    Unknown(String),
}

impl ExitRecord {
    pub(super) fn from_status(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Self::Code(code),
            (None, Some(signal)) => Self::Signal(signal),
            _ => Self::Unknown(status.to_string()),
        }
    }

    /// Exited 0, or ended by the signals `stop` sends.
    pub(super) fn is_clean(&self) -> bool {
        matches!(self, Self::Code(0) | Self::Signal(15) | Self::Signal(9))
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Self::Code(code) => format!("process exited with status {code}"),
            Self::Signal(signal) => format!("process killed by signal {signal}"),
            Self::Unknown(what) => format!("process ended: {what}"),
        }
    }

    fn path(generation_dir: &Path) -> PathBuf {
        generation_dir.join(EXIT_FILE)
    }

    pub(super) async fn read(generation_dir: &Path) -> Option<Self> {
        let bytes = tokio::fs::read(Self::path(generation_dir)).await.ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub(super) async fn write(&self, generation_dir: &Path) {
        if let Ok(bytes) = serde_json::to_vec(self) {
            let _ = write_private(&Self::path(generation_dir), &bytes).await;
        }
    }
}

/// Writes a file only the server may read.
async fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .await?;
    file.write_all(bytes).await?;
    file.flush().await
}
