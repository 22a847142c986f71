//! A run-level cgroup shared by many children (per-item mode).
//!
//! Creating a cgroup per item is too slow for thousands of short items (on cgroup
//! v1 every creation can wait for an RCU grace period), so a run creates one
//! [`Group`] and every item child joins it with [`CgroupPlacement::Join`]
//! (through descriptors the group opened once: see `spawn::start` for when the
//! parent moves a child and when the child joins by itself before exec, as a
//! [`CgroupPlacement::Create`] child does).
//! The group's memory limit bounds all item processes together, and the kernel's
//! `oom_kill` counter of the group tells whether the OOM killer struck anywhere.
//!
//! Without a cgroup (poll mode, or enforcement `none`) the group keeps the list of
//! its live member children instead, so that [`Group::sample`] and
//! [`Group::kill_all`] can reach their process trees.
//!
//! [`CgroupPlacement::Join`]: crate::CgroupPlacement::Join
//! [`CgroupPlacement::Create`]: crate::CgroupPlacement::Create

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::cgroup::{self, Cgroup, Entrance, Kind, OomCounter};
use crate::{Enforcement, KILL_GIVE_UP, SpawnError, TEARDOWN_TICK, procfs, sys, tree};

/// Member children of a group without a cgroup, and what was seen of their trees.
#[derive(Debug, Default)]
struct Members {
    /// Main pids (each is also its process group id) of children whose `wait` has not ended.
    pids: Vec<i32>,
    /// Every process seen in a member tree (pid -> start time), see `tree::scan_trees`.
    known: HashMap<i32, u64>,
}

pub(crate) struct GroupInner {
    name: String,
    /// The cgroup and the files through which children enter it.
    cgroup: Option<(Cgroup, Entrance)>,
    /// The cgroup's OOM kill counter file, kept open: every joined child reads it
    /// at spawn (and again if it dies of SIGKILL).
    oom_counter: Option<OomCounter>,
    /// How the group is tracked: Cgroup1/Cgroup2 with a cgroup, else Poll or None.
    mode: Enforcement,
    memory_max: Option<u64>,
    members: Mutex<Members>,
    /// Poll mode: max of the summed RSS samples; cgroup v2 without memory.peak:
    /// max of memory.current samples. 0 = nothing sampled yet.
    sampled_peak: AtomicU64,
    /// Poll mode: how many times `sample` found the group above memory_max.
    breaches: AtomicU64,
    /// Set when the owning `Group` is dropped: joining is refused from then on.
    closed: AtomicBool,
}

impl GroupInner {
    fn members(&self) -> MutexGuard<'_, Members> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn path(&self) -> Option<&Path> {
        self.cgroup.as_ref().map(|(c, _)| c.path.as_path())
    }

    /// The cgroup and its open entrance, for joining children.
    pub(crate) fn join_target(&self) -> Option<(&Cgroup, &Entrance)> {
        self.cgroup.as_ref().map(|(c, f)| (c, f))
    }

    pub(crate) fn mode(&self) -> Enforcement {
        self.mode
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub(crate) fn enforcement(&self) -> Enforcement {
        if self.memory_max.is_some() {
            self.mode
        } else {
            Enforcement::None
        }
    }

    pub(crate) fn oom_kills(&self) -> u64 {
        match (&self.cgroup, &self.oom_counter) {
            (Some((c, _)), Some(counter)) => counter.read().unwrap_or_else(|| c.oom_kills()),
            (Some((c, _)), None) => c.oom_kills(),
            (None, _) => 0,
        }
    }

    pub(crate) fn breaches(&self) -> u64 {
        self.breaches.load(Ordering::SeqCst)
    }

    /// Record a member child (only needed without a cgroup).
    pub(crate) fn add_member(&self, pid: i32) {
        if self.cgroup.is_none() {
            self.members().pids.push(pid);
        }
    }

    /// Forget a member child. Must happen BEFORE its zombie is reaped, so that a
    /// concurrent `kill_all` never signals a recycled process group id.
    pub(crate) fn remove_member(&self, pid: i32) {
        if self.cgroup.is_none() {
            let mut m = self.members();
            m.pids.retain(|&p| p != pid);
            if m.pids.is_empty() {
                m.known.clear();
            }
        }
    }

    /// Live processes of every member tree (non-cgroup modes; one /proc scan).
    fn member_trees(&self) -> Vec<i32> {
        let (roots, mut known) = {
            let m = self.members();
            if m.pids.is_empty() {
                return Vec::new();
            }
            let roots: Vec<(i32, i32)> = m.pids.iter().map(|&p| (p, p)).collect();
            (roots, m.known.clone())
        };
        let live = tree::scan_trees(&roots, &mut known, Vec::new());
        let mut m = self.members();
        if !m.pids.is_empty() {
            m.known = known;
        }
        live
    }

    fn live(&self) -> Vec<i32> {
        match &self.cgroup {
            Some((c, _)) => c.live_pids(),
            None => self.member_trees(),
        }
    }

    fn signal(&self, sig: Signal) {
        match &self.cgroup {
            Some((c, _)) => c.signal_all(sig),
            None => {
                // Each process once (see `tree::signal_once`): the member groups,
                // then the rest of their trees. `killpg` under the lock: a member
                // leaves the list before its zombie (which keeps the process
                // group id reserved) is reaped, so no group id is recycled yet.
                let reached = tree::killpg_each(&self.members().pids, sig);
                tree::signal_outside(&reached, self.member_trees(), sig);
            }
        }
    }

    pub(crate) fn sample(&self) -> bool {
        match (&self.cgroup, self.mode) {
            (Some((c, _)), _) => {
                if !c.has_kernel_peak() {
                    if let Some(cur) = c.current() {
                        self.sampled_peak.fetch_max(cur, Ordering::SeqCst);
                    }
                }
                false
            }
            (None, Enforcement::Poll) => {
                if self.members().pids.is_empty() {
                    return false;
                }
                let page = sys::page_size();
                let pids = self.member_trees();
                if pids.is_empty() {
                    return false;
                }
                let rss: u64 = pids
                    .iter()
                    .filter_map(|&p| procfs::rss_bytes(p, page))
                    .sum();
                self.sampled_peak.fetch_max(rss, Ordering::SeqCst);
                let over = self.memory_max.is_some_and(|max| rss > max);
                if over {
                    self.breaches.fetch_add(1, Ordering::SeqCst);
                    tracing::info!(group = %self.name, rss, "group memory limit exceeded");
                }
                over
            }
            (None, _) => false,
        }
    }

    fn peak(&self) -> Option<u64> {
        let sampled = match self.sampled_peak.load(Ordering::SeqCst) {
            0 => None,
            n => Some(n),
        };
        match (&self.cgroup, self.mode) {
            (Some((c, _)), _) => match (c.peak(), sampled) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
            (None, Enforcement::Poll) => sampled,
            (None, _) => None,
        }
    }

    fn kill_all(&self, grace: Duration) {
        if self.live().is_empty() {
            return;
        }
        self.signal(Signal::SIGTERM);
        // SIGCONT so that stopped members can act on TERM.
        self.signal(Signal::SIGCONT);
        let kill_at = Instant::now() + grace;
        while Instant::now() < kill_at && !self.live().is_empty() {
            tree::reap_orphans();
            std::thread::sleep(TEARDOWN_TICK);
        }
        self.kill_now(KILL_GIVE_UP);
    }

    /// KILL until nothing is left, at most for `limit`.
    fn kill_now(&self, limit: Duration) {
        let give_up = Instant::now() + limit;
        loop {
            let live = self.live();
            if live.is_empty() {
                break;
            }
            if Instant::now() >= give_up {
                tracing::warn!(group = %self.name, leftovers = ?live, "processes survive SIGKILL; giving up");
                break;
            }
            self.signal(Signal::SIGKILL);
            tree::reap_orphans();
            std::thread::sleep(TEARDOWN_TICK);
        }
        tree::reap_orphans();
    }
}

/// A run-level cgroup that several children join (per-item mode).
///
/// * [`Group::create`] makes one leaf cgroup (placement as for
///   [`CgroupPlacement::Create`](crate::CgroupPlacement::Create)) with the memory
///   limit of the whole run; children spawned with
///   [`CgroupPlacement::Join`](crate::CgroupPlacement::Join)`(group.handle())` join
///   it before exec. They set no limit of their own, and their own timeout / stop /
///   leftover handling only reaches their own process group and tracked
///   descendants, never their siblings.
/// * In poll mode (forced, or because the cgroup could not be created) the group
///   remembers its live member children; the caller drives [`Group::sample`]
///   periodically and calls [`Group::kill_all`] when it returns true.
/// * Dropping the group KILLs whatever is left in it and removes the cgroup.
///   Stop spawning members before calling [`Group::kill_all`] or dropping the
///   group: a child still being forked is not reached.
pub struct Group {
    inner: Arc<GroupInner>,
}

/// A cheap, clonable handle on a [`Group`] for
/// [`CgroupPlacement::Join`](crate::CgroupPlacement::Join). Handles compare equal
/// when they refer to the same group.
#[derive(Clone)]
pub struct GroupHandle(pub(crate) Arc<GroupInner>);

impl PartialEq for GroupHandle {
    fn eq(&self, other: &GroupHandle) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for GroupHandle {}

impl fmt::Debug for GroupInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("name", &self.name)
            .field("path", &self.path())
            .field("mode", &self.mode)
            .field("memory_max", &self.memory_max)
            .finish()
    }
}

impl fmt::Debug for GroupHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl Group {
    /// Create the leaf cgroup `name` (v2: `/sys/fs/cgroup/batchguard/<name>`, v1:
    /// `<own memory cgroup>/batchguard/<name>`; an empty stale directory of that name
    /// is replaced) with `memory.max` / `memory.limit_in_bytes` (and swap off) set to
    /// `memory_max` when given (v2: `memory.oom.group` is left off, so an OOM kills
    /// the largest process as on v1, not every item of the run). With `mode` Poll or None, or when the cgroup cannot be
    /// created (a warning is logged and the group falls back to poll), no directory
    /// exists and [`Group::path`] is None. An invalid name (empty, `.`, `..`, with
    /// `/` or NUL) is an error in every mode.
    pub fn create(
        name: &str,
        memory_max: Option<u64>,
        mode: Enforcement,
    ) -> Result<Group, SpawnError> {
        cgroup::check_name(name)?;
        let kind = Kind::of(mode);
        let mut cg = None;
        if let Some(kind) = kind {
            // No memory.oom.group: an OOM kills the largest process (as on v1), not
            // every item of the run; the run sees it in `oom_kills`.
            match Cgroup::create(kind, name, memory_max, false) {
                Ok(pair) => cg = Some(pair),
                Err(e) => tracing::warn!(
                    path = %e.path.display(),
                    error = %e.source,
                    "cannot create a {mode} group cgroup; tracking the item processes by polling instead"
                ),
            }
        }
        let effective = match (&cg, mode) {
            (Some((c, _)), _) => c.kind.enforcement(),
            (None, Enforcement::None) => Enforcement::None,
            (None, _) => Enforcement::Poll,
        };
        if memory_max.is_some() && effective == Enforcement::None {
            tracing::warn!("memory_max set but memory enforcement is 'none': not enforced");
        }
        let oom_counter = cg.as_ref().and_then(|(c, _)| c.oom_counter());
        Ok(Group {
            inner: Arc::new(GroupInner {
                name: name.to_string(),
                cgroup: cg,
                oom_counter,
                mode: effective,
                memory_max,
                members: Mutex::new(Members::default()),
                sampled_peak: AtomicU64::new(0),
                breaches: AtomicU64::new(0),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// A handle for [`CgroupPlacement::Join`](crate::CgroupPlacement::Join).
    pub fn handle(&self) -> GroupHandle {
        GroupHandle(self.inner.clone())
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The cgroup directory (None in poll / none mode).
    pub fn path(&self) -> Option<&Path> {
        self.inner.path()
    }

    /// Enforcement actually used for `memory_max`: Cgroup2/Cgroup1 with a cgroup,
    /// Poll without one, None in mode `none` — and None when there is no
    /// `memory_max` (same convention as [`Child::enforcement`](crate::Child::enforcement)).
    pub fn enforcement(&self) -> Enforcement {
        self.inner.enforcement()
    }

    /// The kernel's count of OOM kills in the group (0 without a cgroup).
    pub fn oom_kills(&self) -> u64 {
        self.inner.oom_kills()
    }

    /// Poll mode: how many [`Group::sample`] calls found the group above its limit.
    pub fn limit_breaches(&self) -> u64 {
        self.inner.breaches()
    }

    /// High-water mark of the whole group's memory: the kernel's peak in cgroup
    /// modes (or the max of sampled `memory.current` on cgroup v2 without
    /// `memory.peak`), the max of the summed RSS samples of all member trees in poll
    /// mode, None in mode `none` or before anything was sampled.
    pub fn peak_memory(&self) -> Option<u64> {
        self.inner.peak()
    }

    /// Poll mode: sample the RSS of every live member tree (one /proc scan) and
    /// return true when the sum exceeds `memory_max`; the caller then stops
    /// spawning and calls [`Group::kill_all`]. Joined children that die of a signal
    /// after such a breach end as [`End::OutOfMemory`](crate::End::OutOfMemory).
    /// Cgroup modes: a cheap no-op (reads `memory.current` only on cgroup v2
    /// without `memory.peak`), always false — the kernel enforces the limit.
    pub fn sample(&self) -> bool {
        self.inner.sample()
    }

    /// TERM (and CONT) every process of the group — everything in the cgroup, or
    /// every member tree without one — then KILL whatever is left after `grace`,
    /// repeated until the group is empty. Bounded: gives up `grace` + 10 s later.
    pub fn kill_all(&self, grace: Duration) {
        self.inner.kill_all(grace);
    }

    /// Whether no live process is left in the group.
    pub fn is_empty(&self) -> bool {
        self.inner.live().is_empty()
    }
}

impl Drop for Group {
    /// KILL anything left, remove the cgroup directory (retrying briefly while the
    /// kernel finishes tearing down exited members). Later joins are refused.
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.kill_now(Duration::from_secs(5));
        if let Some((c, _)) = &self.inner.cgroup {
            if let Err(e) = c.remove() {
                tracing::warn!(path = %c.path.display(), error = %e, "cannot remove group cgroup");
            }
        }
    }
}

/// Error for joining a group whose owner was dropped.
pub(crate) fn closed_error(inner: &GroupInner) -> SpawnError {
    SpawnError::Cgroup {
        path: inner.path().map(Path::to_path_buf).unwrap_or_default(),
        source: io::Error::other(format!("group {} was dropped", inner.name)),
    }
}
