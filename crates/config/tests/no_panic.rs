//! Thousands of random and mutated inputs: the parsers return errors, never panic.

use std::path::Path;

use batchguard_config::*;

const SEED_JOB: &str = include_str!("seeds/job.toml");
const SEED_GLOBAL: &str = include_str!("seeds/global.toml");

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const TOKENS: &[&str] = &[
    "{",
    "}",
    "{{",
    "}}",
    "{item}",
    "{date}",
    "{job}",
    "\"",
    "'",
    "[",
    "]",
    "[[",
    "]]",
    "=",
    "\n",
    ",",
    ".",
    "#",
    "é",
    "\u{0}",
    "\r\n",
    "\t",
    "0",
    "-1",
    "99999999999999999999999",
    "1.5",
    "true",
    "inf",
    "nan",
    "1979-05-27T07:32:00Z",
    "/home/x",
    "../",
    "/root",
    "\"\"\"",
    "'''",
    "\\u0000",
    "\\",
    "[items]",
    "[notify]",
    "[defaults]",
    "[channels.x]",
    "type = \"email\"",
    "mode = \"stream\"",
    "on = [\"crash\"]",
    "schedule = \"0 0 0 0 0 0\"",
    "timeout = \"1d1h1d\"",
    "memory_max = \"18446744073709551615PiB\"",
    "rate = \"0.0000000000000000000001/h\"",
    "a.b.c = 1",
    "x = {}",
];

fn mutate(rng: &mut Rng, s: &str) -> String {
    let mut b: Vec<u8> = s.as_bytes().to_vec();
    for _ in 0..=rng.below(6) {
        let at = rng.below(b.len() + 1);
        match rng.below(6) {
            0 if !b.is_empty() => {
                let end = (at + rng.below(16)).min(b.len());
                b.drain(at.min(end)..end);
            }
            1 => {
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                b.splice(at..at, t.iter().copied());
            }
            2 => b.insert(at, rng.next() as u8),
            3 if !b.is_empty() => {
                let from = rng.below(b.len());
                let end = (from + rng.below(64)).min(b.len());
                let chunk: Vec<u8> = b[from..end].to_vec();
                b.splice(at..at, chunk);
            }
            4 if at < b.len() => b[at] = b"{}[]\"'=\n.#0a"[rng.below(12)],
            _ => b.truncate(at),
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

fn random_text(rng: &mut Rng) -> String {
    let mut s = String::new();
    for _ in 0..rng.below(30) {
        s.push_str(TOKENS[rng.below(TOKENS.len())]);
        if rng.below(3) == 0 {
            s.push_str(" = ");
        }
    }
    s
}

fn exercise(text: &str, global: &Global) {
    let path = Path::new("/etc/batchguard/jobs/fuzz.toml");
    if let Err(e) = parse_job_str("fuzz", path, text, global) {
        assert!(!e.0.is_empty());
        let _ = e.to_string();
    }
    let gpath = Path::new("/etc/batchguard/batchguard.toml");
    match parse_global_str(Path::new("/etc/batchguard"), gpath, text) {
        Ok(g) => {
            let _ = parse_job_str("fuzz", path, SEED_JOB, &g);
        }
        Err(e) => {
            assert!(!e.0.is_empty());
            let _ = e.to_string();
        }
    }
    for line in text.lines().take(4) {
        let _ = parse_duration(line);
        let _ = parse_size(line);
        let _ = parse_rate(line);
        let _ = template::names(line);
        let _ = template::render(line, &|n| (n.len() < 5).then(|| n.to_string()));
        let _ = is_valid_job_name(line);
    }
}

fn seed_global() -> Global {
    parse_global_str(
        Path::new("/etc/batchguard"),
        Path::new("/etc/batchguard/batchguard.toml"),
        SEED_GLOBAL,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn seeds_are_valid() {
    let g = seed_global();
    parse_job_str(
        "nightly-report",
        Path::new("/etc/batchguard/jobs/nightly-report.toml"),
        SEED_JOB,
        &g,
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn mutated_inputs_never_panic() {
    let g = seed_global();
    let empty = Global::default();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let seeds = [SEED_JOB, SEED_GLOBAL];
    for i in 0..std::env::var("BG_FUZZ_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
    {
        let text = match i % 4 {
            0 => random_text(&mut rng),
            _ => mutate(&mut rng, seeds[i % 2]),
        };
        exercise(&text, if i % 3 == 0 { &empty } else { &g });
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(42);
    let g = Global::default();
    for _ in 0..2000 {
        let len = rng.below(200);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        exercise(&String::from_utf8_lossy(&bytes), &g);
    }
}
