//! The operator's first hour: what a newcomer and a cron mail see. Plain
//! diagnostics off a terminal, read commands that fail instead of answering
//! wrongly, and re-run commands that work when pasted.

use crate::harness::Env;

#[test]
fn diagnostics_written_to_a_file_carry_no_colour_codes() {
    let env = Env::new();
    env.job("tiny", "command = [\"true\"]\n");
    let plain = env.run_with(&["validate"], &[("BATCHGUARD_LOG", "debug")]);
    plain.code(0);
    assert!(
        plain.stderr().contains("DEBUG"),
        "debug lines expected: {}",
        plain.stderr()
    );
    assert!(
        !plain.stderr().contains('\u{1b}'),
        "escape codes in a piped stderr: {:?}",
        plain.stderr()
    );
    let forced = env.run_with(
        &["validate"],
        &[("BATCHGUARD_LOG", "debug"), ("CLICOLOR_FORCE", "1")],
    );
    assert!(
        forced.stderr().contains('\u{1b}'),
        "CLICOLOR_FORCE=1 asks for colour: {:?}",
        forced.stderr()
    );
}

/// `BATCHGUARD_LOG` takes tracing's directives: a target's own level
/// shows that target's lines only, and a value that is no filter says so
/// on stderr (once, before anything else) and leaves the warnings on.
#[test]
fn the_diagnostics_filter_takes_targets_and_names_a_bad_value() {
    let env = Env::new();
    env.job("tiny", "command = [\"true\"]\n");
    let ours = env.run_with(&["run", "tiny"], &[("BATCHGUARD_LOG", "batchguard=debug")]);
    ours.code(0);
    assert!(ours.stderr().contains("DEBUG"), "{}", ours.stderr());
    assert!(ours.stderr().contains("run recorded"), "{}", ours.stderr());
    let other = env.run_with(
        &["run", "tiny"],
        &[("BATCHGUARD_LOG", "batchguard_supervise=debug")],
    );
    other.code(0);
    assert!(
        !other.stderr().contains("run recorded"),
        "{}",
        other.stderr()
    );
    let bad = env.run_with(&["run", "tiny"], &[("BATCHGUARD_LOG", "batchguard=loud")]);
    bad.code(0);
    assert!(
        bad.stderr()
            .starts_with("batchguard: BATCHGUARD_LOG=\"batchguard=loud\" is not understood"),
        "{}",
        bad.stderr()
    );
    assert!(!bad.stderr().contains("DEBUG"), "{}", bad.stderr());
}

/// Every read command (SPEC §8), about `job` and `run`.
fn read_commands<'a>(job: &'a str, run: &'a str) -> Vec<Vec<&'a str>> {
    vec![
        vec!["status"],
        vec!["runs", job],
        vec!["show", run],
        vec!["logs", run],
        vec!["ledger", job],
        vec!["check"],
    ]
}

#[test]
fn read_commands_fail_on_a_missing_config_dir_or_a_broken_global_file() {
    let env = Env::new();
    env.job("tiny", "command = [\"true\"]\n");
    env.run(&["run", "tiny"]).code(0);
    let run_id = env.last_run("tiny")["id"].as_str().unwrap().to_string();
    let nope = env.path("nope");
    let nope = nope.to_str().unwrap();
    for args in read_commands("tiny", &run_id) {
        let c = crate::support::batchguard(
            crate::harness::BIN,
            std::path::Path::new(nope),
            &env.state,
            &env.root,
            &args,
        );
        env.run_cmd(c).code(78).stderr_has("does not exist");
    }
    std::fs::write(env.config.join("batchguard.toml"), "lease = \"soon\"\n").unwrap();
    for args in read_commands("tiny", &run_id) {
        env.run(&args).code(78).stderr_has("batchguard.toml");
    }
}

#[test]
fn read_commands_never_create_a_state_store() {
    let env = Env::new();
    env.job("tiny", "command = [\"true\"]\n");
    let dir = env.path("nonexistent-dir");
    let state = format!("sqlite:{}/x/s.db", dir.display());
    for args in read_commands("tiny", "01NOSUCHRUN") {
        let mut full = vec!["--state", &state];
        full.extend(&args);
        env.run(&full)
            .code(69)
            .stderr_has(&format!("{}/x/s.db", dir.display()));
        assert!(!dir.exists(), "{args:?} created {}", dir.display());
    }
}

#[test]
fn an_unknown_job_is_exit_1_naming_the_known_ones() {
    let env = Env::new();
    env.job("tiny", "command = [\"true\"]\n");
    env.run(&["run", "tiny"]).code(0);
    for args in [vec!["runs", "nosuchjob"], vec!["ledger", "nosuchjob"]] {
        env.run(&args).code(1).stderr_has("known jobs: tiny");
    }
    // A configured job that never ran is no error: it has no runs yet.
    env.job("fresh", "command = [\"true\"]\n");
    let d = env.run(&["runs", "fresh", "--format", "json"]);
    d.code(0);
    assert_eq!(d.json(), serde_json::json!([]));
}

/// `status`, `runs` and `show` record what they find (a lost run) but
/// never spend time delivering: the notification waits in the outbox for
/// the watchdog or the next run.
#[test]
fn read_commands_record_a_lost_run_but_leave_its_notification_to_the_watchdog() {
    use crate::harness::{sigkill_runner, wait_for};
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use std::time::Duration;
    let (env, hook) = crate::receiver::hooked_env("");
    let pidfile = env.pid_job(
        "fragile",
        "exec sleep 300",
        "[notify]\non = [\"lost\"]\nchannels = [\"hook\"]\n",
    );
    let (mut runner, job_pid) = env.spawn_job(&["run", "fragile"], &pidfile);
    sigkill_runner(&mut runner);
    kill(Pid::from_raw(job_pid), Signal::SIGKILL).unwrap();
    wait_for("the job to go", Duration::from_secs(5), || {
        !crate::harness::pid_alive(job_pid)
    });
    let st = env.run(&["status", "--format", "json"]);
    st.code(0);
    assert_eq!(st.json()["jobs"][0]["outcome"], "lost");
    assert_eq!(env.last_run("fragile")["outcome"], "lost");
    assert_eq!(hook.count(), 0, "a read command delivered a notification");
    env.run(&["watchdog"]).code(0);
    hook.wait_for_one("the lost notification", 10);
    assert_eq!(hook.take()[0].json()["event"], "lost");
}

/// The re-run command of a run, pasted into a shell that has none of the
/// runner's environment (cron's), with `batchguard` on the PATH.
fn paste(env: &Env, rerun: &str) -> crate::harness::Done {
    let bin_dir = std::path::Path::new(crate::harness::BIN).parent().unwrap();
    let mut c = std::process::Command::new("sh");
    c.arg("-c")
        .arg(rerun)
        .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
        .env_remove("BATCHGUARD_STATE")
        .env_remove("BATCHGUARD_CONFIG_DIR")
        .env_remove("BATCHGUARD_CGROUP")
        .current_dir("/");
    env.run_cmd(c)
}

#[test]
fn the_rerun_of_an_exec_run_is_the_exec_command_with_config_dir_and_state() {
    let env = Env::new();
    let marker = env.path("ran");
    let script = format!("echo x >> {}; exit 3", marker.display());
    env.run(&["exec", "--name", "fixup", "--", "sh", "-c", &script])
        .code(3);
    let first = env.last_run("fixup");
    assert_eq!(first["adhoc"], true);
    let rerun = first["rerun"].as_str().expect("rerun recorded").to_string();
    assert!(rerun.contains(" exec "), "{rerun}");
    assert!(rerun.contains("--config-dir"), "{rerun}");
    assert!(rerun.contains("--state"), "{rerun}");
    paste(&env, &rerun).code(3);
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "x\nx\n");
    let runs = env.runs("fixup");
    assert_eq!(runs.len(), 2, "the pasted command ran the same ad-hoc job");
    assert_eq!(runs[0]["rerun"], first["rerun"]);
}

#[test]
fn the_rerun_of_a_job_file_run_names_the_file_the_scope_and_the_params() {
    let env = Env::new();
    let marker = env.path("ran");
    let file = env.write(
        "elsewhere.toml",
        &format!(
            "command = [\"sh\", \"-c\", \"echo $BATCHGUARD_SCOPE >> {}; exit 4\"]\n",
            marker.display()
        ),
    );
    env.run(&[
        "run",
        "--file",
        file.to_str().unwrap(),
        "--scope",
        "2026-12-01",
    ])
    .code(4);
    let rerun = env.last_run("elsewhere")["rerun"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(rerun.contains("--file"), "{rerun}");
    paste(&env, &rerun).code(4);
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "2026-12-01\n2026-12-01\n"
    );
}

#[test]
fn exec_under_the_name_of_a_configured_job_is_a_usage_error() {
    let env = Env::new();
    env.job("nightly", "command = [\"false\"]\n");
    env.run(&["run", "nightly"]).code(1);
    env.run(&["exec", "--name", "nightly", "--", "true"])
        .code(2)
        .stderr_has("configured job");
    let runs = env.runs("nightly");
    assert_eq!(runs.len(), 1, "nothing recorded for the refused exec");
    assert_eq!(runs[0]["adhoc"], false);
}

/// `publish` needs only what the contract puts in the job's environment.
#[test]
fn publish_finds_its_run_from_the_run_id_alone() {
    let env = Env::new();
    let (src, dest) = (env.path("result.tmp"), env.path("result"));
    env.job(
        "report",
        &format!(
            "command = [\"sh\", \"-c\", \"echo fresh > {src}; env -u BATCHGUARD_PUBLISH -u BATCHGUARD_LOCK {bin} publish {src} {dest}\"]\n",
            src = src.display(),
            dest = dest.display(),
            bin = crate::harness::BIN,
        ),
    );
    env.run(&["run", "report"]).code(0);
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "fresh\n");
}

#[test]
fn validate_checks_the_program_and_the_channel_variables_on_this_host() {
    let env = Env::new();
    env.job("good", "command = [\"true\"]\n");
    env.run(&["validate"]).code(0);
    env.job(
        "typo",
        "command = [\"/usr/bin/no-such-program\", \"--go\"]\n",
    );
    env.run(&["validate"])
        .code(78)
        .stderr_has("/usr/bin/no-such-program")
        .stderr_has("typo.toml");
    env.run(&["validate", "--offline"]).code(0);
    std::fs::remove_file(env.config.join("jobs/typo.toml")).unwrap();
    env.global("[channels.oncall]\ntype = \"slack\"\nurl_env = \"BG_TEST_UNSET_SLACK_URL\"\n");
    env.run(&["validate"])
        .code(78)
        .stderr_has("BG_TEST_UNSET_SLACK_URL")
        .stderr_has("channels.oncall.url_env");
    env.run_with(
        &["validate"],
        &[("BG_TEST_UNSET_SLACK_URL", "https://hooks.example/x")],
    )
    .code(0);
    // An email channel's SMTP credentials, once declared, must be set too.
    env.global(
        "[channels.mail]\ntype = \"email\"\nsmtp = \"smtp://127.0.0.1:2525\"\nfrom = \"a@b.example\"\nto = [\"c@d.example\"]\nusername_env = \"BG_TEST_SMTP_USER\"\npassword_env = \"BG_TEST_SMTP_PASS\"\n",
    );
    env.run_with(&["validate"], &[("BG_TEST_SMTP_USER", "batch")])
        .code(78)
        .stderr_has("BG_TEST_SMTP_PASS")
        .stderr_has("channels.mail.password_env");
    env.run_with(
        &["validate"],
        &[("BG_TEST_SMTP_USER", "batch"), ("BG_TEST_SMTP_PASS", "pw")],
    )
    .code(0);
}

#[test]
fn cron_install_into_a_missing_directory_says_so_with_exit_73() {
    let env = Env::new();
    env.job(
        "nightly",
        "command = [\"true\"]\nschedule = \"0 3 * * *\"\n",
    );
    let missing = env.path("no-cron.d");
    env.run(&["cron", "install", "--dir", missing.to_str().unwrap()])
        .code(73)
        .stderr_has("does not exist");
    assert!(!missing.exists());
}

#[test]
fn status_text_shows_every_time_in_one_zone_and_a_state_of_its_own() {
    let env = Env::new();
    env.job(
        "tokyo",
        "command = [\"false\"]\nschedule = \"30 3 * * *\"\ntimezone = \"Asia/Tokyo\"\n",
    );
    env.job("fine", "command = [\"true\"]\n");
    env.run(&["run", "tokyo"]).code(1);
    env.run(&["run", "fine"]).code(0);
    let d = env.run_with(&["status"], &[("TZ", "UTC")]);
    d.code(0);
    let text = d.stdout();
    assert!(!text.contains("+09:00"), "{text}");
    let tokyo = text.lines().find(|l| l.starts_with("tokyo")).unwrap();
    assert_eq!(tokyo.matches("+00:00").count(), 2, "{tokyo}");
    assert!(tokyo.ends_with("FAILING"), "{tokyo}");
    let fine = text.lines().find(|l| l.starts_with("fine")).unwrap();
    assert!(fine.ends_with("ok"), "{fine}");
}

#[test]
fn show_says_when_a_run_had_no_memory_limit() {
    let env = Env::new();
    env.job("free", "command = [\"true\"]\n");
    env.job("bounded", "command = [\"true\"]\nmemory_max = \"64MiB\"\n");
    for job in ["free", "bounded"] {
        env.run(&["run", job]).code(0);
    }
    let show = |job: &str| {
        let id = env.last_run(job)["id"].as_str().unwrap().to_string();
        let d = env.run(&["show", &id]);
        d.code(0);
        d.stdout()
    };
    let free = show("free");
    assert!(free.contains("no memory_max"), "{free}");
    assert!(!free.contains("(none)"), "{free}");
    let bounded = show("bounded");
    assert!(bounded.contains("of memory_max 64"), "{bounded}");
}

/// Cron mails every line the watchdog prints: a channel that stays down
/// is said once, not every minute.
#[test]
fn the_watchdog_is_silent_while_a_down_channel_waits_for_its_retry() {
    let env = Env::new();
    let port = crate::receiver::free_port();
    env.global(&format!(
        "[channels.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{port}/\"\n"
    ));
    env.hooked_job("flaky", "command = [\"false\"]");
    env.run(&["run", "flaky"])
        .code(1)
        .stderr_has("notification not delivered");
    for _ in 0..2 {
        let w = env.run(&["watchdog"]);
        w.code(0);
        assert_eq!(w.stderr(), "", "the watchdog spoke about old news");
    }
}

#[test]
fn completions_and_the_man_page_come_from_the_cli_definition() {
    let env = Env::new();
    let bash = env.run(&["completions", "bash"]);
    bash.code(0);
    let text = bash.stdout();
    assert!(text.contains("complete -F"), "not a bash completion script");
    for sub in ["run", "exec", "status", "ledger", "cron", "completions"] {
        assert!(text.contains(sub), "bash completion lacks {sub}");
    }
    for shell in ["zsh", "fish"] {
        env.run(&["completions", shell])
            .code(0)
            .stdout_has("config-dir");
    }
    env.run(&["completions", "tcsh"]).code(2);
    let man = env.run(&["man"]);
    man.code(0);
    let page = man.stdout();
    assert!(page.starts_with(".ie") || page.starts_with(".TH"), "{page}");
    assert!(page.contains(".TH batchguard 1"), "no title");
    assert!(page.contains(".SH \"RUN\""), "no section per subcommand");
    assert!(page.contains(".SH \"EXIT STATUS\""), "no exit codes");
    assert!(page.contains("\\-\\-memory\\-max"), "exec flags missing");
    // The help texts point to the project's reference, never a SPEC.
    let help = env.run(&["--help"]).stdout();
    assert!(help.contains("docs/reference.md"), "{help}");
    assert!(!help.contains("SPEC"), "{help}");
}

/// One typo must not hide the audit of every other job: the broken job is
/// in the report with a failing `config` finding that points at the error.
#[test]
fn check_reports_a_broken_job_beside_the_others() {
    let env = Env::new();
    env.job("good", "command = [\"true\"]\n");
    env.job("typo", "command = [\"true\"]\ntimout = \"5m\"\n");
    let d = env.create_store().run(&["check", "--format", "json"]);
    d.code(1);
    let report = d.json();
    let jobs = report["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "{report}");
    let good = jobs.iter().find(|j| j["job"] == "good").unwrap();
    assert_eq!(good["rules"].as_array().unwrap().len(), 16);
    let typo = jobs.iter().find(|j| j["job"] == "typo").unwrap();
    let finding = &typo["rules"][0];
    assert_eq!(finding["id"], "config");
    assert_eq!(finding["status"], "fail");
    assert_eq!(finding["line"], 2);
    assert_eq!(finding["column"], 1);
    assert!(
        finding["file"]
            .as_str()
            .unwrap()
            .ends_with("jobs/typo.toml"),
        "{finding}"
    );
    assert!(
        finding["message"].as_str().unwrap().contains("timeout"),
        "the fix is named: {finding}"
    );
    env.run(&["check"]).code(1).stdout_has("typo.toml:2:1");
    // A named job that does not exist is still exit 1, not an audit.
    env.run(&["check", "nosuchjob"]).code(1);
}

/// A schema change declared with its reference but no reviewer is exactly
/// what G12 reports: a fail of that rule, not a load error.
#[test]
fn an_unreviewed_schema_change_is_g12s_fail_not_a_load_error() {
    let env = Env::new();
    env.job(
        "migrate",
        "command = [\"true\"]\n[guideline]\nschema_change = { ref = \"PR-1\" }\n",
    );
    env.run(&["validate"]).code(0);
    let g12 = env.create_store().check_rule("migrate", "G12");
    assert_eq!(g12["status"], "fail", "{g12}");
    let msg = g12["message"].as_str().unwrap();
    assert!(msg.contains("PR-1") && msg.contains("reviewed_by"), "{msg}");
}

/// `batchguard runs JOB | head -1` at 3 a.m.: when the reader goes away
/// the command ends as `ls` would (SIGPIPE), without a panic and its
/// backtrace on the terminal.
#[test]
fn a_read_command_whose_reader_goes_away_ends_by_sigpipe() {
    use std::os::unix::process::ExitStatusExt;
    let env = Env::new();
    for _ in 0..3 {
        env.run(&["exec", "--name", "piped", "--", "true"]).code(0);
    }
    for args in [
        &["runs", "piped"][..],
        &["runs", "piped", "--format", "json"],
        &["status"],
    ] {
        let mut c = env.cmd(args);
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().expect("spawn batchguard");
        // The reader is gone before the command writes its first line.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {:?}\n{stderr}",
            out.status
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// The binary takes GCC's unwinder from libgcc_eh.a (build.rs): starting
/// it loads no libgcc_s.so, one library fewer on every run's path.
#[test]
fn the_binary_does_not_load_libgcc_s() {
    let image = std::fs::read(crate::harness::BIN).unwrap();
    let needed = b"libgcc_s.so.1\0";
    assert!(
        !image.windows(needed.len()).any(|w| w == needed),
        "{} still names libgcc_s.so.1 (its DT_NEEDED)",
        crate::harness::BIN
    );
}
