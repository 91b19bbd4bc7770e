//! Who used the CPU during a run: Postgres (the postmaster and its
//! backends), the servers, and the whole machine — from /proc, so a
//! throughput figure can say whether Postgres' CPU was the limit.

use std::path::Path;

use tokio::time::Instant;

/// Clock ticks per second of /proc's CPU times (USER_HZ; 100 on Linux).
const HZ: f64 = 100.0;

/// utime + stime (+ cutime + cstime with `children`) of `pid`, in ticks.
fn ticks(pid: u32, children: bool) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces): state is
    // field 3, utime 14, stime 15, cutime 16, cstime 17.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let own = fields.first().unwrap_or(&0) + fields.get(1).unwrap_or(&0);
    if children {
        own + fields.get(2).unwrap_or(&0) + fields.get(3).unwrap_or(&0)
    } else {
        own
    }
}

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Ticks of Postgres: the postmaster with its reaped children (backends
/// that exited) and its live children.
fn postgres_ticks(postmaster: u32) -> u64 {
    let mut total = ticks(postmaster, true);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if parent(pid) == Some(postmaster) {
            total += ticks(pid, false);
        }
    }
    total
}

/// (busy, total) ticks of the machine from /proc/stat.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string(Path::new("/proc/stat")).unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let total: u64 = fields.iter().sum();
    // idle and iowait.
    let idle = fields.get(3).unwrap_or(&0) + fields.get(4).unwrap_or(&0);
    (total - idle, total)
}

/// CPU use from [`Meter::start`] to [`Meter::stop`].
pub struct Meter {
    postmaster: Option<u32>,
    servers: Vec<u32>,
    began: Instant,
    pg: u64,
    srv: u64,
    machine: (u64, u64),
}

/// Cores used on average over a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Share {
    pub postgres: Option<f64>,
    pub servers: f64,
    pub busy: f64,
    pub cores: f64,
}

impl Share {
    /// "Postgres 1.21 cores (63% of busy CPU), servers 0.55, machine 1.93 of 2 busy".
    pub fn line(&self, servers: &str) -> String {
        let pg = match self.postgres {
            Some(pg) => format!(
                "Postgres {pg:.2} cores ({:.0}% of busy CPU)",
                100.0 * pg / self.busy.max(1e-9)
            ),
            None => "Postgres ? (postmaster not visible)".to_owned(),
        };
        format!(
            "{pg}, {servers} {:.2}, machine {:.2} of {:.0} cores busy",
            self.servers, self.busy, self.cores
        )
    }
}

impl Meter {
    /// Starts metering Postgres (its postmaster) and the `servers` pids.
    pub fn start(postmaster: Option<u32>, servers: &[u32]) -> Self {
        Self {
            postmaster,
            servers: servers.to_vec(),
            began: Instant::now(),
            pg: postmaster.map_or(0, postgres_ticks),
            srv: servers.iter().map(|p| ticks(*p, true)).sum(),
            machine: machine_ticks(),
        }
    }

    pub fn stop(&self) -> Share {
        let secs = self.began.elapsed().as_secs_f64().max(1e-9);
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        let (busy, total) = machine_ticks();
        let busy_share = (busy - self.machine.0) as f64 / ((total - self.machine.1).max(1)) as f64;
        let srv: u64 = self.servers.iter().map(|p| ticks(*p, true)).sum();
        Share {
            postgres: self
                .postmaster
                .map(|pm| postgres_ticks(pm).saturating_sub(self.pg) as f64 / HZ / secs),
            servers: srv.saturating_sub(self.srv) as f64 / HZ / secs,
            busy: busy_share * cores,
            cores,
        }
    }
}
