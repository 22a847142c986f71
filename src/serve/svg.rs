//! Inline SVG charts, drawn on the server: no chart library, no script.
//! Colours come from CSS classes (`o-OUTCOME`, `lim-*`) in app.css; every
//! text is escaped with [`esc`].

use super::pages::esc;
use crate::store::dashboard::RunBrief;
use jiff::tz::TimeZone;
use std::fmt::Write as _;

/// `o-success`, `o-failure`, …: a CSS class for an outcome (outcomes are a
/// closed set; anything else becomes `o-other`).
pub fn outcome_class(outcome: &str) -> &'static str {
    match outcome {
        "success" => "o-success",
        "failure" => "o-failure",
        "timeout" => "o-timeout",
        "oom" => "o-oom",
        "killed" => "o-killed",
        "fenced" => "o-fenced",
        "skipped" => "o-skipped",
        "lost" => "o-lost",
        "running" => "o-running",
        _ => "o-other",
    }
}

/// `2026-11-30 03:30:00 +09:00`, without strftime (thousands per page).
pub fn short_time(ms: i64, tz: &TimeZone) -> String {
    let ts = jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let off = tz.to_offset(ts);
    let dt = off.to_datetime(ts);
    let secs = off.seconds();
    let (sign, secs) = if secs < 0 { ('-', -secs) } else { ('+', secs) };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} {sign}{:02}:{:02}",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        secs / 3600,
        secs % 3600 / 60
    )
}

fn run_title(r: &RunBrief, tz: &TimeZone) -> String {
    let dur = r
        .duration_ms
        .map(crate::clock::human_ms)
        .unwrap_or_else(|| "-".into());
    format!("{} · {} · {}", r.outcome, short_time(r.started_ms, tz), dur)
}

/// The last runs as a strip of squares, oldest left; `runs` newest first.
pub fn strip(runs: &[RunBrief], slots: usize, tz: &TimeZone) -> String {
    let (w, gap) = (10, 2);
    let width = slots * (w + gap);
    let mut s = format!(
        "<svg class=\"strip\" width=\"{width}\" height=\"14\" viewBox=\"0 0 {width} 14\" role=\"img\" aria-label=\"last {} runs\">",
        runs.len()
    );
    let start = slots.saturating_sub(runs.len());
    for (i, r) in runs.iter().rev().enumerate() {
        let x = (start + i) * (w + gap);
        let _ = write!(
            s,
            "<a href=\"/runs/{id}\"><rect x=\"{x}\" y=\"1\" width=\"{w}\" height=\"12\" rx=\"2\" class=\"{c}\"><title>{t}</title></rect></a>",
            id = esc(&r.id),
            c = outcome_class(&r.outcome),
            t = esc(&run_title(r, tz)),
        );
    }
    s.push_str("</svg>");
    s
}

/// A bar for `value` against an optional soft limit (dashed line) and hard
/// limit (solid line); red past 90% of the hard limit, amber past the soft.
pub fn gauge(value: f64, soft: Option<f64>, hard: Option<f64>, title: &str) -> String {
    let (w, h) = (120.0, 10.0);
    let top = [Some(value), soft, hard]
        .into_iter()
        .flatten()
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.05;
    let x = |v: f64| (v / top * w).clamp(0.0, w);
    let class = if hard.is_some_and(|h| value >= 0.9 * h) {
        "g-bad"
    } else if soft.is_some_and(|s| value > s) {
        "g-warn"
    } else {
        "g-ok"
    };
    let mut s = format!(
        "<svg class=\"gauge\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\"><title>{}</title><rect class=\"g-bg\" x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\"/><rect class=\"{class}\" x=\"0\" y=\"1\" width=\"{:.1}\" height=\"{}\"/>",
        esc(title),
        x(value),
        h - 2.0
    );
    if let Some(v) = soft {
        let _ = write!(
            s,
            "<line class=\"lim-soft\" x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"0\" y2=\"{h}\"/>",
            x(v)
        );
    }
    if let Some(v) = hard {
        let _ = write!(
            s,
            "<line class=\"lim-hard\" x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"0\" y2=\"{h}\"/>",
            x(v)
        );
    }
    s.push_str("</svg>");
    s
}

/// A limit drawn across a chart.
pub struct Limit<'a> {
    pub label: &'a str,
    pub value: f64,
    /// `lim-soft` or `lim-hard`.
    pub class: &'static str,
}

fn tick_label(ms: i64, tz: &TimeZone, span_ms: i64) -> String {
    let ts = jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let z = ts.to_zoned(tz.clone());
    if span_ms <= 2 * 86_400_000 {
        z.strftime("%H:%M").to_string()
    } else {
        z.strftime("%m-%d").to_string()
    }
}

/// A history chart: one dot per run (coloured by outcome, linked to the
/// run) joined by a line, over `[from_ms, to_ms]`, with the limits drawn.
pub fn history(
    css: &str,
    runs: &[(&RunBrief, f64)],
    from_ms: i64,
    to_ms: i64,
    limits: &[Limit<'_>],
    fmt: &dyn Fn(f64) -> String,
    tz: &TimeZone,
) -> String {
    let (w, h, ml, mr, mt, mb) = (760.0, 220.0, 70.0, 150.0, 16.0, 24.0);
    let (pw, ph) = (w - ml - mr, h - mt - mb);
    let span = (to_ms - from_ms).max(1);
    // Scale to the data; a limit far above it (more than 3x the highest
    // value) is named at the top edge instead of flattening the data.
    let data_top = runs.iter().map(|(_, v)| *v).fold(0.0f64, f64::max);
    let near = |l: &Limit<'_>| data_top <= 0.0 || l.value <= 3.0 * data_top;
    let top = runs
        .iter()
        .map(|(_, v)| *v)
        .chain(limits.iter().filter(|l| near(l)).map(|l| l.value))
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE)
        * 1.1;
    let x = |ms: i64| ml + ((ms - from_ms) as f64 / span as f64).clamp(0.0, 1.0) * pw;
    let y = |v: f64| mt + ph - (v / top).clamp(0.0, 1.0) * ph;
    let mut s = format!(
        "<svg class=\"chart {css}\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\">"
    );
    let _ = write!(
        s,
        "<rect class=\"plot\" x=\"{ml}\" y=\"{mt}\" width=\"{pw}\" height=\"{ph}\"/>"
    );
    for i in 0..=2 {
        let v = top / 1.1 * i as f64 / 2.0;
        let _ = write!(
            s,
            "<line class=\"grid\" x1=\"{ml}\" x2=\"{:.1}\" y1=\"{1:.1}\" y2=\"{1:.1}\"/><text class=\"axis\" x=\"{2}\" y=\"{3:.1}\" text-anchor=\"end\">{4}</text>",
            ml + pw,
            y(v),
            ml - 4.0,
            y(v) + 4.0,
            esc(&fmt(v))
        );
    }
    for i in 0..=4 {
        let ms = from_ms + span * i / 4;
        let _ = write!(
            s,
            "<text class=\"axis\" x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            x(ms),
            h - 6.0,
            esc(&tick_label(ms, tz, span))
        );
    }
    let mut off = 0.0;
    for l in limits.iter().filter(|l| !near(l)) {
        let _ = write!(
            s,
            "<text class=\"limit-label {c}-text\" x=\"{tx:.1}\" y=\"{ty:.1}\">↑ {t}<title>above the chart (off scale)</title></text>",
            c = l.class,
            tx = ml + pw + 4.0,
            ty = mt + 4.0 + off,
            t = esc(&format!("{} {}", l.label, fmt(l.value)))
        );
        off += 14.0;
    }
    for l in limits.iter().filter(|l| near(l)) {
        let _ = write!(
            s,
            "<line class=\"{c}\" x1=\"{ml}\" x2=\"{x2:.1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\"/><text class=\"limit-label\" x=\"{tx:.1}\" y=\"{ty:.1}\">{t}</text>",
            c = l.class,
            x2 = ml + pw,
            yy = y(l.value),
            tx = ml + pw + 4.0,
            ty = y(l.value) + 4.0,
            t = esc(&format!("{} {}", l.label, fmt(l.value)))
        );
    }
    if runs.len() > 1 {
        s.push_str("<polyline class=\"series\" points=\"");
        for (r, v) in runs {
            let _ = write!(s, "{:.1},{:.1} ", x(r.started_ms), y(*v));
        }
        s.push_str("\"/>");
    }
    for (r, v) in runs {
        let _ = write!(
            s,
            "<a href=\"/runs/{id}\"><circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" class=\"{c}\"><title>{t} · {val}</title></circle></a>",
            x(r.started_ms),
            y(*v),
            id = esc(&r.id),
            c = outcome_class(&r.outcome),
            t = esc(&run_title(r, tz)),
            val = esc(&fmt(*v)),
        );
    }
    if runs.is_empty() {
        let _ = write!(
            s,
            "<text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">no runs in this range</text>",
            ml + pw / 2.0,
            mt + ph / 2.0
        );
    }
    s.push_str("</svg>");
    s
}

/// The timeline: one row per job, one bar per run from its start to its end
/// (now while running), and above them the number of runs under way in
/// each of 48 slices of the range, so crowded hours stand out.
pub fn gantt(
    rows: &[(String, Vec<&RunBrief>)],
    from_ms: i64,
    to_ms: i64,
    now_ms: i64,
    tz: &TimeZone,
) -> String {
    let (w, ml, mr, row_h, hist_h, mt) = (1100.0, 170.0, 30.0, 16.0, 40.0, 18.0);
    let pw = w - ml - mr;
    let h = mt + hist_h + 8.0 + rows.len() as f64 * row_h + 4.0;
    let span = (to_ms - from_ms).max(1);
    let x = |ms: i64| ml + ((ms - from_ms) as f64 / span as f64).clamp(0.0, 1.0) * pw;
    let mut s = format!(
        "<svg class=\"gantt\" width=\"{w}\" height=\"{h:.0}\" viewBox=\"0 0 {w} {h:.0}\" role=\"img\">"
    );
    for i in 0..=8 {
        let ms = from_ms + span * i / 8;
        let _ = write!(
            s,
            "<line class=\"grid\" x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{mt}\" y2=\"{h:.0}\"/><text class=\"axis\" x=\"{0:.1}\" y=\"12\" text-anchor=\"middle\">{1}</text>",
            x(ms),
            esc(&tick_label(ms, tz, span))
        );
    }
    // Concurrency histogram.
    const SLICES: usize = 48;
    let mut busy = [0u32; SLICES];
    for (_, runs) in rows {
        for r in runs {
            let end = r.ended_ms.unwrap_or(now_ms).max(r.started_ms);
            for (i, b) in busy.iter_mut().enumerate() {
                let a = from_ms + span * i as i64 / SLICES as i64;
                let z = from_ms + span * (i as i64 + 1) / SLICES as i64;
                if r.started_ms < z && end >= a {
                    *b += 1;
                }
            }
        }
    }
    let peak = busy.iter().copied().max().unwrap_or(0).max(1);
    let _ = write!(
        s,
        "<text class=\"axis\" x=\"{}\" y=\"{}\" text-anchor=\"end\">runs per slice (peak {peak})</text>",
        ml - 6.0,
        mt + hist_h / 2.0 + 4.0
    );
    for (i, b) in busy.iter().enumerate() {
        let bh = hist_h * *b as f64 / peak as f64;
        let _ = write!(
            s,
            "<rect class=\"busy\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\"><title>{b} runs under way</title></rect>",
            ml + pw * i as f64 / SLICES as f64,
            mt + hist_h - bh,
            (pw / SLICES as f64 - 1.0).max(1.0),
        );
    }
    let top = mt + hist_h + 8.0;
    for (i, (job, runs)) in rows.iter().enumerate() {
        let yy = top + i as f64 * row_h;
        let _ = write!(
            s,
            "<a href=\"/jobs/{j}\"><text class=\"rowlabel\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{j}</text></a>",
            ml - 6.0,
            yy + row_h - 4.0,
            j = esc(job)
        );
        for r in runs {
            let end = r.ended_ms.unwrap_or(now_ms).max(r.started_ms);
            let (x1, x2) = (x(r.started_ms), x(end));
            let _ = write!(
                s,
                "<a href=\"/runs/{id}\"><rect class=\"{c}\" x=\"{x1:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\"><title>{jt} · {t}</title></rect></a>",
                yy + 2.0,
                (x2 - x1).max(2.0),
                row_h - 4.0,
                id = esc(&r.id),
                c = outcome_class(&r.outcome),
                jt = esc(job),
                t = esc(&run_title(r, tz)),
            );
        }
    }
    s.push_str("</svg>");
    s
}
