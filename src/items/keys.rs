//! Item keys: read from a source (a command's stdout or a file), validated
//! before any work starts, duplicates collapsed in first-seen order.
//!
//! A key is one line: valid UTF-8, 1 to 1024 bytes, no NUL. The line ending
//! is `\n`; a `\r` before it is part of the line ending too (files written on
//! Windows). An empty line is an error like any other bad key: a source that
//! prints blank lines is broken, and guessing would hide it. A final line
//! without `\n` is a key.
//!
//! Keys live in one string buffer with a hash table of their indexes, so a
//! million keys cost three allocations, not three million.

use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::BuildHasher;

pub const MAX_KEY_BYTES: usize = 1024;

/// Why a source's output is not a list of keys.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
#[error("line {line}: {reason}")]
pub struct KeyError {
    pub line: usize,
    pub reason: String,
}

/// Validated, de-duplicated keys in first-seen order.
#[derive(Default)]
pub struct Keys {
    buf: String,
    spans: Vec<(u32, u32)>,
    table: HashTable<u32>,
    hasher: DefaultHashBuilder,
    /// Lines read, duplicates included.
    pub lines: usize,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("keys", &self.spans.len())
            .field("lines", &self.lines)
            .finish()
    }
}

fn span_str<'a>(buf: &'a str, spans: &[(u32, u32)], i: u32) -> &'a str {
    let (start, len) = spans[i as usize];
    &buf[start as usize..(start + len) as usize]
}

impl Keys {
    pub fn len(&self) -> usize {
        self.spans.len()
    }
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
    pub fn get(&self, i: usize) -> &str {
        span_str(&self.buf, &self.spans, i as u32)
    }
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.spans.len() as u32).map(|i| span_str(&self.buf, &self.spans, i))
    }
    /// The index of `key`, if it is one of the keys.
    /// Keys already validated elsewhere (claimed from a queue), duplicates
    /// collapsed.
    pub fn from_strings(keys: &[String]) -> Keys {
        let mut k = Keys::default();
        for key in keys {
            k.lines += 1;
            k.insert(key);
        }
        k
    }

    pub fn find(&self, key: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        self.table
            .find(hash, |&i| span_str(&self.buf, &self.spans, i) == key)
            .copied()
    }

    /// Add a validated key; `false` if it was already there.
    fn insert(&mut self, key: &str) -> bool {
        let hash = self.hasher.hash_one(key);
        let Keys {
            buf,
            spans,
            table,
            hasher,
            ..
        } = self;
        if table
            .find(hash, |&i| span_str(buf, spans, i) == key)
            .is_some()
        {
            return false;
        }
        let idx = spans.len() as u32;
        spans.push((buf.len() as u32, key.len() as u32));
        buf.push_str(key);
        table.insert_unique(hash, idx, |&i| hasher.hash_one(span_str(buf, spans, i)));
        true
    }
}

/// Check one line (without its `\n`); returns the key.
pub fn check_line(raw: &[u8], line: usize) -> Result<&str, KeyError> {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let err = |reason: String| KeyError { line, reason };
    if raw.is_empty() {
        return Err(err("empty key (blank line)".into()));
    }
    if raw.len() > MAX_KEY_BYTES {
        return Err(err(format!(
            "key is {} bytes long; keys are at most {MAX_KEY_BYTES} bytes",
            raw.len()
        )));
    }
    if let Some(pos) = memchr0(raw) {
        return Err(err(format!("key contains a NUL byte at byte {}", pos + 1)));
    }
    std::str::from_utf8(raw).map_err(|e| {
        err(format!(
            "key is not valid UTF-8 (bad byte at {})",
            e.valid_up_to() + 1
        ))
    })
}

fn memchr0(raw: &[u8]) -> Option<usize> {
    raw.iter().position(|&b| b == 0)
}

/// Collects lines into [`Keys`], stopping at the first bad one, or once
/// more lines than the limit came (`items.max_keys`, SPEC §11): what is
/// held stays bounded whatever the source does.
pub struct KeyCollector {
    keys: Keys,
    error: Option<KeyError>,
    limit: usize,
}

impl Default for KeyCollector {
    fn default() -> KeyCollector {
        KeyCollector::with_limit(usize::MAX)
    }
}

impl KeyCollector {
    pub fn with_limit(limit: usize) -> KeyCollector {
        KeyCollector {
            keys: Keys::default(),
            error: None,
            limit,
        }
    }

    /// Has collecting stopped (a bad key, or too many)?
    pub fn stopped(&self) -> bool {
        self.error.is_some()
    }

    pub fn push(&mut self, raw: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if self.keys.lines >= self.limit {
            self.error = Some(KeyError {
                line: self.keys.lines + 1,
                reason: format!(
                    "more than items.max_keys = {} lines: the source is stopped (raise max_keys if it is right)",
                    self.limit
                ),
            });
            return;
        }
        self.keys.lines += 1;
        match check_line(raw, self.keys.lines) {
            Ok(key) => {
                self.keys.insert(key);
            }
            Err(e) => self.error = Some(e),
        }
    }

    pub fn finish(self) -> Result<Keys, KeyError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.keys),
        }
    }
}

/// Split a whole buffer (a `source_file`) into keys, at most `limit`.
pub fn parse(bytes: &[u8], limit: usize) -> Result<Keys, KeyError> {
    let mut c = KeyCollector::with_limit(limit);
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if !body.is_empty() {
        for line in body.split(|&b| b == b'\n') {
            c.push(line);
            if c.error.is_some() {
                break;
            }
        }
    }
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_keys_collapse_duplicates_in_order() {
        let k = parse(b"b\na\nb\r\nc", usize::MAX).unwrap();
        assert_eq!(k.iter().collect::<Vec<_>>(), ["b", "a", "c"]);
        assert_eq!(k.lines, 4);
        assert_eq!(k.find("a"), Some(1));
        assert_eq!(k.find("zz"), None);
        assert!(parse(b"", usize::MAX).unwrap().is_empty());
    }

    #[test]
    fn bad_keys_name_the_line() {
        assert_eq!(parse(b"a\n\nb", usize::MAX).unwrap_err().line, 2);
        let long = vec![b'x'; 1025];
        let e = parse(&[b"ok\n".as_slice(), &long].concat(), usize::MAX).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.reason.contains("1025 bytes"));
        assert!(
            parse(b"a\0b", usize::MAX)
                .unwrap_err()
                .reason
                .contains("NUL")
        );
        assert!(
            parse(b"ok\n\xff\xfe", usize::MAX)
                .unwrap_err()
                .reason
                .contains("UTF-8")
        );
        assert!(parse(&vec![b'x'; 1024], usize::MAX).is_ok());
    }

    #[test]
    fn many_keys_round_trip() {
        let text: String = (0..10_000).map(|i| format!("k{i}\n")).collect();
        let k = parse(text.as_bytes(), usize::MAX).unwrap();
        assert_eq!(k.len(), 10_000);
        for i in (0..10_000).step_by(997) {
            assert_eq!(k.find(&format!("k{i}")), Some(i as u32));
            assert_eq!(k.get(i), format!("k{i}"));
        }
    }

    #[test]
    fn a_source_over_max_keys_stops_with_a_clear_error() {
        let e = parse(b"a\nb\nc\n", 2).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.reason.contains("items.max_keys = 2"), "{e:?}");
        let mut c = KeyCollector::with_limit(1);
        c.push(b"x");
        assert!(!c.stopped());
        c.push(b"x"); // a repeated key still counts as a line
        assert!(c.stopped());
    }
}
