//! Process-tree bookkeeping without a cgroup, the registry of supervised main
//! children, and reaping of orphans that reparented to us (child subreaper).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use crate::procfs::{self, Stat};
use crate::sys;

/// Pids of main children currently supervised by this process. Their exit status
/// belongs to their own `Child::wait`; the orphan reaper never touches them.
static REGISTRY: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

pub(crate) fn registry() -> MutexGuard<'static, BTreeSet<i32>> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reap zombies that are our children but not registered main children
/// (descendants of jobs that reparented to us as subreaper and then died).
pub(crate) fn reap_orphans() {
    let reg = registry();
    for pid in procfs::own_children() {
        if reg.contains(&pid) {
            continue;
        }
        if procfs::stat(pid).is_some_and(|s| !s.is_live()) {
            // It is our child and a zombie: its pid cannot be reused before we reap it.
            let _ = sys::reap_nohang(pid);
        }
    }
}

/// Whether every child of this process is a registered main child (so no
/// orphaned descendant of any job has been re-parented to us).
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
        let me = std::process::id() as i32;
        let all = procfs::all_stats();
        let by_pid: HashMap<i32, Stat> = all.iter().map(|s| (s.pid, *s)).collect();
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for s in &all {
            children.entry(s.ppid).or_default().push(s.pid);
        }
        let mut seeds: Vec<i32> = vec![self.main];
        seeds.extend(all.iter().filter(|s| s.pgrp == self.pgid).map(|s| s.pid));
        seeds.extend(
            self.known
                .iter()
                .filter(|(pid, st)| by_pid.get(pid).is_some_and(|s| s.start_time == **st))
                .map(|(pid, _)| *pid),
        );
        if deep {
            seeds.extend(procfs::pipe_holders(&self.pipe_inodes));
        }
        let mut members: BTreeSet<i32> = BTreeSet::new();
        while let Some(pid) = seeds.pop() {
            if pid == me || pid <= 1 || !by_pid.contains_key(&pid) || !members.insert(pid) {
                continue;
            }
            if let Some(kids) = children.get(&pid) {
                seeds.extend(kids.iter().copied());
            }
        }
        self.known = members
            .iter()
            .filter_map(|p| by_pid.get(p).map(|s| (*p, s.start_time)))
            .collect();
        members
            .into_iter()
            .filter(|p| by_pid.get(p).is_some_and(|s| s.is_live()))
            .collect()
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
