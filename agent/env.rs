//! The environment contract between backends and the agent. Backends set
//! these variables; the agent reads them. One list, so the two sides cannot
//! drift apart.
//! No lifecycle contract (C1–C20): it is part of the security boundary (README, "Who may call what").

/// The control plane's gRPC URL, e.g. `http://127.0.0.1:50051`.
pub const SERVICE_URL: &str = "WL_SERVICE_URL";
/// The generation's bearer token.
pub const TOKEN: &str = "WL_AGENT_TOKEN";
/// The workspace id (sent with the token, which is valid for it only).
pub const WORKSPACE_ID: &str = "WL_WORKSPACE_ID";
/// The generation (informational).
pub const GENERATION: &str = "WL_GENERATION";
/// The config version the instance was started with.
pub const CONFIG_VERSION: &str = "WL_CONFIG_VERSION";
/// Comma-separated names of the secrets injected as environment.
pub const SECRET_NAMES: &str = "WL_SECRET_NAMES";
/// The directory holding the workspace's files.
pub const FILES_DIR: &str = "WL_FILES_DIR";
/// The endpoint the agent reports (defaults to its pid).
pub const ENDPOINT: &str = "WL_AGENT_ENDPOINT";
/// When set, the agent dies with the process of this pid (process backend).
pub const PARENT_PID: &str = "WL_AGENT_PARENT_PID";

/// The prefix reserved for the variables above; secrets and plain variables
/// may not use it.
pub const RESERVED_PREFIX: &str = "WL_";
