//! Job output shown to people is neutralised on the way out: nothing a job
//! prints can drive the reader's terminal (control characters and escape
//! sequences are shown escaped, `\x1b`, never sent raw) or format a Slack
//! message (its `&`, `<` and `>` are escaped, so no mention, link or
//! channel ping comes from a job). The log file keeps the bytes as the job
//! wrote them; only what is shown is neutralised.

use std::borrow::Cow;

/// `text` with every control character but tab shown as `\xNN` (and DEL,
/// and the C1 controls of Unicode).
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_control(c) {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn is_control(c: char) -> bool {
    c != '\t' && (c.is_control())
}

/// Text for Slack's mrkdwn: control characters escaped as by
/// [`printable`], and `&`, `<`, `>` as Slack asks.
pub fn slack(text: &str) -> String {
    printable(text)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Bytes of a log file for a terminal: each line made [`printable`].
pub fn printable_bytes(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&printable(line));
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_reach_no_terminal_and_no_slack_formatting() {
        assert_eq!(printable("plain\ttext"), "plain\ttext");
        assert_eq!(printable("\x1b[31mred\x1b[0m"), "\\x1b[31mred\\x1b[0m");
        assert_eq!(printable("bell\x07\r"), "bell\\x07\\x0d");
        assert_eq!(
            slack("<!channel> & <http://x|y>"),
            "&lt;!channel&gt; &amp; &lt;http://x|y&gt;"
        );
        assert_eq!(
            printable_bytes(b"a\x1b]0;title\x07\nb\n"),
            b"a\\x1b]0;title\\x07\nb\n"
        );
    }
}
