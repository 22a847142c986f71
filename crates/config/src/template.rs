//! `{name}` templates used in commands, items and runbooks.
//!
//! `{name}` is replaced by a value; `{{` and `}}` are literal braces. A
//! brace that is neither (an unclosed `{`, a lone `}`, an empty or malformed
//! name) is an error. Substitution is plain string replacement inside one
//! argv element: it never goes through a shell.

/// Built-in names available in every template.
pub const BUILTINS: &[&str] = &["job", "run_id", "today", "yesterday"];

/// The per-item name, available only in `items.run`.
pub const ITEM: &str = "item";

enum Piece<'a> {
    Lit(&'a str),
    Name(&'a str),
}

/// Whether `name` is a well-formed template (and param) name:
/// `[A-Za-z0-9_-]+`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse(t: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut lit_start = 0;
    let mut i = 0;
    let b = t.as_bytes();
    while i < b.len() {
        match b[i] {
            b'{' if b.get(i + 1) == Some(&b'{') => {
                out.push(Piece::Lit(&t[lit_start..=i]));
                i += 2;
                lit_start = i;
            }
            b'{' => {
                out.push(Piece::Lit(&t[lit_start..i]));
                let Some(len) = t[i + 1..].find(['{', '}']) else {
                    return Err(format!(
                        "unclosed `{{` at character {}; write `{{{{` for a literal brace",
                        t[..i].chars().count() + 1
                    ));
                };
                let end = i + 1 + len;
                if b[end] == b'{' {
                    return Err(format!(
                        "unclosed `{{` at character {}; write `{{{{` for a literal brace",
                        t[..i].chars().count() + 1
                    ));
                }
                let name = &t[i + 1..end];
                if !is_valid_name(name) {
                    return Err(format!(
                        "invalid template name `{{{name}}}`: names are letters, digits, `_` and `-`; write `{{{{` and `}}}}` for literal braces"
                    ));
                }
                out.push(Piece::Name(name));
                i = end + 1;
                lit_start = i;
            }
            b'}' if b.get(i + 1) == Some(&b'}') => {
                out.push(Piece::Lit(&t[lit_start..=i]));
                i += 2;
                lit_start = i;
            }
            b'}' => {
                return Err(format!(
                    "unmatched `}}` at character {}; write `}}}}` for a literal brace",
                    t[..i].chars().count() + 1
                ));
            }
            _ => i += 1,
        }
    }
    out.push(Piece::Lit(&t[lit_start..]));
    Ok(out)
}

/// The distinct names used by template `t`, in order of first use.
pub fn names(t: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for p in parse(t)? {
        if let Piece::Name(n) = p
            && !out.iter().any(|o| o == n)
        {
            out.push(n.to_string());
        }
    }
    Ok(out)
}

/// Renders template `t`, asking `lookup` for each name. An unknown name is
/// an error.
pub fn render(t: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(t.len());
    for p in parse(t)? {
        match p {
            Piece::Lit(s) => out.push_str(s),
            Piece::Name(n) => match lookup(n) {
                Some(v) => out.push_str(&v),
                None => return Err(format!("unknown template name `{{{n}}}`")),
            },
        }
    }
    Ok(out)
}

/// Escapes `s` so that it renders to itself (`{` → `{{`, `}` → `}}`).
pub fn escape(s: &str) -> String {
    s.replace('{', "{{").replace('}', "}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(n: &str) -> Option<String> {
        match n {
            "date" => Some("2026-11-30".into()),
            "item" => Some("order-17".into()),
            "empty" => Some(String::new()),
            "brace" => Some("{x}".into()),
            _ => None,
        }
    }

    #[test]
    fn render_ok() {
        assert_eq!(render("--date={date}", &look).unwrap(), "--date=2026-11-30");
        assert_eq!(render("{date}{item}", &look).unwrap(), "2026-11-30order-17");
        assert_eq!(render("{{date}}", &look).unwrap(), "{date}");
        assert_eq!(render("{{{date}}}", &look).unwrap(), "{2026-11-30}");
        assert_eq!(render("a{empty}b", &look).unwrap(), "ab");
        assert_eq!(render("", &look).unwrap(), "");
        assert_eq!(render("plain", &look).unwrap(), "plain");
        assert_eq!(render("é{date}ü", &look).unwrap(), "é2026-11-30ü");
        // substituted values are not re-expanded
        assert_eq!(render("{brace}", &look).unwrap(), "{x}");
        assert_eq!(
            render("awk '{{print $1}}'", &look).unwrap(),
            "awk '{print $1}'"
        );
    }

    #[test]
    fn render_errors() {
        assert!(
            render("{nope}", &look)
                .unwrap_err()
                .contains("unknown template name `{nope}`")
        );
        for bad in [
            "{", "{date", "}", "a}b", "{}", "{ date }", "{da{te}", "{date}}", "{{date}", "{a b}",
            "{é}", "x{",
        ] {
            assert!(render(bad, &look).is_err(), "{bad:?}");
            assert!(names(bad).is_err(), "{bad:?}");
        }
        assert!(names("{date").unwrap_err().contains("unclosed"));
        assert!(names("a}").unwrap_err().contains("unmatched"));
    }

    #[test]
    fn names_ok() {
        assert_eq!(names("{a}-{b}-{a}").unwrap(), vec!["a", "b"]);
        assert_eq!(names("{{a}}").unwrap(), Vec::<String>::new());
        assert_eq!(names("{run_id}/{job-x}").unwrap(), vec!["run_id", "job-x"]);
    }

    #[test]
    fn escape_roundtrip() {
        for s in ["", "{", "}", "{a}", "awk '{print}'", "}}{{", "é{"] {
            assert_eq!(render(&escape(s), &|_| None).unwrap(), s);
        }
    }
}
