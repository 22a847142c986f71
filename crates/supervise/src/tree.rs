//! Process-tree bookkeeping without a cgroup, the registry of supervised main
//! children, and reaping of orphans that reparented to us (child subreaper).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use nix::sys::signal::Signal;

use crate::procfs::{self, Stat};
use crate::sys;

/// Pids of main children currently supervised by this process. Their exit status
/// belongs to their own `Child::wait`; the orphan reaper never touches them.
static REGISTRY: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

pub(crate) fn registry() -> MutexGuard<'static, BTreeSet<i32>> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a spawn holds from before the fork until its child is registered.
///
/// On the main thread that is the registry's lock: its children are the ones
/// [`procfs::own_children`] lists, so the orphan reaper must not see a new
/// one (that may die at once) before it is registered, nor race the C
/// library's reaping of a child whose exec failed. On any other thread it is
/// nothing: a thread's children are listed under that thread, never in the
/// main thread's list the reaper reads, so parallel per-item lanes start
/// their items side by side instead of queueing on the lock for the whole
/// fork and exec (and a lane finishing an item no longer waits for another
/// lane's spawn to look at its own tree).
pub(crate) struct SpawnGuard(Option<MutexGuard<'static, BTreeSet<i32>>>);

impl SpawnGuard {
    pub(crate) fn new() -> SpawnGuard {
        let main_thread = nix::unistd::gettid() == nix::unistd::getpid();
        SpawnGuard(main_thread.then(registry))
    }

    /// Record `pid` as a supervised main child.
    pub(crate) fn register(self, pid: i32) {
        match self.0 {
            Some(mut reg) => reg.insert(pid),
            None => registry().insert(pid),
        };
    }
}

/// Reap zombies that are our children but not registered main children
/// (descendants of jobs that reparented to us as subreaper and then died).
///
/// Children in our own process group are left alone: supervised children and
/// therefore all their descendants live in process groups of their own, while
/// a child in our group was started by other code of this process (e.g. with
/// `std::process::Command`) and its exit status belongs to that code's `wait`.
pub(crate) fn reap_orphans() {
    let own_group = nix::unistd::getpgrp().as_raw();
    let reg = registry();
    for pid in procfs::own_children() {
        if reg.contains(&pid) {
            continue;
        }
        if procfs::stat(pid).is_some_and(|s| !s.is_live() && s.pgrp != own_group) {
            // It is our child and a zombie: its pid cannot be reused before we reap it.
            let _ = sys::reap_nohang(pid);
        }
    }
}

/// Whether every child of this process is a registered main child (so no
/// orphaned descendant of any job has been re-parented to us, and
/// [`reap_orphans`] would find nothing to reap).
///
/// With several children supervised in parallel (from different threads) the
/// registered main children of the OTHER runs are fine: they are not leftovers of
/// the caller's tree. Any unregistered child, an orphan of whichever tree,
/// answers false and so forces the caller's full scan (it cannot tell whose
/// orphan it is without one). The registry lock is held while the children are
/// listed, and a spawn from the main thread holds it across fork + registration
/// ([`SpawnGuard`]), so a child that is being forked is never mistaken for an
/// orphan (other threads' children are not in the list at all).
pub(crate) fn only_main_children() -> bool {
    let reg = registry();
    procfs::own_children().iter().all(|pid| reg.contains(pid))
}

/// Tracks the processes of one job when there is no cgroup: its process group,
/// every descendant of the main child (ppid links), and every process ever seen
/// in the tree (so a descendant that called setsid and then lost its parent is
/// still recognised by pid + start time).
#[derive(Debug)]
pub(crate) struct Tracker {
    main: i32,
    pgid: i32,
    known: HashMap<i32, u64>,
    /// Inodes of our stdout/stderr pipes: any process holding them is the job's.
    pipe_inodes: Vec<u64>,
}

impl Tracker {
    pub(crate) fn new(main: i32, pgid: i32, pipe_inodes: Vec<u64>) -> Tracker {
        Tracker {
            main,
            pgid,
            known: HashMap::new(),
            pipe_inodes,
        }
    }

    /// Current live (non-zombie) members of the tree. `deep` also looks for
    /// holders of our output pipes (expensive: reads every process's fd table).
    pub(crate) fn scan(&mut self, deep: bool) -> Vec<i32> {
        let extra = if deep {
            procfs::pipe_holders(&self.pipe_inodes)
        } else {
            Vec::new()
        };
        scan_trees(&[(self.main, self.pgid)], &mut self.known, extra)
    }
}

/// Live (non-zombie) members of the trees rooted at `roots` (main pid, process
/// group id): the mains, their process groups, every process in `known` that still
/// has the recorded start time, the `extra` pids, and all their descendants by ppid
/// links, from one snapshot of the process table. `known` is replaced by every
/// member found (zombies included), so a descendant that called setsid and then
/// lost its parent is still recognised on the next scan.
pub(crate) fn scan_trees(
    roots: &[(i32, i32)],
    known: &mut HashMap<i32, u64>,
    extra: Vec<i32>,
) -> Vec<i32> {
    let me = std::process::id() as i32;
    let all = procfs::all_stats();
    let by_pid: HashMap<i32, Stat> = all.iter().map(|s| (s.pid, *s)).collect();
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for s in &all {
        children.entry(s.ppid).or_default().push(s.pid);
    }
    let mut seeds: Vec<i32> = roots.iter().map(|&(main, _)| main).collect();
    seeds.extend(
        all.iter()
            .filter(|s| roots.iter().any(|&(_, pgid)| s.pgrp == pgid))
            .map(|s| s.pid),
    );
    seeds.extend(
        known
            .iter()
            .filter(|(pid, st)| by_pid.get(pid).is_some_and(|s| s.start_time == **st))
            .map(|(pid, _)| *pid),
    );
    seeds.extend(extra);
    let mut members: BTreeSet<i32> = BTreeSet::new();
    while let Some(pid) = seeds.pop() {
        if pid == me || pid <= 1 || !by_pid.contains_key(&pid) || !members.insert(pid) {
            continue;
        }
        if let Some(kids) = children.get(&pid) {
            seeds.extend(kids.iter().copied());
        }
    }
    *known = members
        .iter()
        .filter_map(|p| by_pid.get(p).map(|s| (*p, s.start_time)))
        .collect();
    members
        .into_iter()
        .filter(|p| by_pid.get(p).is_some_and(|s| s.is_live()))
        .collect()
}

/// Send `sig` exactly once to every process of a tree: first `killpg` for
/// each of the process groups `pgids` (one atomic call that also reaches a
/// member forked a moment ago), then `kill` for each process `pids()` lists
/// (listed after the `killpg`) that is not in one of those groups. Signalling
/// the group and then every member, as before, delivered TERM twice to each
/// group member (a shell's TERM trap ran two or three times).
///
/// `killpg` refuses our own group (never a job's); its members then get the
/// signal one by one. A process that left one of the groups between the two
/// steps gets the signal twice; one that joined a group in that window (only
/// possible for a group listed) got it from `killpg`.
pub(crate) fn signal_once(pgids: &[i32], pids: impl FnOnce() -> Vec<i32>, sig: Signal) {
    let reached = killpg_each(pgids, sig);
    signal_outside(&reached, pids(), sig);
}

/// `killpg` each group; returns the groups it reached.
pub(crate) fn killpg_each(pgids: &[i32], sig: Signal) -> Vec<i32> {
    pgids
        .iter()
        .copied()
        .filter(|&g| sys::killpg(g, sig))
        .collect()
}

/// `kill` each of `pids` that is not (now) a member of one of the `reached` groups.
pub(crate) fn signal_outside(reached: &[i32], pids: Vec<i32>, sig: Signal) {
    for pid in pids {
        let in_reached_group = procfs::stat(pid).is_some_and(|s| reached.contains(&s.pgrp));
        if !in_reached_group {
            sys::kill(pid, sig);
        }
    }
}

/// Live processes of a group (leftover cleanup, no tracker state available).
pub(crate) fn live_in_group(pgid: i32) -> Vec<i32> {
    let me = std::process::id() as i32;
    if pgid <= 1 {
        return Vec::new();
    }
    procfs::all_stats()
        .into_iter()
        .filter(|s| s.pgrp == pgid && s.pid != me && s.is_live())
        .map(|s| s.pid)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Registered main children (of any thread) keep the fast path; an
    /// orphan re-parented to us forces the scan, even when the process that
    /// left it was started by another thread (the kernel gives orphans to the
    /// subreaper's main thread, the one list `own_children` reads).
    #[test]
    fn only_main_children_sees_orphans_of_any_thread() {
        sys::set_child_subreaper().expect("subreaper");
        let spawn = |script: &str| {
            Command::new("sh")
                .args(["-c", script])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("sh")
        };
        let mut a = spawn("sleep 5");
        let mut b = std::thread::spawn(move || spawn("sleep 5"))
            .join()
            .expect("thread");
        {
            let mut reg = registry();
            reg.insert(a.id() as i32);
            reg.insert(b.id() as i32);
        }
        assert!(only_main_children());
        // A child of another thread leaves a grandchild behind and exits.
        let leaver = std::thread::spawn(move || {
            let mut c = spawn("sleep 5 >/dev/null & echo $!");
            let mut pid = String::new();
            std::io::Read::read_to_string(c.stdout.as_mut().expect("stdout"), &mut pid)
                .expect("read");
            c.wait().expect("wait");
            pid.trim().parse::<i32>().expect("pid")
        })
        .join()
        .expect("thread");
        assert!(!only_main_children(), "orphan {leaver} not seen");
        let _ = sys::kill(leaver, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(leaver), None);
        for c in [&mut a, &mut b] {
            let _ = c.kill();
            let _ = c.wait();
        }
        let mut reg = registry();
        reg.remove(&(a.id() as i32));
        reg.remove(&(b.id() as i32));
    }
}
