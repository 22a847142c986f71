//! Diagnostics: what is wrong, where (file, line, column, key) and how to fix it.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    /// The file the problem is in (empty for command-line input).
    pub file: PathBuf,
    /// 1-based line; 0 when the problem has no position (e.g. an unreadable file).
    pub line: usize,
    /// 1-based column in characters; 0 when there is no position.
    pub column: usize,
    /// Dotted key path, e.g. `items.rate` or `defaults.timeout`.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
    /// The source line the problem is on, when there is one to show.
    pub snippet: Option<String>,
    /// Number of characters to underline in `snippet`, starting at `column`.
    pub width: usize,
}

impl Diagnostic {
    /// A diagnostic without a position in a file.
    pub fn general(
        file: impl Into<PathBuf>,
        key: Option<&str>,
        message: impl Into<String>,
        help: Option<String>,
    ) -> Self {
        Diagnostic {
            file: file.into(),
            line: 0,
            column: 0,
            key: key.map(str::to_string),
            message: message.into(),
            help,
            snippet: None,
            width: 0,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.message)?;
        let gutter = if self.line == 0 {
            1
        } else {
            self.line.to_string().len()
        };
        let pad = " ".repeat(gutter + 1);
        let bar = " ".repeat(gutter + 2);
        let file = self.file.display().to_string();
        if self.line == 0 {
            match (&self.key, file.is_empty()) {
                (Some(key), false) => writeln!(f, "{pad}--> {file}, key `{key}`")?,
                (Some(key), true) => writeln!(f, "{pad}--> `{key}`")?,
                (None, false) => writeln!(f, "{pad}--> {file}")?,
                (None, true) => {}
            }
        } else {
            writeln!(f, "{pad}--> {file}:{}:{}", self.line, self.column)?;
            if let Some(src) = &self.snippet {
                writeln!(f, "{bar}|")?;
                let shown: String = src
                    .chars()
                    .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
                    .collect();
                writeln!(f, " {} | {}", self.line, shown.trim_end())?;
                let prefix: String = src
                    .chars()
                    .take(self.column.saturating_sub(1))
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                writeln!(f, "{bar}| {prefix}{}", "^".repeat(self.width.max(1)))?;
            }
        }
        if let Some(help) = &self.help {
            writeln!(f, "{bar}= help: {help}")?;
        }
        Ok(())
    }
}

/// All the problems found; `Display` renders every one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Errors(pub Vec<Diagnostic>);

impl std::error::Error for Errors {}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        if self.0.len() > 1 {
            writeln!(f)?;
            writeln!(f, "{} configuration errors", self.0.len())?;
        }
        Ok(())
    }
}

impl Errors {
    pub(crate) fn sorted(mut v: Vec<Diagnostic>) -> Errors {
        v.sort();
        v.dedup();
        Errors(v)
    }
}

/// A configuration file's path and text.
pub(crate) struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Source({})", self.path.display())
    }
}

impl Source {
    pub fn new(path: &Path, text: &str) -> Arc<Source> {
        Arc::new(Source {
            path: path.to_path_buf(),
            text: text.to_string(),
        })
    }
}

/// Where a value came from: a span in a source file, or the file as a whole
/// (`span: None`, reported at line 1, column 1).
#[derive(Clone, Debug)]
pub(crate) struct At {
    pub src: Arc<Source>,
    pub span: Option<Range<usize>>,
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl At {
    pub fn new(src: &Arc<Source>, span: Range<usize>) -> At {
        At {
            src: src.clone(),
            span: Some(span),
        }
    }

    pub fn file(src: &Arc<Source>) -> At {
        At {
            src: src.clone(),
            span: None,
        }
    }

    pub fn diag(
        &self,
        key: Option<&str>,
        message: impl Into<String>,
        help: Option<String>,
    ) -> Diagnostic {
        let mut d = Diagnostic::general(&self.src.path, key, message, help);
        if self.src.path.as_os_str().is_empty() {
            return d; // command-line input: no position
        }
        let Some(span) = &self.span else {
            d.line = 1;
            d.column = 1;
            return d;
        };
        let text = &self.src.text;
        let start = floor_boundary(text, span.start);
        let end = floor_boundary(text, span.end.max(span.start));
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        d.line = text[..start].matches('\n').count() + 1;
        d.column = text[line_start..start].chars().count() + 1;
        let line = text[line_start..line_end].trim_end_matches('\r');
        d.width = text[start..end.clamp(start, line_end)]
            .chars()
            .count()
            .max(1);
        d.snippet = Some(line.to_string());
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_like_rustc() {
        let src = Source::new(
            Path::new("/etc/batchguard/jobs/nightly.toml"),
            "a = 1\nb = 2\nc = 3\nd = 4\ne = 5\nf = 6\ntimout = \"45m\"\n",
        );
        let off = src.text.find("timout").unwrap();
        let d = At::new(&src, off..off + 6).diag(
            Some("timout"),
            "unknown key `timout`",
            Some("did you mean `timeout`?".into()),
        );
        assert_eq!((d.line, d.column, d.width), (7, 1, 6));
        assert_eq!(
            d.to_string(),
            "error: unknown key `timout`\n  --> /etc/batchguard/jobs/nightly.toml:7:1\n   |\n 7 | timout = \"45m\"\n   | ^^^^^^\n   = help: did you mean `timeout`?\n"
        );
    }

    #[test]
    fn weird_spans_do_not_panic() {
        let src = Source::new(Path::new("x.toml"), "é\r\nü = 'ß'");
        for s in 0..20 {
            for e in 0..20 {
                let d = At::new(&src, s..e).diag(None, "m", None);
                let _ = d.to_string();
                assert!(d.line >= 1 && d.column >= 1);
            }
        }
        let empty = Source::new(Path::new("y.toml"), "");
        let d = At::new(&empty, 5..9).diag(None, "m", None);
        assert_eq!((d.line, d.column), (1, 1));
    }
}
