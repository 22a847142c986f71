//! Taking a job's lock (G07): `forbid`, `replace` and `allow` on top of the
//! store's single-transaction acquire, plus the two clean-ups that need the
//! operating system rather than the database: stopping the leftover
//! processes of a runner that died (so a new run never overlaps orphaned
//! work), and stopping the process tree of a run being replaced.

use super::Context;
use crate::clock;
use crate::error::Result;
use crate::host;
use crate::store::{AcquireMode, Holder, LockAttempt, LockRequest, RunRecord};
use batchguard_supervise as supervise;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub enum Taken {
    Fence(i64),
    /// Someone else holds the lock (or a dead holder's processes could not
    /// be stopped): the run must not start.
    Held(Holder),
}

pub fn take(
    ctx: &Context,
    run: &RunRecord,
    mode: AcquireMode,
    kill_grace: Duration,
    on_lost: &dyn Fn(&str),
) -> Result<Taken> {
    let lease_ms = ctx.global.lease.as_millis() as i64;
    let mut cleaned = None;
    let alive = |h: &Holder, now: i64| host::holder_alive(&ctx.me, h, now);
    // A few rounds at most: each round either takes the lock, reports the
    // holder, or cleans up after one dead holder.
    for _ in 0..8 {
        let req = LockRequest {
            run,
            now_ms: clock::now_ms(),
            lease_ms,
            mode,
            cleaned_fence: cleaned,
        };
        match ctx.store.acquire(&req, &alive)? {
            LockAttempt::Acquired { fence, replaced } => {
                if let Some(old) = replaced {
                    stop_replaced(ctx, &old, kill_grace);
                }
                return Ok(Taken::Fence(fence));
            }
            LockAttempt::Held(h) => return Ok(Taken::Held(h)),
            LockAttempt::Stale(h) => {
                if !clean_stale(ctx, &h, kill_grace, on_lost)? {
                    return Ok(Taken::Held(h));
                }
                cleaned = Some(h.fence);
            }
        }
    }
    Err(crate::error::Error::Usage(format!(
        "lock `{}` keeps changing hands; try again",
        run.lock
    )))
}

/// The holder's runner is dead. Stop whatever it left running (only
/// reachable on this machine), then record its run as lost. Returns false if
/// its processes survive, in which case the lock stays held.
fn clean_stale(ctx: &Context, h: &Holder, grace: Duration, on_lost: &dyn Fn(&str)) -> Result<bool> {
    if host::same_machine(&ctx.me, &h.runner) {
        let (cgroup, pgid) = verified_tree(&h.run_id, h.cgroup.as_deref(), h.pgid);
        let cgroup = cgroup.as_deref();
        if supervise::tree_alive(cgroup, pgid) {
            tracing::warn!(
                run = %h.run_id, lock = %h.lock,
                "the runner of run {} died and left processes behind; stopping them", h.run_id
            );
        }
        // Also removes the dead run's (possibly empty) cgroup.
        supervise::kill_leftovers(cgroup, pgid, grace);
        if supervise::tree_alive(cgroup, pgid) {
            return Ok(false);
        }
    }
    let now = clock::now_ms();
    let tz = clock::zone(None);
    if ctx
        .store
        .mark_lost(&h.run_id, &clock::rfc3339(now, &tz), now)?
    {
        tracing::warn!(run = %h.run_id, "recorded run {} as lost", h.run_id);
        on_lost(&h.run_id);
    }
    Ok(true)
}

/// `replace`: the lock has moved to us. Stop the old run's tree (TERM,
/// grace, KILL) when it is on this machine; on another host its runner sees
/// the moved lock at its next heartbeat and stops itself. Then wait (bounded)
/// until the old run has recorded its end, so the two never work at once.
fn stop_replaced(ctx: &Context, old: &Holder, grace: Duration) {
    let local = host::same_machine(&ctx.me, &old.runner);
    if local {
        let (cgroup, pgid) = verified_tree(&old.run_id, old.cgroup.as_deref(), old.pgid);
        supervise::kill_leftovers(cgroup.as_deref(), pgid, grace);
    }
    let bound = if local {
        grace + Duration::from_secs(5)
    } else {
        ctx.global.lease + grace + Duration::from_secs(5)
    };
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        match ctx.store.get_run(&old.run_id) {
            Ok(Some(r)) if r.outcome != "running" => return,
            Ok(None) => return,
            Ok(Some(_)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the replaced run");
                return;
            }
        }
        if local && !host::runner_alive(&ctx.me, &old.runner, i64::MAX, 0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::warn!(run = %old.run_id, "the replaced run did not record its end in time");
}

/// The process tree of run `run_id` as recorded (`cgroup`, `pgid`), only
/// as far as it checks out on this host, since anything in the store may
/// have been written by a job (SPEC §4): the cgroup must be the one
/// batchguard plans for that run (named after it, under batchguard's own
/// cgroup base, no links); the process group must be a real group (never 0
/// or 1) whose leader carries `BATCHGUARD_RUN_ID=<run_id>` in its
/// environment, which only the runner of that run sets.
pub(crate) fn verified_tree(
    run_id: &str,
    cgroup: Option<&str>,
    pgid: Option<i32>,
) -> (Option<PathBuf>, Option<i32>) {
    let cgroup = cgroup
        .map(PathBuf::from)
        .filter(|p| cgroup_of_run(run_id, p));
    let pgid = pgid.filter(|&g| g > 1 && leader_is_of_run(run_id, g));
    (cgroup, pgid)
}

fn cgroup_of_run(run_id: &str, path: &Path) -> bool {
    let named = path.file_name().is_some_and(|n| n == run_id);
    let planned = supervise::planned_cgroup(run_id, supervise::detect());
    let placed = match &planned {
        Some(planned) => planned.parent() == path.parent(),
        None => path.starts_with("/sys/fs/cgroup"),
    };
    let no_links = std::fs::canonicalize(path).map_or(true, |c| c == path);
    let ok = named && placed && no_links;
    if !ok {
        tracing::warn!(run = run_id, cgroup = %path.display(), "recorded cgroup is not this run's: left alone");
    }
    ok
}

fn leader_is_of_run(run_id: &str, pgid: i32) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pgid}/environ")) else {
        return false;
    };
    let want = format!("BATCHGUARD_RUN_ID={run_id}");
    let ok = environ.split(|&b| b == 0).any(|kv| kv == want.as_bytes());
    if !ok {
        tracing::warn!(
            run = run_id,
            pgid,
            "recorded process group is not this run's: left alone"
        );
    }
    ok
}
