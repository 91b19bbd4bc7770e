//! Who may call what. Every call passes one tower layer ([`AuthLayer`])
//! that reads the gRPC method from the HTTP path, looks it up in one table
//! ([`access`]) and checks the bearer token in `authorization` against the
//! configured [`Tokens`]. Health and reflection are public; the agent
//! service authenticates with each generation's own token, checked by the
//! store against the workspace it names; every other method needs a role,
//! and a method missing from the table needs `admin`, so no RPC added later
//! is open by accident.
//! No lifecycle contract (C1–C20): it is part of the security boundary (README, "Who may call what").

pub mod client;
mod layer;
pub mod limit;
mod live;
pub mod refusals;
mod tokens;

pub use layer::{AuthLayer, AuthService};
pub use live::LiveTokens;
pub use tokens::{
    Tokens, TokensError, admin_token_path, entry, generate_token, load_or_create_admin_token,
};

use std::{fmt, str::FromStr};

/// What a caller may do; each role includes the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Get, list, watch, list cycles.
    Reader,
    /// Plus restart, stop, secrets, files and unreachable reports.
    Operator,
    /// Plus create and delete.
    Admin,
}

impl Role {
    /// The name used in token files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reader => "reader",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw {
            "reader" => Ok(Self::Reader),
            "operator" => Ok(Self::Operator),
            "admin" => Ok(Self::Admin),
            other => Err(format!(
                "unknown role {other:?} (reader, operator or admin)"
            )),
        }
    }
}

/// An authenticated caller, put in the request's extensions by the auth
/// layer so handlers can name who did what (the audit record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's name from the token file (never the token).
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// What a method requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health, reflection).
    Public,
    /// The agent service: the per-generation token in the request body is
    /// the credential, checked by the store.
    Agent,
    /// A bearer token of at least this role.
    Role(Role),
}

const LIFECYCLE: &str = "/workspace.lifecycle.v1.WorkspaceLifecycle/";
const AGENT: &str = "/workspace.lifecycle.v1.WorkspaceAgent/";
const PUBLIC_SERVICES: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// The one table: what the method at HTTP `path` requires. Unknown methods
/// (of any service) require `admin`, so nothing is open by omission.
pub fn access(path: &str) -> Access {
    if PUBLIC_SERVICES.iter().any(|s| path.starts_with(s)) {
        return Access::Public;
    }
    if path.starts_with(AGENT) {
        return Access::Agent;
    }
    let method = path.strip_prefix(LIFECYCLE).unwrap_or("");
    Access::Role(match method {
        "GetWorkspace" | "ListWorkspaces" | "WatchWorkspace" | "ListCycles" => Role::Reader,
        "RestartWorkspace" | "StopWorkspace" | "SetSecret" | "DeleteSecret" | "WriteFile"
        | "DeleteFile" | "ReportUnreachable" => Role::Operator,
        // CreateWorkspace, DeleteWorkspace, and anything not listed.
        _ => Role::Admin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lifecycle_method_has_its_role() {
        let table = [
            ("GetWorkspace", Role::Reader),
            ("ListWorkspaces", Role::Reader),
            ("WatchWorkspace", Role::Reader),
            ("ListCycles", Role::Reader),
            ("RestartWorkspace", Role::Operator),
            ("StopWorkspace", Role::Operator),
            ("SetSecret", Role::Operator),
            ("DeleteSecret", Role::Operator),
            ("WriteFile", Role::Operator),
            ("DeleteFile", Role::Operator),
            ("ReportUnreachable", Role::Operator),
            ("CreateWorkspace", Role::Admin),
            ("DeleteWorkspace", Role::Admin),
            ("SomethingNew", Role::Admin),
        ];
        for (method, role) in table {
            assert_eq!(
                access(&format!("{LIFECYCLE}{method}")),
                Access::Role(role),
                "{method}"
            );
        }
    }

    #[test]
    fn only_health_and_reflection_are_public() {
        assert_eq!(access("/grpc.health.v1.Health/Check"), Access::Public);
        assert_eq!(
            access("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Access::Public
        );
        assert_eq!(access(&format!("{AGENT}Register")), Access::Agent);
        assert_eq!(access("/other.Service/Method"), Access::Role(Role::Admin));
        assert_eq!(access("/"), Access::Role(Role::Admin));
        // A prefix trick does not make a method public.
        assert_eq!(
            access("/grpc.health.v1.HealthX/Check"),
            Access::Role(Role::Admin)
        );
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Reader < Role::Operator && Role::Operator < Role::Admin);
        for role in [Role::Reader, Role::Operator, Role::Admin] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().is_err());
    }
}
