//! A job's `env_file`, read the one way both the runner and `check` use:
//! dotenvy's parser (quotes, `export`, comments, multi-line values,
//! `$VAR` substitution), with the line each variable starts on.
//!
//! The values are secrets and cron mails stderr, so no error here ever
//! contains a line's text: errors name the file and the line number only.

use std::path::{Path, PathBuf};

/// One variable of an env file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Var {
    /// 1-based line the assignment starts on.
    pub line: usize,
    pub name: String,
    pub value: String,
}

/// Why an env file could not be read. Never carries the file's content.
#[derive(thiserror::Error, Debug)]
pub enum DotenvError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{}:{line}: not a valid dotenv line (expected NAME=value; quote values that contain spaces or `#`, and close every quote); the line is not shown because it may hold a secret",
        path.display()
    )]
    Syntax { path: PathBuf, line: usize },
}

/// Reads the env file at `path`.
pub fn read(path: &Path) -> Result<Vec<Var>, DotenvError> {
    let text = std::fs::read_to_string(path).map_err(|source| DotenvError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|line| DotenvError::Syntax {
        path: path.to_path_buf(),
        line,
    })
}

/// Parses env-file text; `Err(line)` is the line where the first bad
/// assignment starts.
pub fn parse(text: &str) -> Result<Vec<Var>, usize> {
    let (pairs, failed) = parse_pairs(text);
    let lines = start_lines(text, pairs.len() + usize::from(failed));
    if failed {
        return Err(lines[pairs.len()]);
    }
    Ok(pairs
        .into_iter()
        .zip(lines)
        .map(|((name, value), line)| Var { line, name, value })
        .collect())
}

/// dotenvy's variables, in order, and whether it stopped at an error.
fn parse_pairs(text: &str) -> (Vec<(String, String)>, bool) {
    let mut pairs = Vec::new();
    for item in dotenvy::from_read_iter(text.as_bytes()) {
        match item {
            Ok(pair) => pairs.push(pair),
            // The error holds the line's text: drop it.
            Err(_) => return (pairs, true),
        }
    }
    (pairs, false)
}

/// The number of variables dotenvy reads from the first `lines` lines.
fn count_in_prefix(text: &str, lines: usize) -> usize {
    let end = text
        .match_indices('\n')
        .nth(lines.saturating_sub(1))
        .map_or(text.len(), |(i, _)| i + 1);
    parse_pairs(&text[..end]).0.len()
}

/// The line each of the first `n` assignments starts on: the first line
/// after the previous assignment ended that is neither blank nor a comment.
/// An assignment ends on the first line whose prefix yields it (values may
/// span lines inside quotes). Env files are small; this reparses prefixes.
fn start_lines(text: &str, n: usize) -> Vec<usize> {
    let physical: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(n);
    let mut next = 1; // first line not yet consumed
    for k in 0..n {
        let start = (next..=physical.len())
            .find(|&l| {
                let t = physical[l - 1].trim_start();
                !(t.is_empty() || t.starts_with('#'))
            })
            .unwrap_or(next);
        out.push(start);
        let end = (start..=physical.len())
            .find(|&l| count_in_prefix(text, l) > k)
            .unwrap_or(physical.len());
        next = end + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(text: &str) -> Vec<(usize, String, String)> {
        parse(text)
            .unwrap()
            .into_iter()
            .map(|v| (v.line, v.name, v.value))
            .collect()
    }

    #[test]
    fn reads_what_the_runner_reads_with_lines() {
        let text = "# c\nexport A=1\nB = \"two words\"\nC='x#y'\nD=v # comment\n\nM=\"one\ntwo\"\nS=${A}x\n";
        let v = |l: usize, n: &str, x: &str| (l, n.to_string(), x.to_string());
        assert_eq!(
            vars(text),
            [
                v(2, "A", "1"),
                v(3, "B", "two words"),
                v(4, "C", "x#y"),
                v(5, "D", "v"),
                v(7, "M", "one\ntwo"),
                v(9, "S", "1x"),
            ]
        );
    }

    #[test]
    fn errors_name_the_line_but_never_its_text() {
        assert_eq!(parse("A=1\n\n# x\nbad line hunter2\nB=2\n"), Err(4));
        assert_eq!(parse("A=1\nB=\"unclosed hunter2\n"), Err(2));
        let dir = std::env::temp_dir().join(format!("bg-dotenv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("job.env");
        std::fs::write(&p, "A=1\nPASSWORD hunter2\n").unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains(&format!("{}:2:", p.display())), "{e}");
        assert!(!e.contains("hunter2") && !e.contains("PASSWORD"), "{e}");
        let e = read(&dir.join("missing.env")).unwrap_err().to_string();
        assert!(e.contains("missing.env"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
