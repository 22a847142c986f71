//! Item keys: read from a source (a command's stdout or a file), validated
//! before any work starts, duplicates collapsed in first-seen order.
//!
//! A key is one line: valid UTF-8, 1 to 1024 bytes, no NUL. The line ending
//! is `\n`; a `\r` before it is part of the line ending too (files written on
//! Windows). An empty line is an error like any other bad key: a source that
//! prints blank lines is broken, and guessing would hide it. A final line
//! without `\n` is a key.

use std::collections::HashMap;

pub const MAX_KEY_BYTES: usize = 1024;

/// Why a source's output is not a list of keys.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
#[error("line {line}: {reason}")]
pub struct KeyError {
    pub line: usize,
    pub reason: String,
}

/// Validated, de-duplicated keys in first-seen order.
#[derive(Debug, Default)]
pub struct Keys {
    keys: Vec<Box<str>>,
    /// Lines read, duplicates included.
    pub lines: usize,
}

impl Keys {
    pub fn len(&self) -> usize {
        self.keys.len()
    }
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
    pub fn get(&self, i: usize) -> &str {
        &self.keys[i]
    }
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| &**k)
    }
    /// Map from key to its index (borrowing the keys).
    pub fn index(&self) -> HashMap<&str, u32> {
        let mut map = HashMap::with_capacity(self.keys.len());
        for (i, k) in self.keys.iter().enumerate() {
            map.insert(&**k, i as u32);
        }
        map
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
    if let Some(pos) = raw.iter().position(|&b| b == 0) {
        return Err(err(format!("key contains a NUL byte at byte {}", pos + 1)));
    }
    std::str::from_utf8(raw).map_err(|e| {
        err(format!(
            "key is not valid UTF-8 (bad byte at {})",
            e.valid_up_to() + 1
        ))
    })
}

/// Collects lines into [`Keys`], stopping at the first bad one.
#[derive(Default)]
pub struct KeyCollector {
    keys: Keys,
    seen: std::collections::HashSet<Box<str>>,
    error: Option<KeyError>,
}

impl KeyCollector {
    pub fn push(&mut self, raw: &[u8]) {
        if self.error.is_some() {
            return;
        }
        self.keys.lines += 1;
        match check_line(raw, self.keys.lines) {
            Ok(key) => {
                if !self.seen.contains(key) {
                    let boxed: Box<str> = key.into();
                    self.seen.insert(boxed.clone());
                    self.keys.keys.push(boxed);
                }
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

/// Split a whole buffer (a `source_file`) into keys.
pub fn parse(bytes: &[u8]) -> Result<Keys, KeyError> {
    let mut c = KeyCollector::default();
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
        let k = parse(b"b\na\nb\r\nc").unwrap();
        assert_eq!(k.iter().collect::<Vec<_>>(), ["b", "a", "c"]);
        assert_eq!(k.lines, 4);
        assert!(parse(b"").unwrap().is_empty());
    }

    #[test]
    fn bad_keys_name_the_line() {
        assert_eq!(parse(b"a\n\nb").unwrap_err().line, 2);
        let long = vec![b'x'; 1025];
        let e = parse(&[b"ok\n".as_slice(), &long].concat()).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.reason.contains("1025 bytes"));
        assert!(parse(b"a\0b").unwrap_err().reason.contains("NUL"));
        assert!(parse(b"ok\n\xff\xfe").unwrap_err().reason.contains("UTF-8"));
        assert!(parse(&vec![b'x'; 1024]).is_ok());
    }
}
