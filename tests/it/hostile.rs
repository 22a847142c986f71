//! The job is untrusted (SPEC §4, issue #11): jobs running as `nobody`
//! under a root runner try what a hostile job would, against the SQLite
//! store and the PostgreSQL store. Every attempt must fail, and the store
//! and the other runs' records must stay intact.

use crate::harness::{Env, pid_alive};
use crate::receiver::hooked_env;
use crate::support::{cannot_run, is_root};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

/// Root, and a `nobody` who can reach the test's directory.
fn hostile_env(test: &str) -> Option<Env> {
    if !is_root() {
        cannot_run(test, "jobs as nobody need a root runner");
        return None;
    }
    let env = Env::new();
    open_to_nobody(&env);
    Some(env)
}

/// [`hostile_env`] and the stores to try it on: its own SQLite file, and
/// a PostgreSQL schema when a server answers.
fn hostile_stores(test: &str) -> Option<(Env, Vec<String>)> {
    let env = hostile_env(test)?;
    let mut stores = vec![env.state.clone()];
    stores.extend(postgres_state(test));
    Some((env, stores))
}

fn open_to_nobody(env: &Env) {
    std::fs::set_permissions(&env.root, std::fs::Permissions::from_mode(0o711)).unwrap();
    let drop_box = env.path("box");
    std::fs::create_dir_all(&drop_box).unwrap();
    std::fs::set_permissions(&drop_box, std::fs::Permissions::from_mode(0o777)).unwrap();
}

/// The PostgreSQL store in a fresh schema, when the server is there.
fn postgres_state(test: &str) -> Option<String> {
    let base = std::env::var("BATCHGUARD_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!(
        "hostile_{}_{}",
        std::process::id(),
        test.len()
            + std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as usize
    );
    match postgres::Client::connect(&base, postgres::NoTls) {
        Ok(_) => Some(format!("{base}?schema={schema}")),
        Err(e) => {
            cannot_run(test, &format!("PostgreSQL is not reachable: {e}"));
            None
        }
    }
}

/// The job's environment holds neither the store's URL nor any channel
/// secret, on either store.
#[test]
fn the_environment_holds_no_store_url_and_no_channel_secret() {
    let test = "the_environment_holds_no_store_url_and_no_channel_secret";
    let Some((mut env, stores)) = hostile_stores(test) else {
        return;
    };
    for state in stores {
        env.state = state.clone();
        env.global(
            "[channels.hook]\ntype = \"webhook\"\nurl_env = \"HOOK_URL\"\nsecret_env = \"HOOK_SECRET\"\n",
        );
        env.hooked_job("snoop", "command = [\"env\"]\nuser = \"nobody\"");
        let mut c = env.cmd(&["run", "snoop"]);
        c.env("HOOK_URL", "http://127.0.0.1:9/hook-url-secret")
            .env("HOOK_SECRET", "hook-signing-secret");
        env.run_cmd(c).code(0);
        let log = env.log_of(&env.last_run("snoop"));
        for leak in [
            "hook-url-secret",
            "hook-signing-secret",
            "BATCHGUARD_STATE",
            state.as_str(),
        ] {
            assert!(
                !log.contains(leak),
                "{leak:?} reached the job ({state}):\n{log}"
            );
        }
        assert!(
            log.contains("BATCHGUARD_PUBLISH="),
            "the publish socket is handed down"
        );
    }
}

/// `exec 7</root-only-file; batchguard run J`: the job (as nobody) cannot
/// read the descriptor its runner inherited.
#[test]
fn inherited_descriptors_never_reach_the_job() {
    let Some(env) = hostile_env("inherited_descriptors_never_reach_the_job") else {
        return;
    };
    let secret = env.write("root-only", "the root-only secret\n");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    env.job(
        "fdthief",
        "command = [\"sh\", \"-c\", \"cat <&7; ls -l /proc/self/fd\"]\nuser = \"nobody\"\n",
    );
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!(
            "exec 7<{}; exec {} --config-dir {} run fdthief",
            secret.display(),
            crate::harness::BIN,
            env.config.display()
        ))
        .env("BATCHGUARD_STATE", &env.state);
    let done = env.run_cmd(c);
    let log = env.log_of(&env.last_run("fdthief"));
    assert!(!log.contains("the root-only secret"), "fd 7 leaked:\n{log}");
    assert!(!log.contains(" 7 -> "), "fd 7 is open in the job:\n{log}");
    assert!(done.out.status.code().is_some());
}

/// `publish` works from a `nobody` job (it asks the runner; the store file
/// itself is private), and the runner renames with the job's permissions
/// only: a file cannot be published over a root-only path.
#[test]
fn publish_works_for_nobody_and_only_with_nobodys_rights() {
    let test = "publish_works_for_nobody_and_only_with_nobodys_rights";
    let Some((mut env, stores)) = hostile_stores(test) else {
        return;
    };
    let drop_box = env.path("box");
    let root_dir = env.path("rootonly");
    std::fs::create_dir_all(&root_dir).unwrap();
    std::fs::set_permissions(&root_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let guarded = env.write("rootonly/guarded", "root's file\n");
    for state in stores {
        env.state = state;
        env.job(
            "publisher",
            &format!(
                "command = [\"sh\", \"-c\", \"echo result > {b}/tmp.$$ && {bin} publish {b}/tmp.$$ {b}/result && echo result > {b}/evil.$$ && {bin} publish {b}/evil.$$ {g}; echo evil=$?\"]\nuser = \"nobody\"\n",
                b = drop_box.display(),
                bin = crate::harness::BIN,
                g = guarded.display()
            ),
        );
        let log = env.log_of(&env.run_ok("publisher"));
        assert_eq!(
            std::fs::read_to_string(drop_box.join("result")).unwrap(),
            "result\n",
            "{log}"
        );
        assert!(
            !log.contains("evil=0"),
            "published over a root-only file:\n{log}"
        );
        assert_eq!(std::fs::read_to_string(&guarded).unwrap(), "root's file\n");
        std::fs::remove_file(drop_box.join("result")).unwrap();
    }
    // The SQLite store is private to its owner.
    let db = env.path("state.db");
    let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o077 & !0o040, 0, "state.db is {mode:o}");
}

/// What a job with write access to the store could forge (here written
/// directly): a running run with a dead runner and the process group of an
/// unrelated process, and a finished run whose `log_path` names a root-only
/// file. The runner reads both back and must neither signal the process
/// nor delete the file.
#[test]
fn forged_rows_make_the_runner_signal_and_delete_nothing() {
    let Some(env) = hostile_env("forged_rows_make_the_runner_signal_and_delete_nothing") else {
        return;
    };
    env.global("log_retention = \"1s\"\n");
    env.job("victim", "command = [\"true\"]\n");
    env.run(&["run", "victim"]).code(0);
    let mut bystander = Command::new("setsid")
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    let pgid = bystander.id() as i64;
    let precious = env.write("precious", "do not delete\n");
    let db = env.path("state.db");
    let forge = format!(
        r#"
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.row_factory = sqlite3.Row
row = dict(c.execute("SELECT * FROM runs ORDER BY seq DESC LIMIT 1").fetchone())
del row["seq"]
fake = dict(row, id="FORGEDRUN", outcome="running", ended_at=None, ended_ms=None,
            duration_ms=None, pid=999999, pid_start=1, pgid={pgid},
            cgroup="/sys/fs/cgroup/memory", heartbeat_ms=0)
cols = ",".join(fake)
c.execute(f"INSERT INTO runs ({{cols}}) VALUES ({{','.join('?' * len(fake))}})", list(fake.values()))
c.execute("UPDATE runs SET log_path = ?, started_ms = 0 WHERE id = ?", ("{precious}", row["id"]))
# The forged run holds the job's lock: the next run finds a dead holder
# and cleans up after it.
c.execute("INSERT OR REPLACE INTO locks (lock_name, fence, run_id, lease_until_ms) VALUES (?, ?, 'FORGEDRUN', 0)",
          (row["lock_name"], row["fence"]))
c.commit()
"#,
        precious = precious.display()
    );
    let st = Command::new("python3")
        .args(["-c", &forge])
        .arg(&db)
        .status()
        .unwrap();
    assert!(st.success());
    // The next run finds the forged holder dead and cleans up after it,
    // then prunes old logs; status reaps what is left.
    std::thread::sleep(Duration::from_millis(1100));
    env.run(&["run", "victim"]).code(0);
    env.run(&["status"]).code(0);
    assert!(
        pid_alive(bystander.id() as i32),
        "an unrelated process group was signalled"
    );
    assert_eq!(
        std::fs::read_to_string(&precious).unwrap(),
        "do not delete\n"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
}

/// Secret values passed as params are `***` in the record, `show` and the
/// notification's re-run command, with a note saying what to supply.
#[test]
fn secret_params_are_redacted_everywhere() {
    let (env, hook) = hooked_env("");
    let envfile = env.write("job.env", "DB_PASSWORD=sup3r-secret-pw\n");
    env.hooked_job(
        "paramjob",
        &format!(
            "command = [\"sh\", \"-c\", \"exit 2\"]\nenv_file = \"{}\"\n[params]\npw = \"none\"",
            envfile.display()
        ),
    );
    env.run(&["run", "paramjob", "--param", "pw=sup3r-secret-pw"])
        .code(2);
    let show = env.run(&[
        "show",
        env.last_run("paramjob")["id"].as_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(
        !show.stdout().contains("sup3r-secret-pw"),
        "{}",
        show.stdout()
    );
    let text = env.run(&["show", env.last_run("paramjob")["id"].as_str().unwrap()]);
    assert!(
        !text.stdout().contains("sup3r-secret-pw"),
        "{}",
        text.stdout()
    );
    hook.wait_for_one("the notification", 10);
    let p = hook.take()[0].json();
    let rerun = p["rerun"].as_str().unwrap();
    assert!(
        rerun.contains("pw=***") && rerun.contains("supply"),
        "{rerun}"
    );
    assert!(!p.to_string().contains("sup3r-secret-pw"));
}

/// Terminal escape sequences a job prints reach no terminal: `logs` shows
/// them escaped.
#[test]
fn terminal_escapes_are_shown_escaped() {
    let env = Env::new();
    env.job(
        "escaper",
        "command = [\"printf\", \"\\\\033]0;pwned\\\\007\\\\033[2Jcleared\\\\n\"]\n",
    );
    let id = env.run_ok("escaper")["id"].as_str().unwrap().to_string();
    let out = env.run(&["logs", &id]);
    assert!(
        !out.out.stdout.contains(&0x1b),
        "a raw ESC reached the terminal"
    );
    out.stdout_has("\\x1b]0;pwned\\x07");
}

/// A key source that never ends stops at `items.max_keys` with a clear
/// error, before any work, and the runner stays small.
#[test]
fn a_key_source_that_never_ends_stops_at_max_keys() {
    let env = Env::new();
    let marker = env.path("worked");
    env.job(
        "endless",
        &format!(
            "[items]\nsource = [\"yes\", \"same-key\"]\nrun = [\"touch\", \"{}\"]\nmax_keys = 100000\n",
            marker.display()
        ),
    );
    let t = std::time::Instant::now();
    let d = env.run(&["run", "endless"]);
    d.code(1);
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    let run = env.last_run("endless");
    assert!(
        run["error"]
            .as_str()
            .unwrap_or_default()
            .contains("max_keys"),
        "{run}"
    );
    assert!(!marker.exists(), "work started despite the bad source");
}

/// Issue #10: a runner that cron started as the job's own user (the old
/// cron line) used to fail with 126 (a setuid to who it already was); now
/// it skips the switch and says that memory is then polled.
#[test]
fn a_runner_started_as_the_jobs_user_skips_the_switch() {
    let Some(env) = hostile_env("a_runner_started_as_the_jobs_user_skips_the_switch") else {
        return;
    };
    let drop_box = env.path("box");
    std::fs::write(
        env.config.join("batchguard.toml"),
        format!("log_dir = \"{}/log\"\n", drop_box.display()),
    )
    .unwrap();
    std::fs::set_permissions(&env.config, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        env.config.join("jobs"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    env.job("mine", "command = [\"id\", \"-un\"]\nuser = \"nobody\"\n");
    let state = format!("sqlite:{}/state.db", drop_box.display());
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        crate::harness::BIN,
    ])
    .arg("--config-dir")
    .arg(&env.config)
    .args(["--state", &state, "run", "mine"])
    .current_dir("/");
    let done = env.run_cmd(c);
    done.code(0);
    let mut c = env.cmd(&["runs", "mine", "--format", "json"]);
    c.env("BATCHGUARD_STATE", &state);
    let runs: serde_json::Value = serde_json::from_slice(&env.run_cmd(c).out.stdout).unwrap();
    let log = std::fs::read_to_string(runs[0]["log_path"].as_str().unwrap()).unwrap();
    assert!(log.contains("stdout nobody"), "{log}");
    assert!(log.contains("no privilege switch"), "{log}");
}

/// cron, a shell's `>&-` or a careless wrapper can start batchguard with
/// descriptors 0-2 closed. Then the next file or socket the runner opens
/// would become its "standard output" and receive what it prints: the
/// entry point opens /dev/null on them first, as Rust's own start-up
/// would. SQLite guards its own files; the PostgreSQL connection is a
/// plain socket, which is what this catches.
#[test]
fn closed_standard_descriptors_are_dev_null_in_the_runner() {
    let Some((env, stores)) =
        hostile_stores("closed_standard_descriptors_are_dev_null_in_the_runner")
    else {
        return;
    };
    for state in stores {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "exec {} --config-dir {} exec --name closedfds -- \
                 sh -c 'for fd in 0 1 2; do echo \"runner fd $fd: $(readlink /proc/$PPID/fd/$fd)\"; done' \
                 <&- >&- 2>&-",
                crate::harness::BIN,
                env.config.display()
            ))
            .env("BATCHGUARD_STATE", &state)
            .env_remove("BATCHGUARD_CGROUP");
        env.run_cmd(c).code(0);
        let d = env.run(&["--state", &state, "runs", "closedfds", "--format", "json"]);
        d.code(0);
        let runs: serde_json::Value = d.json();
        let run = &runs[0];
        assert_eq!(run["outcome"], "success", "{state}: {run}");
        let log = env.log_of(run);
        for fd in 0..3 {
            assert!(
                log.contains(&format!("runner fd {fd}: /dev/null")),
                "{state}: fd {fd} of the runner is not /dev/null:\n{log}"
            );
        }
    }
}
