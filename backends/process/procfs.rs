//! Just enough of `/proc` to tell whether a recorded pid is still the process
//! we started (pids are reused, start times are not).
//! Contracts: C17, C18 (the backend's own truth the control plane is judged by).

use std::fs;

/// The process's start time in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`).
pub(super) fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields resume
    // after the last ')'. Field 3 (state) is the first after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// True if group `pgid` still has a member worth waiting for: one that
/// runs, or a zombie whose parent can reap it. A zombie whose parent is
/// stopped (a paused server that spawned the group) runs nothing and will
/// not be reaped until that server resumes, so it is not worth waiting for.
pub(super) fn group_pending(pgid: u32) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let Some((state, parent, group)) = stat_fields(&entry.path().join("stat")) else {
            return false;
        };
        if group != pgid {
            return false;
        }
        match state.as_str() {
            "Z" | "X" => stat_fields(std::path::Path::new(&format!("/proc/{parent}/stat")))
                .is_some_and(|(parent_state, _, _)| parent_state != "T"),
            _ => true,
        }
    })
}

/// State, parent pid and process group of a `/proc/<pid>/stat`.
fn stat_fields(path: &std::path::Path) -> Option<(String, u32, u32)> {
    let stat = fs::read_to_string(path).ok()?;
    // Fields after the name: state, ppid, pgrp.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.to_owned();
    let parent = fields.next()?.parse().ok()?;
    let group = fields.next()?.parse().ok()?;
    Some((state, parent, group))
}

/// True if `pid` runs, is not a zombie, and (when given) started at
/// `started`.
pub(super) fn is_alive(pid: u32, started: Option<u64>) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let mut fields = stat[close + 1..].split_whitespace();
    if matches!(fields.next(), Some("Z") | Some("X")) {
        return false;
    }
    match started {
        Some(expected) if expected != 0 => start_time(pid) == Some(expected),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_pending_while_a_member_runs() {
        let me = std::process::id();
        let group = fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
        let pgid: u32 = group[group.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .nth(2)
            .unwrap()
            .parse()
            .unwrap();
        assert!(group_pending(pgid));
        assert!(!group_pending(u32::MAX));
    }

    #[test]
    fn this_process_is_alive_with_its_own_start_time() {
        let me = std::process::id();
        let started = start_time(me).expect("own start time");
        assert!(is_alive(me, Some(started)));
        assert!(
            !is_alive(me, Some(started + 1)),
            "a reused pid must not match"
        );
    }

    #[test]
    fn absent_pid_is_dead() {
        assert!(!is_alive(u32::MAX - 1, None));
    }
}
