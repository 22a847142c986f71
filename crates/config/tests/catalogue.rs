//! A catalogue of malformed configurations: each must fail with a diagnostic
//! at the expected file:line:column whose text contains the expected fragment.

mod common;

use batchguard_config::{Errors, load};
use common::TempDir;

const GLOBAL: &str = r#"
[channels.oncall]
type = "slack"
url_env = "SLACK_WEBHOOK_URL"
[channels.mail]
type = "email"
smtp = "smtp://127.0.0.1:25"
from = "batch@example.com"
to = ["oncall@example.com"]
"#;

struct Case {
    name: &'static str,
    /// Files relative to the config dir. `batchguard.toml` defaults to GLOBAL.
    files: Vec<(&'static str, &'static str)>,
    /// (file relative to the config dir, line, column, fragment of message+help)
    expect: Vec<(&'static str, usize, usize, &'static str)>,
}

const J: &str = "jobs/nightly.toml";
const G: &str = "batchguard.toml";

/// (name, line, column, fragments of message+help all expected at that
/// place, the file's text).
type Row = (
    &'static str,
    usize,
    usize,
    &'static [&'static str],
    &'static str,
);

/// One job file and what must be reported in it.
#[rustfmt::skip]
const JOB_CASES: &[Row] = &[
    ("unknown key far from everything lists valid keys", 2, 1, &["valid keys here: `description`"],
        "command = [\"/bin/true\"]\nzzzzqqq = 1\n"),
    ("wrong type", 2, 11, &["wrong type for `retries`: expected an integer, found string"],
        "command = [\"/bin/true\"]\nretries = \"2\"\n"),
    ("bad duration", 2, 11, &["bad duration for `timeout`"],
        "command = [\"/bin/true\"]\ntimeout = \"45 minutes\"\n"),
    ("duration as integer", 3, 9, &["\"60s\""],
        "command = [\"/bin/true\"]\n[distributed]\nlease = 60\n"),
    ("bad size", 2, 14, &["bad size for `memory_max`"],
        "command = [\"/bin/true\"]\nmemory_max = \"2 GiB\"\n"),
    ("bad rate", 5, 8, &["bad rate for `items.rate`"],
        "command = [\"/bin/true\"]\n[items]\nsource = [\"./list\"]\nrun = [\"./do\", \"{item}\"]\nrate = \"fast\"\n"),
    ("bad lock name", 2, 8, &["invalid lock name \"Sales DB\""],
        "command = [\"/bin/true\"]\nlock = \"Sales DB\"\n"),
    ("{item} in command", 1, 25, &["`{item}` is only available in `items.run`"],
        "command = [\"/bin/echo\", \"{item}\"]\n"),
    ("unknown channel", 3, 23, &["unknown channel \"pager\""],
        "command = [\"/bin/true\"]\n[notify]\nchannels = [\"oncall\", \"pager\"]\n"),
    ("unknown event", 2, 29, &["unknown event \"failed\""],
        "command = [\"/bin/true\"]\nnotify = { on = [\"failure\", \"failed\"] }\n"),
    ("bad timezone", 2, 12, &["unknown time zone \"Mars/Olympus\""],
        "command = [\"/bin/true\"]\ntimezone = \"Mars/Olympus\"\n"),
    ("bad cron", 2, 12, &["invalid schedule \"61 * * * *\""],
        "command = [\"/bin/true\"]\nschedule = \"61 * * * *\"\n"),
    ("6-field cron", 2, 12, &["found 6 (a seconds field is not supported"],
        "command = [\"/bin/true\"]\nschedule = \"0 30 3 * * *\"\n"),
    ("@reboot is not a schedule", 2, 12, &["@reboot runs a command when cron starts"],
        "command = [\"/bin/true\"]\nschedule = \"@reboot\"\n"),
    ("quartz-only cron syntax", 2, 12, &["the day-of-month field (1-31): `L` is not cron syntax"],
        "command = [\"/bin/true\"]\nschedule = \"0 3 L * *\"\n"),
    ("unclosed brace", 1, 25, &["unclosed `{`"],
        "command = [\"/bin/echo\", \"{date\"]\n"),
    ("workdir with ../ into /home", 2, 11, &["(/home/bob/x)"],
        "command = [\"/bin/true\"]\nworkdir = \"/srv/../home/bob/x\"\n"),
    ("relative workdir climbing into /home", 2, 11, &["(/home/carol)"],
        "command = [\"/bin/true\"]\nworkdir = \"../../../../../../../../../../../../home/carol\"\n"),
    ("both source and source_file", 4, 15, &["mutually exclusive"],
        "command = [\"/bin/true\"]\n[items]\nsource = [\"./list\"]\nsource_file = \"keys.txt\"\nrun = [\"./do\", \"{item}\"]\n"),
    ("neither source nor source_file", 2, 2, &["needs `source` or `source_file`"],
        "command = [\"/bin/true\"]\n[items]\nrun = [\"./do\", \"{item}\"]\n"),
    ("stream mode with run", 5, 7, &["not allowed with `items.mode = \"stream\"`"],
        "command = [\"/bin/true\"]\n[items]\nsource = [\"./list\"]\nmode = \"stream\"\nrun = [\"./do\", \"{item}\"]\n"),
    ("per-item without run", 2, 2, &["per-item mode needs `items.run`"],
        "command = [\"/bin/true\"]\n[items]\nsource = [\"./list\"]\n"),
    ("parallelism 0", 5, 15, &["`items.parallelism` = 0 is out of range"],
        "command = [\"/bin/true\"]\n[items]\nsource = [\"./list\"]\nrun = [\"./do\"]\nparallelism = 0\n"),
    ("typo in items with suggestion", 5, 1, &["did you mean `parallelism`?"],
        "command = [\"/bin/true\"]\n[items]\nsource = [\"./list\"]\nrun = [\"./do\"]\nparalelism = 2\n"),
    ("empty command", 1, 11, &["`command` must not be empty"],
        "command = []\n"),
    ("command not an array", 1, 11, &["wrong type for `command`: expected an array of strings, found string"],
        "command = \"/bin/true --all\"\n"),
    ("missing command", 1, 1, &["missing required key `command`"],
        "description = \"x\"\n"),
    ("TOML syntax error", 1, 23, &["invalid TOML: missing comma"],
        "command = [\"/bin/true\"\ntimeout = \"1h\"\n"),
    ("duplicate key", 3, 1, &["duplicate key `timeout`"],
        "command = [\"/bin/true\"]\ntimeout = \"1h\"\ntimeout = \"2h\"\n"),
    ("retries too large", 2, 11, &["between 0 and 100"],
        "command = [\"/bin/true\"]\nretries = 1000\n"),
    ("schema_change wrong type", 3, 17, &["wrong type for `guideline.schema_change`"],
        "command = [\"/bin/true\"]\n[guideline]\nschema_change = \"yes\"\n"),
    ("bad reads value", 3, 9, &["did you mean \"replica\"?"],
        "command = [\"/bin/true\"]\n[guideline]\nreads = \"replicas\"\n"),
    ("bad env var name", 3, 1, &["not a valid environment variable name"],
        "command = [\"/bin/true\"]\n[env]\n\"MY-VAR\" = \"x\"\n"),
    ("params with non-builtin template", 3, 8, &["unknown template name `{foo}` in `params.date`"],
        "command = [\"/bin/true\"]\n[params]\ndate = \"{foo}\"\n"),
    ("max_attempts 0", 5, 16, &["between 1 and 1000"],
        "command = [\"/bin/true\"]\n[items]\nsource = [\"./l\"]\nrun = [\"./r\"]\nmax_attempts = 0\n"),
    ("negative expected_items", 3, 18, &["out of range"],
        "command = [\"/bin/true\"]\n[guideline]\nexpected_items = -5\n"),
    ("bad secret name", 2, 12, &["not an environment variable name"],
        "command = [\"/bin/true\"]\nsecrets = [\"db password\"]\n"),
    ("items as array of tables", 2, 1, &["wrong type for `items`"],
        "command = [\"/bin/true\"]\n[[items]]\nsource = [\"./l\"]\n"),
    ("zero timeout", 2, 11, &["must be greater than zero"],
        "command = [\"/bin/true\"]\ntimeout = \"0s\"\n"),
    ("unknown template in runbook", 3, 10, &["unknown template name `{dtae}` in `runbook.verify`"],
        "command = [\"/bin/true\"]\n[runbook]\nverify = \"check {dtae}\"\n"),
    ("template in items.scope with item", 5, 9, &["`{item}` is only available in `items.run`"],
        "command = [\"/bin/true\"]\n[items]\nsource = [\"./l\"]\nrun = [\"./r\"]\nscope = \"{item}\"\n"),
    ("timezone with wrong case", 2, 12, &["\"Asia/Tokyo\""],
        "command = [\"/bin/true\"]\ntimezone = \"asia/tokyo\"\n"),
    ("float for integer", 2, 11, &["found float"],
        "command = [\"/bin/true\"]\nretries = 1.5\n"),
    ("month field with a weekday name", 2, 12, &["the month field (1-12 or jan-dec): `MON` is a weekday name"],
        "command = [\"/bin/true\"]\nschedule = \"0 0 * MON *\"\n"),
    ("empty cron list element", 2, 12, &["remove the extra comma: `1,2`"],
        "command = [\"/bin/true\"]\nschedule = \"1,,2 * * * *\"\n"),

    ("typo key with suggestion", 2, 1, &["unknown key `timout`", "did you mean `timeout`?"],
        "command = [\"/bin/true\"]\ntimout = \"45m\"\n"),
    ("unknown template name", 1, 25, &["unknown template name `{dat}`", "did you mean `{date}`?"],
        "command = [\"/bin/echo\", \"{dat}\"]\n[params]\ndate = \"{today}\"\n"),
    ("workdir under /home/alice", 2, 11, &["personal home", "G10"],
        "command = [\"/bin/true\"]\nworkdir = \"/home/alice/report\"\n"),
    ("bad concurrency value", 2, 15, &["invalid value \"forbidden\" for `concurrency`", "did you mean \"forbid\"?"],
        "command = [\"/bin/true\"]\nconcurrency = \"forbidden\"\n"),
    ("reversed weekday range", 2, 12, &["the day-of-week field", "`FRI-SUN` is a reversed range", "write 5-7 or 0,5,6"],
        "command = [\"/bin/true\"]\nschedule = \"0 0 * * FRI-SUN\"\n"),
];

/// `batchguard.toml` alone and what must be reported in it.
#[rustfmt::skip]
const GLOBAL_CASES: &[Row] = &[
    ("log_dir under /root", 1, 11, &["`log_dir` = \"/root/logs\" is under a personal home"],
        "log_dir = \"/root/logs\"\n"),
    ("artifact_dir under /home", 2, 16, &["G10"],
        "\nartifact_dir = \"/home/bob/out\"\n"),
    ("literal password in an email channel", 6, 1, &["password_env"],
        "[channels.m]\ntype = \"email\"\nsmtp = \"smtp://h\"\nfrom = \"a@b\"\nto = [\"c@d\"]\npassword = \"x\"\n"),
    ("defaults workdir under a home, no jobs", 2, 11, &["`defaults.workdir` = \"/home/ops\""],
        "[defaults]\nworkdir = \"/home/ops\"\n"),
    ("global typo", 1, 1, &["did you mean `log_dir`?"],
        "log_dri = \"/var/log/x\"\n"),
    ("channel without type", 1, 11, &["has no `type`"],
        "[channels.x]\nurl_env = \"X\"\n"),
    ("channel with both url and url_env", 4, 11, &["both `url` and `url_env`"],
        "[channels.x]\ntype = \"ping\"\nurl = \"https://hc/x\"\nurl_env = \"X\"\n"),
    ("bad smtp url", 3, 8, &["not an SMTP URL"],
        "[channels.m]\ntype = \"email\"\nsmtp = \"mail.example.com\"\nfrom = \"a@b\"\nto = [\"c@d\"]\n"),
    ("bad state url", 1, 9, &["not a state store URL"],
        "state = \"mysql://x\"\n"),

    ("literal secret in a channel", 4, 1, &["unknown key `channels.hook.secret`", "secret_env = \"VAR_NAME\""],
        "[channels.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9000/batch\"\nsecret = \"hunter2\"\n"),
    ("typo in defaults", 2, 1, &["unknown key `defaults.retry`", "did you mean `retries`?"],
        "[defaults]\nretry = 2\n"),
    ("defaults channel unknown", 2, 24, &["unknown channel \"oncal\"", "did you mean \"oncall\"?"],
        "[defaults]\nnotify = { channels = [\"oncal\"] }\n[channels.oncall]\ntype = \"slack\"\nurl_env = \"X\"\n"),
];

fn cases() -> Vec<Case> {
    let single = |file| {
        move |&(name, line, col, frags, text): &Row| Case {
            name,
            files: vec![(file, text)],
            expect: frags.iter().map(|f| (file, line, col, *f)).collect(),
        }
    };
    let mut cases: Vec<Case> = JOB_CASES.iter().map(single(J)).collect();
    cases.extend(GLOBAL_CASES.iter().map(single(G)));
    cases.extend([
        Case {
            name: "bad job file name",
            files: vec![("jobs/Nightly.Report.toml", "command = [\"/bin/true\"]\n")],
            expect: vec![(
                "jobs/Nightly.Report.toml",
                1,
                1,
                "invalid job name \"Nightly.Report\"",
            )],
        },
        Case {
            name: "defaults error points at batchguard.toml",
            files: vec![
                (G, "[defaults]\ntimeout = \"1 hour\"\n"),
                (J, "command = [\"/bin/true\"]\n"),
            ],
            expect: vec![(G, 2, 11, "bad duration for `defaults.timeout`")],
        },
        Case {
            name: "defaults template unknown",
            files: vec![
                (
                    G,
                    "[defaults]\nrunbook = { url = \"https://wiki/{page}\" }\n",
                ),
                (J, "command = [\"/bin/true\"]\n"),
            ],
            expect: vec![(
                G,
                2,
                19,
                "unknown template name `{page}` in `defaults.runbook.url`",
            )],
        },
    ]);
    cases
}

/// A config directory with the case's files (and GLOBAL unless it has its own).
fn setup(c: &Case) -> TempDir {
    let dir = TempDir::new("cat");
    for (rel, text) in &c.files {
        dir.write(rel, text);
    }
    if !c.files.iter().any(|(rel, _)| *rel == G) {
        dir.write(G, GLOBAL);
    }
    dir
}

fn run_case(c: &Case) -> Result<(), String> {
    let dir = setup(c);
    let errs: Errors = match load(dir.path()) {
        Ok(_) => return Err(format!("[{}] loaded without error", c.name)),
        Err(e) => e,
    };
    let rendered = errs.to_string();
    for (rel, line, col, frag) in &c.expect {
        let file = dir.path().join(rel);
        let hit = errs.0.iter().any(|d| {
            d.file == file
                && d.line == *line
                && d.column == *col
                && (d.message.contains(frag) || d.help.as_deref().is_some_and(|h| h.contains(frag)))
        });
        if !hit {
            return Err(format!(
                "[{}] expected {rel}:{line}:{col} containing {frag:?}, got:\n{rendered}",
                c.name
            ));
        }
    }
    // every diagnostic names a file, a key or position, and renders
    for d in &errs.0 {
        assert!(!d.message.is_empty());
        assert!(rendered.contains(&d.message));
    }
    Ok(())
}

#[test]
fn catalogue() {
    let cases = cases();
    assert!(cases.len() >= 30);
    let failures: Vec<String> = cases.iter().filter_map(|c| run_case(c).err()).collect();
    assert!(
        failures.is_empty(),
        "{} failing cases:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn all_files_errors_are_collected() {
    let dir = TempDir::new("all");
    dir.write(G, "log_dri = 1\n");
    dir.write(
        "jobs/a.toml",
        "command = [\"/bin/true\"]\ntimout = \"1h\"\n",
    );
    dir.write(
        "jobs/b.toml",
        "command = 3\nretries = -1\nschedule = \"* * *\"\n",
    );
    dir.write("jobs/c.toml", "command = [\"/bin/true\"]\n");
    dir.write("jobs/README.md", "not a job");
    let errs = load(dir.path()).unwrap_err();
    let files: std::collections::BTreeSet<_> = errs.0.iter().map(|d| d.file.clone()).collect();
    assert_eq!(files.len(), 3, "{errs}");
    let b: Vec<_> = errs
        .0
        .iter()
        .filter(|d| d.file.ends_with("jobs/b.toml"))
        .collect();
    assert_eq!(b.len(), 3, "{errs}");
    // sorted by file, line
    let lines: Vec<usize> = b.iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![1, 2, 3]);
    assert!(errs.to_string().contains("configuration errors"));
}

#[test]
fn defaults_errors_are_reported_once() {
    let dir = TempDir::new("once");
    dir.write(
        G,
        "[defaults]\nworkdir = \"/root/x\"\nrunbook = { url = \"{nope}\" }\n",
    );
    for n in ["a", "b", "c"] {
        dir.write(&format!("jobs/{n}.toml"), "command = [\"/bin/true\"]\n");
    }
    let errs = load(dir.path()).unwrap_err();
    assert_eq!(errs.0.len(), 2, "{errs}");
}

#[test]
fn rendered_snippet() {
    let dir = TempDir::new("render");
    dir.write(G, "");
    let p = dir.write(
        "jobs/nightly.toml",
        "command = [\"/bin/true\"]\n\n\n\n\n\ntimout = \"45m\"\n",
    );
    let errs = load(dir.path()).unwrap_err();
    assert_eq!(
        errs.to_string(),
        format!(
            "error: unknown key `timout`\n  --> {}:7:1\n   |\n 7 | timout = \"45m\"\n   | ^^^^^^\n   = help: did you mean `timeout`?\n",
            p.display()
        )
    );
    assert_eq!(errs.0[0].key.as_deref(), Some("timout"));
}

#[test]
#[ignore]
fn show_all() {
    for c in cases() {
        let dir = setup(&c);
        println!("=== {}\n{}", c.name, load(dir.path()).unwrap_err());
    }
}
