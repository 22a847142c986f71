//! Secret redaction: every value from a job's `env_file` and every variable
//! named in `secrets` is replaced by `***` in logs, records and messages;
//! [`redact_url`] takes the secrets out of a URL before it is shown.
//!
//! A value shorter than [`MIN_SECRET_LEN`] is not redacted on its own
//! (`WORKERS=4` would turn every "4" into `***`, "exit code 4" included);
//! `check` G14 warns about such short secrets. A secret is also found in
//! its escaped forms (as Rust's and JSON's `{:?}` show it, with `\"` and
//! `\\`), and [`Redactor::max_len`] lets the log hold back the end of a
//! cut line so a secret split by the line cut is still found.

use std::borrow::Cow;

/// Values shorter than this are not treated as secrets on their own.
pub const MIN_SECRET_LEN: usize = 4;

/// A value too short to be redacted on its own (see [`MIN_SECRET_LEN`]).
pub fn too_short(value: &str) -> bool {
    value.chars().count() < MIN_SECRET_LEN
}

#[derive(Clone, Debug, Default)]
pub struct Redactor {
    /// Longest first, so a secret that contains another is replaced whole.
    secrets: Vec<String>,
}

impl Redactor {
    pub fn new(values: impl IntoIterator<Item = String>) -> Redactor {
        let mut secrets: Vec<String> = Vec::new();
        for v in values {
            if too_short(&v) {
                continue;
            }
            // The escaped form `{:?}` gives (quotes and backslashes escaped).
            let escaped = format!("{v:?}");
            let escaped = &escaped[1..escaped.len() - 1];
            if escaped != v {
                secrets.push(escaped.to_string());
            }
            secrets.push(v);
        }
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Redactor { secrets }
    }

    /// The longest secret, in bytes (0 without secrets).
    pub fn max_len(&self) -> usize {
        self.secrets.first().map_or(0, String::len)
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = Cow::Owned(out.replace(s.as_str(), "***"));
            }
        }
        out
    }
}

/// Query keys whose values are secrets (matched case-insensitively, as
/// part of the key: `sslpassword`, `access_token`, `client_secret`).
const SECRET_KEYS: &[&str] = &["password", "secret", "token"];

/// `url` as it may appear in messages and logs: a userinfo password becomes
/// `***` (`user:***@host`), as do the values of `password`, `secret` and
/// `token` query keys. For `http(s)` URLs the path and query are dropped
/// whole (`https://host/…`): a webhook's, Slack's or a ping URL's path is
/// itself the secret.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let Some(scheme_end) = base.find("://").map(|i| i + 3) else {
        return redact_query(base, query);
    };
    let (authority, path) = base[scheme_end..]
        .find('/')
        .map_or((&base[scheme_end..], ""), |i| {
            base[scheme_end..].split_at(i)
        });
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_string(),
    };
    let scheme = &base[..scheme_end];
    let http = scheme.eq_ignore_ascii_case("http://") || scheme.eq_ignore_ascii_case("https://");
    match (http, path.is_empty() && query.is_none()) {
        (true, false) => format!("{scheme}{authority}/…"),
        _ => redact_query(&format!("{scheme}{authority}{path}"), query),
    }
}

/// `base?query` with the secret query values replaced by `***`.
fn redact_query(base: &str, query: Option<&str>) -> String {
    let Some(query) = query else {
        return base.to_string();
    };
    let parts: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if is_secret_key(k) => format!("{k}=***"),
            _ => p.to_string(),
        })
        .collect();
    format!("{base}?{}", parts.join("&"))
}

fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    SECRET_KEYS.iter().any(|s| k.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_secrets() {
        for (url, shown) in [
            (
                "postgres://bg:s3cr%40t@db.example:5432/state?schema=x",
                "postgres://bg:***@db.example:5432/state?schema=x",
            ),
            (
                "postgresql://db/state?user=bg&password=hunter2&sslmode=disable",
                "postgresql://db/state?user=bg&password=***&sslmode=disable",
            ),
            (
                "postgres://postgres@127.0.0.1/test",
                "postgres://postgres@127.0.0.1/test",
            ),
            (
                "postgres://h/db?sslpassword=a&Access_Token=b&client_secret=c",
                "postgres://h/db?sslpassword=***&Access_Token=***&client_secret=***",
            ),
            (
                "https://hooks.slack.com/services/T/B/x",
                "https://hooks.slack.com/…",
            ),
            (
                "https://u:pw@hc-ping.com/uuid/fail",
                "https://u:***@hc-ping.com/…",
            ),
            ("http://127.0.0.1:9000?token=abc", "http://127.0.0.1:9000/…"),
            ("https://example.com", "https://example.com"),
            (
                "sqlite:/var/lib/batchguard/state.db",
                "sqlite:/var/lib/batchguard/state.db",
            ),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn longest_secret_wins_and_all_occurrences_go() {
        let r = Redactor::new(["abcd".to_string(), "abcdefg".to_string(), String::new()]);
        assert_eq!(r.redact("x abcdefg y abcd z abcdefg"), "x *** y *** z ***");
        assert_eq!(r.redact("nothing here"), "nothing here");
    }

    #[test]
    fn short_values_are_not_secrets_and_escaped_forms_are() {
        let r = Redactor::new(["4".to_string(), "pa\"ss\\word".to_string()]);
        assert_eq!(r.redact("exit code 4"), "exit code 4");
        assert_eq!(
            r.redact("command: [\"x\", \"pa\\\"ss\\\\word\"]"),
            "command: [\"x\", \"***\"]"
        );
        assert_eq!(r.redact("raw pa\"ss\\word"), "raw ***");
        assert_eq!(r.max_len(), "pa\\\"ss\\\\word".len());
    }
}
