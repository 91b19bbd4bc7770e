//! What a Docker Engine accepts as an image reference and as resources, so
//! that a create the engine could only refuse in its first cycle is refused
//! at once and stores nothing. No contract of its own: the spec's rule that
//! bad input gets a precise status and changes nothing.
//!
//! The reference grammar is the one the engine parses
//! (`[domain[:port]/]path[:tag][@algorithm:hex]`, path components lowercase
//! alphanumerics joined by `.`, `_`, `__` or dashes; at most 255 bytes of
//! name).

use crate::{SpecRejected, WorkspaceSpec};

/// The least CPU the engine gives a container (0.01 of a CPU).
const MIN_CPU_MILLIS: u32 = 10;
/// The least memory the engine lets a container have (6 MiB).
const MIN_MEMORY_MIB: u32 = 6;

/// Refuses what the engine would refuse of `spec`.
pub(super) fn check(spec: &WorkspaceSpec) -> Result<(), SpecRejected> {
    if !spec.image.is_empty() {
        image(&spec.image).map_err(|why| SpecRejected {
            field: "spec.image",
            message: format!(
                "spec.image is not an image reference the Docker Engine accepts: {why}"
            ),
        })?;
    }
    if spec.cpu_millis != 0 && spec.cpu_millis < MIN_CPU_MILLIS {
        return Err(SpecRejected {
            field: "spec.cpu_millis",
            message: format!("spec.cpu_millis must be 0 (no limit) or at least {MIN_CPU_MILLIS}"),
        });
    }
    if spec.memory_mib != 0 && spec.memory_mib < MIN_MEMORY_MIB {
        return Err(SpecRejected {
            field: "spec.memory_mib",
            message: format!("spec.memory_mib must be 0 (no limit) or at least {MIN_MEMORY_MIB}"),
        });
    }
    Ok(())
}

/// Checks an image reference against the engine's grammar.
fn image(reference: &str) -> Result<(), &'static str> {
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (reference, None),
    };
    if let Some(digest) = digest {
        let (algorithm, hex) = digest.split_once(':').ok_or("a digest is algorithm:hex")?;
        let algorithm_ok = !algorithm.is_empty()
            && algorithm.split(['+', '.', '-', '_']).all(|c| {
                c.starts_with(|ch: char| ch.is_ascii_alphabetic())
                    && c.chars().all(|ch| ch.is_ascii_alphanumeric())
            });
        if !algorithm_ok || hex.len() < 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err("a digest is algorithm:hex, with at least 32 hex digits");
        }
    }
    // A tag follows the last `:` after the last `/` (a `:` before it is a
    // registry's port).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let valid = !tag.is_empty()
            && tag.len() <= 128
            && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            return Err(
                "a tag is at most 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'",
            );
        }
    }
    if name.is_empty() || name.len() > 255 {
        return Err("a name is 1 to 255 bytes");
    }
    let mut components: Vec<&str> = name.split('/').collect();
    // The first component names a registry if it looks like a host (as the
    // engine splits it: a dot, a colon, `localhost`, or an uppercase letter).
    if components.len() > 1
        && (components[0].contains(['.', ':'])
            || components[0] == "localhost"
            || components[0].chars().any(|c| c.is_ascii_uppercase()))
    {
        let domain = components.remove(0);
        let (host, port) = match domain.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (host, Some(port)),
            _ => (domain, None),
        };
        let ipv6 = host.len() > 2
            && host.starts_with('[')
            && host.ends_with(']')
            && host[1..host.len() - 1]
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':');
        let host_ok = ipv6
            || host.split('.').all(|label| {
                !label.is_empty()
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !host_ok || port.is_some_and(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()))
        {
            return Err("a registry is host[:port]");
        }
    }
    if components.iter().all(|c| path_component(c)) {
        Ok(())
    } else {
        Err(
            "a repository is lowercase letters and digits, joined by '.', '_', '__' or dashes, in '/'-separated parts",
        )
    }
}

/// `[a-z0-9]+` joined by `.`, `_`, `__` or one or more `-`.
fn path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    if bytes.is_empty() || !is_alnum(bytes[0]) || !is_alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if is_alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !is_alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        if !(separator == "."
            || separator == "_"
            || separator == "__"
            || separator.bytes().all(|b| b == b'-'))
        {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_the_engine_accepts_pass_and_those_it_refuses_do_not() {
        for ok in [
            "workspace-agent:latest",
            "busybox",
            "library/busybox:1.36",
            "ghcr.io/org/app_name/x:v1.2-rc.1",
            "localhost:5000/team/img",
            "MyReg/img",
            "[::1]:5000/img",
            "registry.example.com:443/a/b__c/d--e",
            "img@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "img:tag@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(image(ok), Ok(()), "{ok}");
        }
        // Found from outside: each was stored and failed in its first cycle.
        for bad in [
            "UPPER/Case:tag",
            "x:y:z",
            "--privileged",
            "img@sha256:zz",
            "img:",
            "img:-tag",
            "a//b",
            "a/",
            ".a",
            "a..b",
            "a___b",
            "bad host:1/x",
        ] {
            assert!(image(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resources_below_what_the_engine_allows_are_refused_and_zero_means_no_limit() {
        let spec = |cpu_millis, memory_mib| WorkspaceSpec {
            cpu_millis,
            memory_mib,
            ..WorkspaceSpec::default()
        };
        assert!(check(&spec(0, 0)).is_ok());
        assert!(check(&spec(10, 6)).is_ok());
        assert_eq!(check(&spec(1, 0)).unwrap_err().field, "spec.cpu_millis");
        assert_eq!(check(&spec(0, 1)).unwrap_err().field, "spec.memory_mib");
    }
}
