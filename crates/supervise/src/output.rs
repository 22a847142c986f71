//! Reader threads: drain a child's stdout/stderr pipe, cut it into lines and hand
//! them to the waiting thread through a bounded channel plus a wake-up eventfd.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::thread::JoinHandle;

use crate::Stream;
use crate::sys::{self, EventFd};

/// Longest piece of a line delivered at once.
pub const MAX_LINE: usize = 64 * 1024;

pub(crate) enum Msg {
    Line(Stream, Vec<u8>),
    Eof,
}

struct Reader {
    stream: Stream,
    tx: SyncSender<Msg>,
    wake: Arc<EventFd>,
}

impl Reader {
    /// False when the receiving side is gone.
    fn send(&self, msg: Msg) -> bool {
        match self.tx.try_send(msg) {
            Ok(()) => true,
            Err(TrySendError::Full(msg)) => {
                // Make sure the consumer is awake before blocking on it.
                self.wake.signal();
                self.tx.send(msg).is_ok()
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Deliver complete lines from `pending` (and 64 KiB pieces of an overlong one).
    fn emit(&self, pending: &mut Vec<u8>) -> bool {
        let mut start = 0;
        loop {
            let rest = &pending[start..];
            if let Some(pos) = rest.iter().position(|&b| b == b'\n') {
                if pos > MAX_LINE {
                    if !self.send(Msg::Line(self.stream, rest[..MAX_LINE].to_vec())) {
                        return false;
                    }
                    start += MAX_LINE;
                    continue;
                }
                if !self.send(Msg::Line(self.stream, rest[..pos].to_vec())) {
                    return false;
                }
                start += pos + 1;
            } else if rest.len() > MAX_LINE {
                // Only cut when more than MAX_LINE bytes are pending, so a line of
                // exactly MAX_LINE bytes followed by '\n' stays one line.
                if !self.send(Msg::Line(self.stream, rest[..MAX_LINE].to_vec())) {
                    return false;
                }
                start += MAX_LINE;
            } else {
                break;
            }
        }
        pending.drain(..start);
        true
    }

    fn run(self, fd: OwnedFd, shutdown: Arc<EventFd>) {
        let raw = fd.as_raw_fd();
        let nonblocking = sys::set_nonblocking(raw).is_ok();
        let mut file = File::from(fd);
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; MAX_LINE];
        let mut alive = true;
        loop {
            let mut set = [sys::pollfd(raw), sys::pollfd(shutdown.raw())];
            if nonblocking && sys::poll(&mut set, None).is_err() {
                break;
            }
            let stopping = set[1].revents != 0;
            let mut eof = false;
            loop {
                match file.read(&mut buf) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        pending.extend_from_slice(&buf[..n]);
                        if !self.emit(&mut pending) {
                            alive = false;
                            break;
                        }
                        if !nonblocking {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        eof = true;
                        break;
                    }
                }
            }
            self.wake.signal();
            if !alive || eof || stopping {
                break;
            }
        }
        if alive {
            if !pending.is_empty() {
                let rest = std::mem::take(&mut pending);
                alive = self.send(Msg::Line(self.stream, rest));
            }
            if alive {
                self.send(Msg::Eof);
            }
        }
        self.wake.signal();
    }
}

pub(crate) fn start(
    stream: Stream,
    fd: OwnedFd,
    tx: SyncSender<Msg>,
    wake: Arc<EventFd>,
    shutdown: Arc<EventFd>,
) -> io::Result<JoinHandle<()>> {
    let name = match stream {
        Stream::Stdout => "bg-stdout",
        Stream::Stderr => "bg-stderr",
    };
    let reader = Reader { stream, tx, wake };
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || reader.run(fd, shutdown))
}
