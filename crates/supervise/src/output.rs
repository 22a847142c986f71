//! A child's stdout/stderr pipes, read by the waiting thread itself: the pipes are
//! non-blocking and sit in `Child::wait`'s `poll` set next to the pidfd and the
//! wake-up eventfd. Each pass reads what is there (bounded, so that a very chatty
//! child cannot starve the timeout / stop logic), cuts it into lines (64 KiB max
//! per piece) and hands them to the caller's callback right away.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::Stream;
use crate::sys;

/// Longest piece of a line delivered at once.
pub const MAX_LINE: usize = 64 * 1024;

/// Bytes read from one pipe in one pass of the wait loop before the loop gets
/// to look at its deadlines again (the pipe stays readable, so `poll` returns at
/// once and the next pass continues).
const PASS_BUDGET: usize = 1 << 20;

/// Bytes read from a pipe in the final drain, after the tree is gone (a
/// daemonised writer may still hold the pipe and keep writing).
const FINAL_BUDGET: usize = 4 << 20;

#[derive(Debug)]
struct Pipe {
    stream: Stream,
    fd: OwnedFd,
    /// Bytes received but not delivered yet (the start of an unfinished line).
    pending: Vec<u8>,
}

/// The open output pipes of one child.
#[derive(Debug, Default)]
pub(crate) struct Output {
    pipes: Vec<Pipe>,
}

impl Output {
    /// Take over the pipes (made non-blocking).
    pub(crate) fn new(pipes: impl IntoIterator<Item = (Stream, OwnedFd)>) -> io::Result<Output> {
        let mut out = Output::default();
        for (stream, fd) in pipes {
            sys::set_nonblocking(fd.as_raw_fd())?;
            out.pipes.push(Pipe {
                stream,
                fd,
                pending: Vec::new(),
            });
        }
        Ok(out)
    }

    /// True once every pipe reached EOF (or there were none).
    pub(crate) fn all_closed(&self) -> bool {
        self.pipes.is_empty()
    }

    /// The descriptors still open, for `poll`.
    pub(crate) fn pollfds(&self) -> impl Iterator<Item = libc::pollfd> + '_ {
        self.pipes.iter().map(|p| sys::pollfd(p.fd.as_raw_fd()))
    }

    /// Read what every open pipe has (up to `PASS_BUDGET` each), deliver the complete
    /// lines, and close the pipes that reached EOF (delivering their last partial line).
    pub(crate) fn pump(&mut self, on_line: &mut impl FnMut(Stream, &[u8])) {
        self.read_all(on_line, PASS_BUDGET);
    }

    /// The tree is gone: read what is still buffered in the pipes without waiting,
    /// deliver every partial line and close everything.
    pub(crate) fn finish(&mut self, on_line: &mut impl FnMut(Stream, &[u8])) {
        self.read_all(on_line, FINAL_BUDGET);
        for p in self.pipes.drain(..) {
            if !p.pending.is_empty() {
                on_line(p.stream, &p.pending);
            }
        }
    }

    fn read_all(&mut self, on_line: &mut impl FnMut(Stream, &[u8]), budget: usize) {
        self.pipes.retain_mut(|p| !p.read(on_line, budget));
    }
}

impl Pipe {
    /// Read until the pipe is empty, at EOF, or `budget` bytes were read. Returns
    /// true at EOF (or on a read error), after delivering the last partial line.
    fn read(&mut self, on_line: &mut impl FnMut(Stream, &[u8]), budget: usize) -> bool {
        let mut total = 0;
        loop {
            if total >= budget {
                return false;
            }
            match sys::read_append(self.fd.as_raw_fd(), &mut self.pending, MAX_LINE) {
                Ok(0) => break,
                Ok(n) => {
                    total += n;
                    emit(self.stream, &mut self.pending, on_line);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => break,
            }
        }
        if !self.pending.is_empty() {
            on_line(self.stream, &self.pending);
            self.pending = Vec::new();
        }
        true
    }
}

/// Deliver complete lines from `pending` (and 64 KiB pieces of an overlong one),
/// keeping the unfinished rest.
fn emit(stream: Stream, pending: &mut Vec<u8>, on_line: &mut impl FnMut(Stream, &[u8])) {
    let mut start = 0;
    loop {
        let rest = &pending[start..];
        if let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            if pos > MAX_LINE {
                on_line(stream, &rest[..MAX_LINE]);
                start += MAX_LINE;
                continue;
            }
            on_line(stream, &rest[..pos]);
            start += pos + 1;
        } else if rest.len() > MAX_LINE {
            // Only cut when more than MAX_LINE bytes are pending, so a line of
            // exactly MAX_LINE bytes followed by '\n' stays one line.
            on_line(stream, &rest[..MAX_LINE]);
            start += MAX_LINE;
        } else {
            break;
        }
    }
    pending.drain(..start);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Vec<u8>) {
        let mut pending = Vec::new();
        let mut out = Vec::new();
        for c in chunks {
            pending.extend_from_slice(c);
            emit(Stream::Stdout, &mut pending, &mut |_, l| {
                out.push(l.to_vec())
            });
        }
        (out, pending)
    }

    #[test]
    fn splits_lines_across_chunks() {
        let (out, rest) = lines(&[b"ab\ncd", b"e\n\nf"]);
        assert_eq!(out, [b"ab".to_vec(), b"cde".to_vec(), Vec::new()]);
        assert_eq!(rest, b"f");
    }

    #[test]
    fn cuts_overlong_lines() {
        let long = vec![b'a'; MAX_LINE + 10];
        let (out, rest) = lines(&[&long, b"\n"]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), MAX_LINE);
        assert_eq!(out[1].len(), 10);
        assert!(rest.is_empty());
        let exact = vec![b'b'; MAX_LINE];
        let (out, _) = lines(&[&exact, b"\n"]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), MAX_LINE);
    }
}
