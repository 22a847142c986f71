//! The layering of docs/architecture.md, checked: the top-level modules of
//! `src/` form no import cycle, and the lower layers never reach up (the
//! execution layer knows neither the runner nor the items engine; the
//! engine does not know the runner; the store knows no other layer).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn top_module(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

fn uses(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                for part in group.split('}').next().unwrap_or("").split(',') {
                    let name: String = part
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        out.insert(name);
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let m = top_module(&src, &p);
                if m == "lib" || m == "main" {
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap();
                let deps = g.entry(m.clone()).or_default();
                deps.extend(uses(&text).into_iter().filter(|d| *d != m));
            }
        }
    }
    g
}

fn reaches(g: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_string()];
    while let Some(m) = todo.pop() {
        for d in g.get(&m).into_iter().flatten() {
            if d == to {
                return true;
            }
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    false
}

#[test]
fn top_level_modules_form_no_cycle() {
    let g = graph();
    assert!(g.contains_key("runner") && g.contains_key("exec"), "{g:?}");
    for (m, deps) in &g {
        for d in deps {
            assert!(
                !reaches(&g, d, m),
                "import cycle: {m} uses {d}, and {d} reaches {m} again\n{g:#?}"
            );
        }
    }
}

#[test]
fn lower_layers_never_reach_up() {
    let g = graph();
    let forbidden = [
        ("exec", "runner"),
        ("exec", "items"),
        ("items", "runner"),
        ("store", "exec"),
        ("store", "runner"),
        ("store", "items"),
        ("store", "notify"),
        ("notify", "runner"),
        ("check", "runner"),
    ];
    for (low, high) in forbidden {
        assert!(
            !reaches(&g, low, high),
            "{low} must not depend on {high}\n{g:#?}"
        );
    }
}
