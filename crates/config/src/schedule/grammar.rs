//! Cron's schedule grammar, and nothing wider: five fields of `*`, numbers,
//! ranges `a-b` (a <= b), steps `*/n` and `a-b/n`, comma lists without empty
//! elements; month names (jan-dec) only in the month field, weekday names
//! (sun-sat) only in the day-of-week field, case-insensitive; weekday 7 is
//! Sunday; the nicknames @hourly @daily @midnight @weekly @monthly @yearly
//! @annually. Every error names the field, its allowed values and a fix.

use super::ScheduleError;

/// The 5-field forms of the nicknames (cronie's meanings).
pub(super) const NICKNAMES: &[(&str, &str)] = &[
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

const SYNTAX: &str =
    "cron understands numbers, names, `*`, `,`, `-` and `/` (no `L`, `W`, `#` or `?`)";

/// One of the five fields: its name, bounds and names.
pub(super) struct Field {
    pub what: &'static str,
    min: u8,
    max: u8,
    /// Names for `min`, `min + 1`, ...
    names: &'static [&'static str],
    allowed: &'static str,
}

pub(super) const FIELDS: [Field; 5] = [
    Field {
        what: "minute",
        min: 0,
        max: 59,
        names: &[],
        allowed: "0-59",
    },
    Field {
        what: "hour",
        min: 0,
        max: 23,
        names: &[],
        allowed: "0-23",
    },
    Field {
        what: "day-of-month",
        min: 1,
        max: 31,
        names: &[],
        allowed: "1-31",
    },
    Field {
        what: "month",
        min: 1,
        max: 12,
        names: MONTHS,
        allowed: "1-12 or jan-dec",
    },
    Field {
        what: "day-of-week",
        min: 0,
        max: 7,
        names: WEEKDAYS,
        allowed: "0-7 or sun-sat; 0 and 7 are Sunday",
    },
];

/// A field-level problem: what is wrong and how to fix it.
struct Bad {
    problem: String,
    fix: String,
}

fn bad(problem: impl Into<String>, fix: impl Into<String>) -> Bad {
    Bad {
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// Expands a nickname; `Ok(None)` when `t` is not one (it does not start with `@`).
pub(super) fn nickname(schedule: &str, t: &str) -> Result<Option<&'static str>, ScheduleError> {
    if !t.starts_with('@') {
        return Ok(None);
    }
    if let Some((_, e)) = NICKNAMES.iter().find(|(n, _)| *n == t) {
        return Ok(Some(e));
    }
    let err = |problem: &str, fix: String| ScheduleError::new(schedule, problem, fix);
    if t == "@reboot" {
        return Err(err(
            "@reboot runs a command when cron starts, not at fire times, so batchguard can neither predict nor watch it",
            "write 5 fields (e.g. \"30 3 * * *\") or a nickname such as @daily; to start something at boot, use a systemd unit".into(),
        ));
    }
    let names: Vec<&str> = NICKNAMES.iter().map(|(n, _)| *n).collect();
    let lower = t.to_ascii_lowercase();
    let fix = if names.contains(&lower.as_str()) {
        format!("write \"{lower}\" (nicknames are lowercase)")
    } else if let Some(c) = crate::parse::closest(t, &names) {
        format!("did you mean \"{c}\"?")
    } else {
        format!("use one of {}", names.join(", "))
    };
    Err(err(
        "unknown nickname (expected @hourly, @daily, @midnight, @weekly, @monthly, @yearly or @annually)",
        fix,
    ))
}

/// The fields of an expanded schedule: exactly five.
pub(super) fn fields<'a>(schedule: &str, expanded: &'a str) -> Result<[&'a str; 5], ScheduleError> {
    let fields: Vec<&str> = expanded.split_whitespace().collect();
    fields.clone().try_into().map_err(|_| {
        let extra = if fields.len() == 6 {
            " (a seconds field is not supported: cron fires at minute granularity)"
        } else {
            ""
        };
        ScheduleError::new(
            schedule,
            &format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {}{extra}",
                fields.len()
            ),
            "write 5 fields, e.g. \"30 3 * * *\", or @hourly, @daily, @weekly, @monthly, @yearly",
        )
    })
}

impl Field {
    /// The set of values `text` selects, as bits (bit `v` for value `v`;
    /// for the day of week, 7 is folded into 0).
    pub(super) fn parse(&self, schedule: &str, text: &str) -> Result<u64, ScheduleError> {
        let bits = self.list(text).map_err(|b| {
            ScheduleError::new(
                schedule,
                &format!("the {} field ({}): {}", self.what, self.allowed, b.problem),
                b.fix,
            )
        })?;
        Ok(if self.max == 7 && bits & (1 << 7) != 0 {
            (bits | 1) & !(1 << 7)
        } else {
            bits
        })
    }

    fn list(&self, text: &str) -> Result<u64, Bad> {
        let elements: Vec<&str> = text.split(',').collect();
        if elements.iter().any(|e| e.is_empty()) {
            let kept: Vec<&str> = elements.into_iter().filter(|e| !e.is_empty()).collect();
            let fix = if kept.is_empty() {
                format!("write a value in {}, or `*`", self.allowed)
            } else {
                format!("remove the extra comma: `{}`", kept.join(","))
            };
            return Err(bad(format!("`{text}` has an empty list element"), fix));
        }
        elements
            .iter()
            .try_fold(0u64, |acc, e| Ok(acc | self.element(e)?))
    }

    /// `*`, `v`, `a-b`, `*/n` or `a-b/n`.
    fn element(&self, e: &str) -> Result<u64, Bad> {
        let (range, step) = match e.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (e, None),
        };
        let (lo, hi, single) = match range.split_once('-') {
            _ if range == "*" => (self.min, self.max, false),
            Some((a, b)) => (self.value(a)?, self.value(b)?, false),
            None => {
                let v = self.value(range)?;
                (v, v, true)
            }
        };
        if lo > hi {
            return Err(bad(
                format!("`{range}` is a reversed range (cron does not wrap around)"),
                self.unwrap_fix(lo, hi),
            ));
        }
        let step = match step {
            None => 1,
            Some(s) if single => {
                return Err(bad(
                    format!("`{e}`: a step needs a range"),
                    format!("write {range}-{}/{s} or */{s}", self.max),
                ));
            }
            Some(s) => self.step(s)?,
        };
        Ok((lo..=hi)
            .step_by(step as usize)
            .fold(0u64, |acc, v| acc | (1 << v)))
    }

    /// A number or (in the month and day-of-week fields) a name.
    fn value(&self, t: &str) -> Result<u8, Bad> {
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            return match t.parse::<u8>() {
                Ok(v) if (self.min..=self.max).contains(&v) => Ok(v),
                _ => Err(bad(format!("{t} is out of range"), self.takes())),
            };
        }
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphabetic()) {
            return self.name(t);
        }
        let shown = if t.is_empty() {
            "an empty value".into()
        } else {
            format!("`{t}`")
        };
        Err(bad(format!("{shown} is not cron syntax"), SYNTAX))
    }

    fn name(&self, t: &str) -> Result<u8, Bad> {
        let l = t.to_ascii_lowercase();
        if let Some(i) = self.names.iter().position(|n| *n == l) {
            return Ok(self.min + i as u8);
        }
        let (other, home) = if MONTHS.contains(&l.as_str()) {
            ("a month name", "month")
        } else if WEEKDAYS.contains(&l.as_str()) {
            ("a weekday name", "day-of-week")
        } else {
            return Err(bad(format!("`{t}` is not cron syntax"), SYNTAX));
        };
        Err(bad(
            format!("`{t}` is {other}, which cron accepts only in the {home} field"),
            self.takes(),
        ))
    }

    /// A step `n`: a number from 1 to the field's maximum.
    fn step(&self, s: &str) -> Result<u8, Bad> {
        let fix = || format!("use a step from 1 to {}", self.max);
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(format!("the step `/{s}` is not a number"), fix()));
        }
        match s.parse::<u8>() {
            Ok(n) if (1..=self.max).contains(&n) => Ok(n),
            _ => Err(bad(
                format!("the step `/{s}` is outside 1-{}", self.max),
                fix(),
            )),
        }
    }

    /// The fix for a value that does not belong here.
    fn takes(&self) -> String {
        format!("the {} field takes {}", self.what, self.allowed)
    }

    /// How to write the wrapping range `lo-hi` the way cron understands it.
    fn unwrap_fix(&self, lo: u8, hi: u8) -> String {
        let span = |a: u8, b: u8| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        };
        if self.max == 7 {
            // Days of week: `5-0` is Fri..Sun; 7 is Sunday too.
            let range = match hi {
                0 => span(lo, 7),
                _ => format!("{},{}", span(lo, 7), span(1, hi)),
            };
            let list: Vec<String> = (0..=hi).chain(lo..=6).map(|d| d.to_string()).collect();
            return format!("write {range} or {}", list.join(","));
        }
        format!("write {},{}", span(lo, self.max), span(self.min, hi))
    }
}
