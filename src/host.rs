//! Who and where this runner is: hostname, boot id, pid and pid start time,
//! and the rule that decides whether another runner (a lock holder) is
//! still alive.

use crate::store::{Holder, RunnerIdentity};
use batchguard_supervise::procfs;

/// This process's identity.
pub fn identity(host_label: Option<&str>) -> RunnerIdentity {
    let pid = std::process::id() as i32;
    RunnerIdentity {
        host: host_label.map(str::to_string).unwrap_or_else(hostname),
        boot_id: procfs::boot_id().unwrap_or_default(),
        pid,
        pid_start: procfs::start_time(pid).unwrap_or(0),
    }
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Is the runner described by `other` alive, seen from `me` at `now_ms`?
///
/// Same boot id: this machine and boot, so ask the kernel (pid and start
/// time, so a recycled pid never looks alive). Same host label but another
/// boot: the machine rebooted, so it is dead. Another host: trust the lease
/// it keeps renewing.
pub fn runner_alive(
    me: &RunnerIdentity,
    other: &RunnerIdentity,
    lease_until_ms: i64,
    now_ms: i64,
) -> bool {
    if !me.boot_id.is_empty() && other.boot_id == me.boot_id {
        procfs::is_alive(other.pid, other.pid_start)
    } else if other.host == me.host {
        false
    } else {
        lease_until_ms > now_ms
    }
}

pub fn holder_alive(me: &RunnerIdentity, h: &Holder, now_ms: i64) -> bool {
    runner_alive(me, &h.runner, h.lease_until_ms, now_ms)
}

/// Whether `other` runs on this very machine and boot (so its processes and
/// cgroups can be reached directly).
pub fn same_machine(me: &RunnerIdentity, other: &RunnerIdentity) -> bool {
    !me.boot_id.is_empty() && other.boot_id == me.boot_id
}
