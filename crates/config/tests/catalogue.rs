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
    files: &'static [(&'static str, &'static str)],
    /// (file relative to the config dir, line, column, fragment of message+help)
    expect: &'static [(&'static str, usize, usize, &'static str)],
}

const J: &str = "jobs/nightly.toml";

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "typo key with suggestion",
            files: &[(J, "command = [\"/bin/true\"]\ntimout = \"45m\"\n")],
            expect: &[
                (J, 2, 1, "unknown key `timout`"),
                (J, 2, 1, "did you mean `timeout`?"),
            ],
        },
        Case {
            name: "unknown key far from everything lists valid keys",
            files: &[(J, "command = [\"/bin/true\"]\nzzzzqqq = 1\n")],
            expect: &[(J, 2, 1, "valid keys here: `description`")],
        },
        Case {
            name: "wrong type",
            files: &[(J, "command = [\"/bin/true\"]\nretries = \"2\"\n")],
            expect: &[(
                J,
                2,
                11,
                "wrong type for `retries`: expected an integer, found string",
            )],
        },
        Case {
            name: "bad duration",
            files: &[(J, "command = [\"/bin/true\"]\ntimeout = \"45 minutes\"\n")],
            expect: &[(J, 2, 11, "bad duration for `timeout`")],
        },
        Case {
            name: "duration as integer",
            files: &[(J, "command = [\"/bin/true\"]\n[distributed]\nlease = 60\n")],
            expect: &[(J, 3, 9, "\"60s\"")],
        },
        Case {
            name: "bad size",
            files: &[(J, "command = [\"/bin/true\"]\nmemory_max = \"2 GiB\"\n")],
            expect: &[(J, 2, 14, "bad size for `memory_max`")],
        },
        Case {
            name: "bad rate",
            files: &[(
                J,
                "command = [\"/bin/true\"]\n[items]\nsource = [\"./list\"]\nrun = [\"./do\", \"{item}\"]\nrate = \"fast\"\n",
            )],
            expect: &[(J, 5, 8, "bad rate for `items.rate`")],
        },
        Case {
            name: "bad job file name",
            files: &[("jobs/Nightly.Report.toml", "command = [\"/bin/true\"]\n")],
            expect: &[(
                "jobs/Nightly.Report.toml",
                1,
                1,
                "invalid job name \"Nightly.Report\"",
            )],
        },
        Case {
            name: "bad lock name",
            files: &[(J, "command = [\"/bin/true\"]\nlock = \"Sales DB\"\n")],
            expect: &[(J, 2, 8, "invalid lock name \"Sales DB\"")],
        },
        Case {
            name: "unknown template name",
            files: &[(
                J,
                "command = [\"/bin/echo\", \"{dat}\"]\n[params]\ndate = \"{today}\"\n",
            )],
            expect: &[
                (J, 1, 25, "unknown template name `{dat}`"),
                (J, 1, 25, "did you mean `{date}`?"),
            ],
        },
        Case {
            name: "{item} in command",
            files: &[(J, "command = [\"/bin/echo\", \"{item}\"]\n")],
            expect: &[(J, 1, 25, "`{item}` is only available in `items.run`")],
        },
        Case {
            name: "unknown channel",
            files: &[(
                J,
                "command = [\"/bin/true\"]\n[notify]\nchannels = [\"oncall\", \"pager\"]\n",
            )],
            expect: &[(J, 3, 23, "unknown channel \"pager\"")],
        },
        Case {
            name: "unknown event",
            files: &[(
                J,
                "command = [\"/bin/true\"]\nnotify = { on = [\"failure\", \"failed\"] }\n",
            )],
            expect: &[(J, 2, 29, "unknown event \"failed\"")],
        },
        Case {
            name: "bad timezone",
            files: &[(
                J,
                "command = [\"/bin/true\"]\ntimezone = \"Mars/Olympus\"\n",
            )],
            expect: &[(J, 2, 12, "unknown time zone \"Mars/Olympus\"")],
        },
        Case {
            name: "bad cron",
            files: &[(J, "command = [\"/bin/true\"]\nschedule = \"61 * * * *\"\n")],
            expect: &[(J, 2, 12, "invalid schedule \"61 * * * *\"")],
        },
        Case {
            name: "6-field cron",
            files: &[(
                J,
                "command = [\"/bin/true\"]\nschedule = \"0 30 3 * * *\"\n",
            )],
            expect: &[(J, 2, 12, "expected 5 fields, found 6")],
        },
        Case {
            name: "unknown cron nickname",
            files: &[(J, "command = [\"/bin/true\"]\nschedule = \"@reboot\"\n")],
            expect: &[(J, 2, 12, "unknown nickname")],
        },
        Case {
            name: "quartz-only cron syntax",
            files: &[(J, "command = [\"/bin/true\"]\nschedule = \"0 3 L * *\"\n")],
            expect: &[(J, 2, 12, "unsupported field `L`")],
        },
        Case {
            name: "unclosed brace",
            files: &[(J, "command = [\"/bin/echo\", \"{date\"]\n")],
            expect: &[(J, 1, 25, "unclosed `{`")],
        },
        Case {
            name: "workdir under /home/alice",
            files: &[(
                J,
                "command = [\"/bin/true\"]\nworkdir = \"/home/alice/report\"\n",
            )],
            expect: &[(J, 2, 11, "personal home"), (J, 2, 11, "G10")],
        },
        Case {
            name: "log_dir under /root",
            files: &[("batchguard.toml", "log_dir = \"/root/logs\"\n")],
            expect: &[(
                "batchguard.toml",
                1,
                11,
                "`log_dir` = \"/root/logs\" is under a personal home",
            )],
        },
        Case {
            name: "artifact_dir under /home",
            files: &[("batchguard.toml", "\nartifact_dir = \"/home/bob/out\"\n")],
            expect: &[("batchguard.toml", 2, 16, "G10")],
        },
        Case {
            name: "workdir with ../ into /home",
            files: &[(
                J,
                "command = [\"/bin/true\"]\nworkdir = \"/srv/../home/bob/x\"\n",
            )],
            expect: &[(J, 2, 11, "(/home/bob/x)")],
        },
        Case {
            name: "relative workdir climbing into /home",
            files: &[(
                J,
                "command = [\"/bin/true\"]\nworkdir = \"../../../../../../../../../../../../home/carol\"\n",
            )],
            expect: &[(J, 2, 11, "(/home/carol)")],
        },
        Case {
            name: "both source and source_file",
            files: &[(
                J,
                "command = [\"/bin/true\"]\n[items]\nsource = [\"./list\"]\nsource_file = \"keys.txt\"\nrun = [\"./do\", \"{item}\"]\n",
            )],
            expect: &[(J, 4, 15, "mutually exclusive")],
        },
        Case {
            name: "neither source nor source_file",
            files: &[(
                J,
                "command = [\"/bin/true\"]\n[items]\nrun = [\"./do\", \"{item}\"]\n",
            )],
            expect: &[(J, 2, 2, "needs `source` or `source_file`")],
        },
        Case {
            name: "stream mode with run",
            files: &[(
                J,
                "command = [\"/bin/true\"]\n[items]\nsource = [\"./list\"]\nmode = \"stream\"\nrun = [\"./do\", \"{item}\"]\n",
            )],
            expect: &[(J, 5, 7, "not allowed with `items.mode = \"stream\"`")],
        },
        Case {
            name: "per-item without run",
            files: &[(
                J,
                "command = [\"/bin/true\"]\n[items]\nsource = [\"./list\"]\n",
            )],
            expect: &[(J, 2, 2, "per-item mode needs `items.run`")],
        },
        Case {
            name: "parallelism 0",
            files: &[(
                J,
                "command = [\"/bin/true\"]\n[items]\nsource = [\"./list\"]\nrun = [\"./do\"]\nparallelism = 0\n",
            )],
            expect: &[(J, 5, 15, "`items.parallelism` = 0 is out of range")],
        },
        Case {
            name: "typo in items with suggestion",
            files: &[(
                J,
                "command = [\"/bin/true\"]\n[items]\nsource = [\"./list\"]\nrun = [\"./do\"]\nparalelism = 2\n",
            )],
            expect: &[(J, 5, 1, "did you mean `parallelism`?")],
        },
        Case {
            name: "empty command",
            files: &[(J, "command = []\n")],
            expect: &[(J, 1, 11, "`command` must not be empty")],
        },
        Case {
            name: "command not an array",
            files: &[(J, "command = \"/bin/true --all\"\n")],
            expect: &[(
                J,
                1,
                11,
                "wrong type for `command`: expected an array of strings, found string",
            )],
        },
        Case {
            name: "missing command",
            files: &[(J, "description = \"x\"\n")],
            expect: &[(J, 1, 1, "missing required key `command`")],
        },
        Case {
            name: "literal secret in a channel",
            files: &[(
                "batchguard.toml",
                "[channels.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9000/batch\"\nsecret = \"hunter2\"\n",
            )],
            expect: &[
                (
                    "batchguard.toml",
                    4,
                    1,
                    "unknown key `channels.hook.secret`",
                ),
                ("batchguard.toml", 4, 1, "secret_env = \"VAR_NAME\""),
            ],
        },
        Case {
            name: "literal password in an email channel",
            files: &[(
                "batchguard.toml",
                "[channels.m]\ntype = \"email\"\nsmtp = \"smtp://h\"\nfrom = \"a@b\"\nto = [\"c@d\"]\npassword = \"x\"\n",
            )],
            expect: &[("batchguard.toml", 6, 1, "password_env")],
        },
        Case {
            name: "TOML syntax error",
            files: &[(J, "command = [\"/bin/true\"\ntimeout = \"1h\"\n")],
            expect: &[(J, 1, 23, "invalid TOML: missing comma")],
        },
        Case {
            name: "duplicate key",
            files: &[(
                J,
                "command = [\"/bin/true\"]\ntimeout = \"1h\"\ntimeout = \"2h\"\n",
            )],
            expect: &[(J, 3, 1, "duplicate key `timeout`")],
        },
        Case {
            name: "retries too large",
            files: &[(J, "command = [\"/bin/true\"]\nretries = 1000\n")],
            expect: &[(J, 2, 11, "between 0 and 100")],
        },
        Case {
            name: "bad concurrency value",
            files: &[(
                J,
                "command = [\"/bin/true\"]\nconcurrency = \"forbidden\"\n",
            )],
            expect: &[
                (J, 2, 15, "invalid value \"forbidden\" for `concurrency`"),
                (J, 2, 15, "did you mean \"forbid\"?"),
            ],
        },
        Case {
            name: "defaults error points at batchguard.toml",
            files: &[
                ("batchguard.toml", "[defaults]\ntimeout = \"1 hour\"\n"),
                (J, "command = [\"/bin/true\"]\n"),
            ],
            expect: &[(
                "batchguard.toml",
                2,
                11,
                "bad duration for `defaults.timeout`",
            )],
        },
        Case {
            name: "defaults template unknown",
            files: &[
                (
                    "batchguard.toml",
                    "[defaults]\nrunbook = { url = \"https://wiki/{page}\" }\n",
                ),
                (J, "command = [\"/bin/true\"]\n"),
            ],
            expect: &[(
                "batchguard.toml",
                2,
                19,
                "unknown template name `{page}` in `defaults.runbook.url`",
            )],
        },
        Case {
            name: "defaults workdir under a home, no jobs",
            files: &[("batchguard.toml", "[defaults]\nworkdir = \"/home/ops\"\n")],
            expect: &[(
                "batchguard.toml",
                2,
                11,
                "`defaults.workdir` = \"/home/ops\"",
            )],
        },
        Case {
            name: "typo in defaults",
            files: &[("batchguard.toml", "[defaults]\nretry = 2\n")],
            expect: &[
                ("batchguard.toml", 2, 1, "unknown key `defaults.retry`"),
                ("batchguard.toml", 2, 1, "did you mean `retries`?"),
            ],
        },
        Case {
            name: "defaults channel unknown",
            files: &[(
                "batchguard.toml",
                "[defaults]\nnotify = { channels = [\"oncal\"] }\n[channels.oncall]\ntype = \"slack\"\nurl_env = \"X\"\n",
            )],
            expect: &[
                ("batchguard.toml", 2, 24, "unknown channel \"oncal\""),
                ("batchguard.toml", 2, 24, "did you mean \"oncall\"?"),
            ],
        },
        Case {
            name: "global typo",
            files: &[("batchguard.toml", "log_dri = \"/var/log/x\"\n")],
            expect: &[("batchguard.toml", 1, 1, "did you mean `log_dir`?")],
        },
        Case {
            name: "channel without type",
            files: &[("batchguard.toml", "[channels.x]\nurl_env = \"X\"\n")],
            expect: &[("batchguard.toml", 1, 11, "has no `type`")],
        },
        Case {
            name: "channel with both url and url_env",
            files: &[(
                "batchguard.toml",
                "[channels.x]\ntype = \"ping\"\nurl = \"https://hc/x\"\nurl_env = \"X\"\n",
            )],
            expect: &[("batchguard.toml", 4, 11, "both `url` and `url_env`")],
        },
        Case {
            name: "bad smtp url",
            files: &[(
                "batchguard.toml",
                "[channels.m]\ntype = \"email\"\nsmtp = \"mail.example.com\"\nfrom = \"a@b\"\nto = [\"c@d\"]\n",
            )],
            expect: &[("batchguard.toml", 3, 8, "not an SMTP URL")],
        },
        Case {
            name: "bad state url",
            files: &[("batchguard.toml", "state = \"mysql://x\"\n")],
            expect: &[("batchguard.toml", 1, 9, "not a state store URL")],
        },
        Case {
            name: "schema_change wrong type",
            files: &[(
                J,
                "command = [\"/bin/true\"]\n[guideline]\nschema_change = \"yes\"\n",
            )],
            expect: &[(J, 3, 17, "wrong type for `guideline.schema_change`")],
        },
        Case {
            name: "bad reads value",
            files: &[(
                J,
                "command = [\"/bin/true\"]\n[guideline]\nreads = \"replicas\"\n",
            )],
            expect: &[(J, 3, 9, "did you mean \"replica\"?")],
        },
        Case {
            name: "bad env var name",
            files: &[(J, "command = [\"/bin/true\"]\n[env]\n\"MY-VAR\" = \"x\"\n")],
            expect: &[(J, 3, 1, "not a valid environment variable name")],
        },
        Case {
            name: "params with non-builtin template",
            files: &[(J, "command = [\"/bin/true\"]\n[params]\ndate = \"{foo}\"\n")],
            expect: &[(J, 3, 8, "unknown template name `{foo}` in `params.date`")],
        },
        Case {
            name: "max_attempts 0",
            files: &[(
                J,
                "command = [\"/bin/true\"]\n[items]\nsource = [\"./l\"]\nrun = [\"./r\"]\nmax_attempts = 0\n",
            )],
            expect: &[(J, 5, 16, "between 1 and 1000")],
        },
        Case {
            name: "negative expected_items",
            files: &[(
                J,
                "command = [\"/bin/true\"]\n[guideline]\nexpected_items = -5\n",
            )],
            expect: &[(J, 3, 18, "out of range")],
        },
        Case {
            name: "bad secret name",
            files: &[(
                J,
                "command = [\"/bin/true\"]\nsecrets = [\"db password\"]\n",
            )],
            expect: &[(J, 2, 12, "not an environment variable name")],
        },
        Case {
            name: "items as array of tables",
            files: &[(
                J,
                "command = [\"/bin/true\"]\n[[items]]\nsource = [\"./l\"]\n",
            )],
            expect: &[(J, 2, 1, "wrong type for `items`")],
        },
        Case {
            name: "zero timeout",
            files: &[(J, "command = [\"/bin/true\"]\ntimeout = \"0s\"\n")],
            expect: &[(J, 2, 11, "must be greater than zero")],
        },
        Case {
            name: "unknown template in runbook",
            files: &[(
                J,
                "command = [\"/bin/true\"]\n[runbook]\nverify = \"check {dtae}\"\n",
            )],
            expect: &[(
                J,
                3,
                10,
                "unknown template name `{dtae}` in `runbook.verify`",
            )],
        },
        Case {
            name: "template in items.scope with item",
            files: &[(
                J,
                "command = [\"/bin/true\"]\n[items]\nsource = [\"./l\"]\nrun = [\"./r\"]\nscope = \"{item}\"\n",
            )],
            expect: &[(J, 5, 9, "`{item}` is only available in `items.run`")],
        },
        Case {
            name: "timezone with wrong case",
            files: &[(J, "command = [\"/bin/true\"]\ntimezone = \"asia/tokyo\"\n")],
            expect: &[(J, 2, 12, "\"Asia/Tokyo\"")],
        },
        Case {
            name: "float for integer",
            files: &[(J, "command = [\"/bin/true\"]\nretries = 1.5\n")],
            expect: &[(J, 2, 11, "found float")],
        },
    ]
}

fn run_case(c: &Case) -> Result<(), String> {
    let dir = TempDir::new("cat");
    let mut has_global = false;
    for (rel, text) in c.files {
        has_global |= *rel == "batchguard.toml";
        dir.write(rel, text);
    }
    if !has_global {
        dir.write("batchguard.toml", GLOBAL);
    }
    let errs: Errors = match load(dir.path()) {
        Ok(_) => return Err(format!("[{}] loaded without error", c.name)),
        Err(e) => e,
    };
    let rendered = errs.to_string();
    for (rel, line, col, frag) in c.expect {
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
    dir.write("batchguard.toml", "log_dri = 1\n");
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
        "batchguard.toml",
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
    dir.write("batchguard.toml", "");
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
        let dir = TempDir::new("show");
        let mut has_global = false;
        for (rel, text) in c.files {
            has_global |= *rel == "batchguard.toml";
            dir.write(rel, text);
        }
        if !has_global {
            dir.write("batchguard.toml", GLOBAL);
        }
        println!("=== {}\n{}", c.name, load(dir.path()).unwrap_err());
    }
}
