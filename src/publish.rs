//! `batchguard publish SRC DEST`: rename a result into place only while the
//! run still holds the newest fencing token of its lock (SPEC §4).
//!
//! The job is untrusted and holds no store credentials, so it does not
//! touch the store: its `publish` asks the run's runner over a Unix socket
//! the runner made for this run (`BATCHGUARD_PUBLISH`, the socket owned by
//! the job's user, mode 0600). The runner checks the token and performs
//! the rename inside the store's fence check ([`crate::store::RunStore::
//! while_fence_current`]), so the token cannot move on in between, and it
//! renames with the job's own uid, gid and groups (a child process), so a
//! job can never make the root runner rename anything it could not itself.
//! The same holds across hosts with PostgreSQL: the fence is checked in the
//! shared store.

use crate::error::{Error, Result};
use crate::store::Store;
use batchguard_supervise::RunAs;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The variable naming the run's publish socket.
pub const SOCKET_VAR: &str = "BATCHGUARD_PUBLISH";

#[derive(Serialize, Deserialize, Debug)]
struct Request {
    src: PathBuf,
    dest: PathBuf,
}

#[derive(Serialize, Deserialize, Debug, Default)]
struct Reply {
    ok: bool,
    /// The token moved on: `(lock, fence, newest)`.
    refused: Option<(String, i64, Option<i64>)>,
    error: Option<String>,
}

/// The job's side: ask the runner to publish.
pub fn publish(src: &Path, dest: &Path) -> Result<()> {
    let socket = run_socket().ok_or_else(|| {
        Error::Usage(
            "publish must be called from inside a batchguard run (neither BATCHGUARD_RUN_ID nor BATCHGUARD_PUBLISH is set)"
                .into(),
        )
    })?;
    let abs = |p: &Path| std::path::absolute(p).map_err(|e| Error::io("resolve", p, e));
    let req = Request {
        src: abs(src)?,
        dest: abs(dest)?,
    };
    let reply =
        ask(Path::new(&socket), &req).map_err(|e| Error::io("ask the runner at", &socket, e))?;
    match reply {
        Reply { ok: true, .. } => Ok(()),
        Reply {
            refused: Some((lock, fence, newest)),
            ..
        } => Err(Error::Fenced {
            current: newest
                .map(|f| format!("newest is {f}"))
                .unwrap_or_else(|| "no token".into()),
            lock,
            fence,
            dest: req.dest,
        }),
        Reply { error, .. } => Err(Error::io(
            "rename onto",
            &req.dest,
            std::io::Error::other(error.unwrap_or_else(|| "refused".into())),
        )),
    }
}

/// The run's socket: `BATCHGUARD_PUBLISH`, else found from the run id
/// (SPEC §4 names only `BATCHGUARD_RUN_ID`; a wrapper that cleans the
/// environment keeps that one more often) in the directories the runner
/// binds in, whoever it runs as.
fn run_socket() -> Option<std::ffi::OsString> {
    if let Some(s) = std::env::var_os(SOCKET_VAR) {
        return Some(s);
    }
    let run_id = std::env::var("BATCHGUARD_RUN_ID").ok()?;
    if run_id.is_empty() || !run_id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    let file = format!("{run_id}.sock");
    // The runner is root, or the job's own user when started as it.
    let me = nix::unistd::geteuid().as_raw();
    [0, me]
        .into_iter()
        .flat_map(socket_dirs)
        .map(|d| d.join(&file))
        .find(|p| p.exists())
        .map(PathBuf::into_os_string)
}

fn ask(socket: &Path, req: &Request) -> std::io::Result<Reply> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    serde_json::from_str(&answer).map_err(std::io::Error::other)
}

/// The runner's side: one socket per run, served until the run ends.
pub struct Service {
    path: PathBuf,
    listener: UnixListener,
    /// [`Service::stop`] writes a byte to the first; `serve_for` waits on
    /// the second, and the byte, never read, keeps it readable from then on.
    wake: (UnixStream, UnixStream),
}

/// What the service checks a request against.
pub struct Grant<'a> {
    pub store: &'a dyn Store,
    pub lock: &'a str,
    pub fence: i64,
    pub run_as: Option<&'a RunAs>,
}

/// The directories the sockets of a runner running as `uid` live in, most
/// preferred first.
fn socket_dirs(uid: u32) -> [PathBuf; 2] {
    [
        PathBuf::from("/run/batchguard/publish"),
        std::env::temp_dir().join(format!("batchguard-publish-{uid}")),
    ]
}

impl Service {
    /// Bind the run's socket, owned by the job's user (mode 0600) in a
    /// directory only its owner can list (0711).
    pub fn bind(run_id: &str, run_as: Option<&RunAs>) -> std::io::Result<Service> {
        let mut last = None;
        for dir in socket_dirs(nix::unistd::geteuid().as_raw()) {
            match Service::bind_in(&dir, run_id, run_as) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no socket directory")))
    }

    fn bind_in(dir: &Path, run_id: &str, run_as: Option<&RunAs>) -> std::io::Result<Service> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(dir)?;
        let meta = std::fs::symlink_metadata(dir)?;
        if !meta.is_dir()
            || std::os::unix::fs::MetadataExt::uid(&meta) != nix::unistd::geteuid().as_raw()
        {
            return Err(std::io::Error::other("socket directory is not ours"));
        }
        let path = dir.join(format!("{run_id}.sock"));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        if let Some(u) = run_as {
            std::os::unix::fs::chown(&path, Some(u.uid), Some(u.gid))?;
        }
        Ok(Service {
            path,
            listener,
            wake: UnixStream::pair()?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answer requests until [`Service::stop`].
    pub fn serve(&self, grant: &Grant<'_>) {
        while self.serve_for(grant, Duration::from_secs(3600)) {}
    }

    /// Answer the requests that arrive within `period`; `false` once
    /// [`Service::stop`] was called. The run's heartbeat thread serves the
    /// socket between two heartbeats this way, so a run needs no thread of
    /// its own for it (a thread costs a `/bin/true` run about 0.1 ms). A
    /// request is answered within its 10 s read timeout, so a job that
    /// connects and says nothing delays the next heartbeat by at most that.
    pub fn serve_for(&self, grant: &Grant<'_>, period: Duration) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let deadline = std::time::Instant::now() + period;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let mut fds = [
                PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.wake.1.as_fd(), PollFlags::POLLIN),
            ];
            // Rounded up, so that a wait never spins; 0 once the period is over.
            let ms = left.as_micros().div_ceil(1000);
            let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "publish socket failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            if ready(&fds[1]) {
                return false;
            }
            // The period is over: back to the heartbeat, even with a
            // connection waiting (it is answered on the next call).
            if left.is_zero() {
                return true;
            }
            if ready(&fds[0]) {
                match self.listener.accept() {
                    Ok((stream, _)) => {
                        if let Err(e) = self.answer(stream, grant) {
                            tracing::warn!(error = %e, "publish request failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "publish socket failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        }
    }

    pub fn stop(&self) {
        // Wakes the waiting poll, and every later one.
        if let Err(e) = (&self.wake.0).write_all(b"x") {
            tracing::warn!(error = %e, "cannot stop the publish service");
        }
    }

    fn answer(&self, stream: UnixStream, grant: &Grant<'_>) -> std::io::Result<()> {
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut line = Vec::new();
        BufReader::new(std::io::Read::take(stream.try_clone()?, 64 * 1024))
            .read_until(b'\n', &mut line)?;
        let reply = match serde_json::from_slice::<Request>(&line) {
            Ok(req) => fenced_rename(grant, &req),
            Err(e) => Reply {
                error: Some(format!("bad request: {e}")),
                ..Reply::default()
            },
        };
        let mut out = serde_json::to_vec(&reply)?;
        out.push(b'\n');
        (&stream).write_all(&out)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The rename, with the job's permissions, only while the token is the
/// newest (checked and held by the store for the rename's duration).
fn fenced_rename(grant: &Grant<'_>, req: &Request) -> Reply {
    let mut rename = || batchguard_supervise::rename_as(grant.run_as, &req.src, &req.dest);
    match grant
        .store
        .while_fence_current(grant.lock, grant.fence, &mut rename)
    {
        Ok(Ok(true)) => Reply {
            ok: true,
            ..Reply::default()
        },
        Ok(Ok(false)) => Reply {
            refused: Some((
                grant.lock.to_string(),
                grant.fence,
                grant.store.current_fence(grant.lock).ok().flatten(),
            )),
            ..Reply::default()
        },
        Ok(Err(e)) => Reply {
            error: Some(e.to_string()),
            ..Reply::default()
        },
        Err(e) => Reply {
            error: Some(format!("the state store cannot check the token: {e}")),
            ..Reply::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Between two heartbeats the socket is served for the period asked,
    /// and a stop ends the wait at once (the run's end does not wait for
    /// the next heartbeat).
    #[test]
    fn serving_lasts_the_period_and_ends_at_a_stop() {
        let dir = tempfile::tempdir().unwrap();
        let service = Service::bind_in(dir.path(), "run", None).unwrap();
        let db = dir.path().join("s.db");
        let store =
            crate::store::sqlite::SqliteStore::open(&format!("sqlite:{}", db.display()), &db)
                .unwrap();
        let grant = Grant {
            store: &store,
            lock: "l",
            fence: 1,
            run_as: None,
        };
        let t = std::time::Instant::now();
        assert!(service.serve_for(&grant, Duration::from_millis(50)));
        assert!(t.elapsed() >= Duration::from_millis(50));
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                service.stop();
            });
            let t = std::time::Instant::now();
            assert!(!service.serve_for(&grant, Duration::from_secs(60)));
            assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
        });
        // Stopped stays stopped.
        let t = std::time::Instant::now();
        assert!(!service.serve_for(&grant, Duration::from_secs(60)));
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    }
}
