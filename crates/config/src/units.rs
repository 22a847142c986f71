//! Durations, sizes and rates: strict parsers and human formatters.

use std::fmt;
use std::time::Duration;

const DURATION_HELP: &str =
    "use e.g. \"500ms\", \"30s\", \"45m\", \"2h\", \"1d\" or combined \"1h30m\"";

/// Parses a duration: `500ms`, `30s`, `45m`, `2h`, `1d`, or a combination
/// from the largest unit to the smallest (`1h30m`, `1d2h`). Nothing else is
/// accepted: no spaces, no other units, no bare numbers, no fractions.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err(format!("empty duration; {DURATION_HELP}"));
    }
    if s.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "invalid duration \"{s}\": a unit is required (ms, s, m, h or d), e.g. \"{s}s\""
        ));
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total_ms: u64 = 0;
    let mut last_rank = u8::MAX;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(format!(
                "invalid duration \"{s}\": expected a number at `{}`; {DURATION_HELP}",
                rest(s, start)
            ));
        }
        let number: u64 = s[start..i]
            .parse()
            .map_err(|_| format!("invalid duration \"{s}\": number too large"))?;
        let (unit_len, factor, rank) = if bytes[i..].starts_with(b"ms") {
            (2, 1u64, 0u8)
        } else {
            match bytes.get(i) {
                Some(b's') => (1, 1_000, 1),
                Some(b'm') => (1, 60_000, 2),
                Some(b'h') => (1, 3_600_000, 3),
                Some(b'd') => (1, 86_400_000, 4),
                Some(_) => {
                    return Err(format!(
                        "invalid duration \"{s}\": unknown unit at `{}` (units are ms, s, m, h, d); {DURATION_HELP}",
                        rest(s, i)
                    ));
                }
                None => {
                    return Err(format!(
                        "invalid duration \"{s}\": missing unit after {number} (ms, s, m, h or d)"
                    ));
                }
            }
        };
        if rank >= last_rank {
            return Err(format!(
                "invalid duration \"{s}\": units must go from the largest to the smallest, each at most once (e.g. \"1h30m\")"
            ));
        }
        last_rank = rank;
        i += unit_len;
        total_ms = number
            .checked_mul(factor)
            .and_then(|v| total_ms.checked_add(v))
            .ok_or_else(|| format!("invalid duration \"{s}\": too large"))?;
    }
    Ok(Duration::from_millis(total_ms))
}

fn rest(s: &str, at: usize) -> &str {
    // `at` always lies on an ASCII byte boundary or at a char boundary we
    // reached by skipping ASCII digits; be defensive anyway.
    s.get(at..).unwrap_or("")
}

/// Formats a duration in the form [`parse_duration`] reads: `1h30m`,
/// `500ms`, `1d2h`, `0s`. Sub-millisecond parts are rounded up to 1ms when
/// the duration would otherwise print as zero.
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return if d.is_zero() {
            "0s".into()
        } else {
            "1ms".into()
        };
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        let n = ms / size;
        if n > 0 {
            out.push_str(&n.to_string());
            out.push_str(unit);
            ms -= n * size;
        }
    }
    out
}

const SIZE_UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("kB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("PB", 1_000_000_000_000_000),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("PiB", 1 << 50),
];

const SIZE_HELP: &str = "use B, kB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. \"512MiB\"";

/// Parses a size: plain bytes (`1048576`), SI units (`1kB`, `1MB`, `1GB`,
/// `1TB`, `1PB`), binary units (`1KiB` … `1PiB`) or `B`. Whole numbers only.
pub fn parse_size(s: &str) -> Result<u64, String> {
    if s.is_empty() {
        return Err(format!("empty size; {SIZE_HELP}"));
    }
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!(
            "invalid size \"{s}\": it must start with a whole number; {SIZE_HELP}"
        ));
    }
    let (num, unit) = s.split_at(digits);
    if unit.starts_with('.') || unit.starts_with(',') {
        return Err(format!(
            "invalid size \"{s}\": sizes are whole numbers; use a smaller unit (e.g. \"1536MiB\" instead of \"1.5GiB\")"
        ));
    }
    let number: u64 = num
        .parse()
        .map_err(|_| format!("invalid size \"{s}\": number too large"))?;
    let factor = if unit.is_empty() {
        1
    } else if let Some((_, f)) = SIZE_UNITS.iter().find(|(u, _)| *u == unit) {
        *f
    } else if unit == "KB" {
        return Err(format!(
            "invalid size \"{s}\": `KB` is ambiguous; write `kB` (1000 bytes) or `KiB` (1024 bytes)"
        ));
    } else if let Some((u, _)) = SIZE_UNITS.iter().find(|(u, _)| {
        u.eq_ignore_ascii_case(unit) || u.trim_end_matches('B').eq_ignore_ascii_case(unit)
    }) {
        return Err(format!(
            "invalid size \"{s}\": unknown unit `{unit}`; did you mean `{num}{u}`? ({SIZE_HELP})"
        ));
    } else {
        return Err(format!(
            "invalid size \"{s}\": unknown unit `{unit}`; {SIZE_HELP}"
        ));
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("invalid size \"{s}\": too large"))
}

/// Formats a byte count for humans with binary units: `512B`, `64MiB`,
/// `1.8GiB`.
pub fn format_size(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut unit = 0;
    let mut div: u64 = 1024;
    while unit + 1 < UNITS.len() && n / div >= 1024 {
        div *= 1024;
        unit += 1;
    }
    if n.is_multiple_of(div) {
        return format!("{}{}", n / div, UNITS[unit]);
    }
    let v = n as f64 / div as f64;
    let mut s = format!("{v:.1}");
    if s.ends_with(".0") {
        s.truncate(s.len() - 2);
    }
    format!("{s}{}", UNITS[unit])
}

/// A start rate for items: `"50/s"`, `"10/m"`, `"100/h"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Starts per second (always finite and > 0).
    pub per_second: f64,
}

impl Rate {
    /// Minimum interval between two starts.
    pub fn interval(&self) -> Duration {
        // per_second > 0 and finite, so 1/per_second is finite and > 0; clamp
        // to a sane ceiling so Duration::from_secs_f64 can never panic.
        Duration::from_secs_f64((1.0 / self.per_second).min(1e9))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", self.per_second)
    }
}

/// Parses a rate `N/s`, `N/m` or `N/h` with N a positive number.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let help = "write a positive number of starts per unit: \"50/s\", \"10/m\" or \"100/h\"";
    let Some((num, unit)) = s.split_once('/') else {
        return Err(format!("invalid rate \"{s}\": {help}"));
    };
    let per = match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "invalid rate \"{s}\": unknown unit `{unit}`; {help}"
            ));
        }
    };
    let well_formed = !num.is_empty()
        && num.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && num.bytes().filter(|b| *b == b'.').count() <= 1
        && num.bytes().next().is_some_and(|b| b.is_ascii_digit())
        && num.bytes().last().is_some_and(|b| b.is_ascii_digit());
    if !well_formed {
        return Err(format!(
            "invalid rate \"{s}\": `{num}` is not a number; {help}"
        ));
    }
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid rate \"{s}\": {help}"))?;
    if !n.is_finite() || n <= 0.0 {
        return Err(format!(
            "invalid rate \"{s}\": it must be greater than zero; {help}"
        ));
    }
    let per_second = n / per;
    if !per_second.is_finite() || per_second <= 0.0 {
        return Err(format!("invalid rate \"{s}\": out of range; {help}"));
    }
    Ok(Rate { per_second })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejects<T: std::fmt::Debug>(parse: fn(&str) -> Result<T, String>, inputs: &[&str]) {
        for s in inputs {
            assert!(
                parse(s).is_err(),
                "{s:?} should be rejected: {:?}",
                parse(s)
            );
        }
    }

    #[test]
    fn durations_ok() {
        let cases = [
            ("500ms", 500),
            ("30s", 30_000),
            ("45m", 2_700_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
            ("1h30m", 5_400_000),
            ("1d2h3m4s5ms", 93_784_005),
            ("0s", 0),
            ("90m", 5_400_000),
            ("007s", 7_000),
        ];
        for (s, ms) in cases {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
    }

    #[test]
    fn durations_bad() {
        rejects(
            parse_duration,
            &[
                "",
                "30",
                "1 h",
                " 1h",
                "1h ",
                "1.5h",
                "1w",
                "1y",
                "h",
                "1H",
                "30sec",
                "1m1h",
                "1h1h",
                "1s500ms500ms",
                "-1s",
                "+1s",
                "1h-30m",
                "ms",
                "1µs",
                "1ns",
                "1_000s",
                "１s",
                "18446744073709551615d",
                "99999999999999999999999s",
                "1h30",
                "PT1H",
            ],
        );
        assert!(parse_duration("30").unwrap_err().contains("\"30s\""));
    }

    #[test]
    fn duration_format_roundtrip() {
        for s in [
            "500ms",
            "30s",
            "45m",
            "2h",
            "1d",
            "1h30m",
            "1d2h3m4s5ms",
            "0s",
        ] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_micros(1)), "1ms");
        // u64::MAX seconds does not panic
        let _ = format_duration(Duration::MAX);
    }

    #[test]
    fn sizes_ok() {
        let cases = [
            ("512MiB", 512 << 20),
            ("2GiB", 2 << 30),
            ("1GB", 1_000_000_000),
            ("1KiB", 1024),
            ("1kB", 1000),
            ("1MB", 1_000_000),
            ("1TiB", 1 << 40),
            ("1TB", 1_000_000_000_000),
            ("1PiB", 1 << 50),
            ("123", 123),
            ("0", 0),
            ("10B", 10),
        ];
        for (s, n) in cases {
            assert_eq!(parse_size(s), Ok(n), "{s}");
        }
    }

    #[test]
    fn sizes_bad() {
        rejects(
            parse_size,
            &[
                "",
                "GiB",
                "1.5GiB",
                "1 GiB",
                "1gib",
                "1G",
                "1g",
                "1KB",
                "1kiB",
                "1Gb",
                "-1",
                "1e9",
                "99999999999PiB",
                "18446744073709551616",
                " 1",
                "1_000",
                "1EiB",
                "0x10",
            ],
        );
        assert!(parse_size("1gib").unwrap_err().contains("1GiB"));
        assert!(parse_size("1KB").unwrap_err().contains("ambiguous"));
    }

    #[test]
    fn size_format() {
        assert_eq!(format_size(0), "0B");
        assert_eq!(format_size(1023), "1023B");
        assert_eq!(format_size(1024), "1KiB");
        assert_eq!(format_size(2 << 30), "2GiB");
        assert_eq!(format_size(1_932_735_283), "1.8GiB");
        assert_eq!(format_size(64 << 20), "64MiB");
        let _ = format_size(u64::MAX);
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("50/s").unwrap().per_second, 50.0);
        assert_eq!(parse_rate("10/m").unwrap().per_second, 10.0 / 60.0);
        assert_eq!(parse_rate("100/h").unwrap().per_second, 100.0 / 3600.0);
        assert_eq!(parse_rate("0.5/s").unwrap().per_second, 0.5);
        rejects(
            parse_rate,
            &[
                "", "50", "0/s", "0.0/s", "-1/s", "50/d", "50/sec", "/s", "50/", "1e3/s", ".5/s",
                "5./s", "inf/s", "NaN/s", "50 /s", "1.2.3/s", "50/s/s",
            ],
        );
        let huge = "9".repeat(400) + "/s";
        assert!(parse_rate(&huge).is_err());
        let tiny = parse_rate("0.0000000000000000000000001/h").unwrap();
        let _ = tiny.interval();
    }
}
