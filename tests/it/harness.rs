//! A small fluent harness around the real `batchguard` binary: each test gets
//! its own config dir, state database and log dir under a temp dir, and
//! failures print the command, stdout and stderr.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_batchguard");

pub struct Env {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub config: PathBuf,
    pub logs: PathBuf,
    pub state: String,
}

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::Builder::new()
            .prefix("bg-it-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let root = tmp.path().to_path_buf();
        let config = root.join("etc");
        std::fs::create_dir_all(config.join("jobs")).unwrap();
        let logs = root.join("log");
        let state = format!("sqlite:{}", root.join("state.db").display());
        let env = Env {
            _tmp: tmp,
            root,
            config,
            logs,
            state,
        };
        env.global("");
        env
    }

    /// Write batchguard.toml: log_dir in the temp dir, plus `extra`.
    pub fn global(&self, extra: &str) -> &Env {
        let text = format!("log_dir = \"{}\"\n{extra}\n", self.logs.display());
        std::fs::write(self.config.join("batchguard.toml"), text).unwrap();
        self
    }

    pub fn job(&self, name: &str, toml: &str) -> &Env {
        std::fs::write(self.config.join("jobs").join(format!("{name}.toml")), toml).unwrap();
        self
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = crate::support::batchguard(BIN, &self.config, &self.state, &self.root, args);
        c.env_remove("BATCHGUARD_CGROUP");
        c
    }

    pub fn run(&self, args: &[&str]) -> Done {
        self.run_cmd(self.cmd(args))
    }

    /// Run with extra environment variables.
    pub fn run_with(&self, args: &[&str], vars: &[(&str, &str)]) -> Done {
        let mut c = self.cmd(args);
        c.envs(vars.iter().copied());
        self.run_cmd(c)
    }

    /// Write job `name`: the top-level `body`, then a `[notify]` table
    /// sending to the channel `hook` (see `receiver::webhook_receiver`).
    pub fn hooked_job(&self, name: &str, body: &str) -> &Env {
        self.job(name, &format!("{body}\n[notify]\nchannels = [\"hook\"]\n"))
    }

    /// Write job `name`: `sh -c SCRIPT`, which first writes the shell's pid
    /// to the file returned (for [`Env::spawn_job`]), then the TOML `rest`.
    pub fn pid_job(&self, name: &str, script: &str, rest: &str) -> PathBuf {
        let pidfile = self.path(&format!("{name}.pid"));
        let script = format!("echo $$ > {}; {script}", pidfile.display());
        self.job(name, &format!("{}\n{rest}", sh_command(&script)));
        pidfile
    }

    /// Run `job` (it must succeed); its run record.
    pub fn run_ok(&self, job: &str) -> Value {
        self.run(&["run", job]).code(0);
        self.last_run(job)
    }

    /// Run `job` in the background until it writes `started`, then again in
    /// the foreground (which replaces it and must succeed); the exit status
    /// of the first runner.
    pub fn replace_running(&self, job: &str, started: &Path) -> std::process::ExitStatus {
        let mut old = self.spawn(&["run", job]);
        wait_for("old run start", Duration::from_secs(10), || {
            started.exists()
        });
        self.run(&["run", job]).code(0);
        wait_child(&mut old, Duration::from_secs(20))
    }

    pub fn run_cmd(&self, mut c: Command) -> Done {
        let desc = format!("{c:?}");
        let out = c.output().expect("spawn batchguard");
        Done { desc, out }
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn batchguard")
    }

    /// Create the state store as the first run or the watchdog would (read
    /// commands never create one: SPEC §8).
    pub fn create_store(&self) -> &Env {
        self.run(&["notify", "flush"]).code(0);
        self
    }

    /// Rule `id` of `check JOB --format json` (which exits 0 or 1).
    pub fn check_rule(&self, job: &str, id: &str) -> Value {
        let d = self.run(&["check", job, "--format", "json"]);
        assert!(matches!(d.out.status.code(), Some(0 | 1)), "{}", d.stderr());
        d.json()["jobs"][0]["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .find(|r| r["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no rule {id} for {job}"))
    }

    /// Start `args` in the background and wait until the job has written
    /// its pid to `pidfile`; the runner and that pid.
    pub fn spawn_job(&self, args: &[&str], pidfile: &Path) -> (Child, i32) {
        let runner = self.spawn(args);
        wait_for("job start", Duration::from_secs(10), || {
            read_pid(pidfile).is_some()
        });
        (runner, read_pid(pidfile).unwrap())
    }

    /// The runs of `job`, newest first; none while the first run has not
    /// created the store yet (read commands never create it: exit 69).
    pub fn runs(&self, job: &str) -> Vec<Value> {
        let d = self.run(&["runs", job, "--limit", "1000", "--format", "json"]);
        if d.out.status.code() == Some(69) && d.stderr().contains("no state store at") {
            return Vec::new();
        }
        d.code(0);
        serde_json::from_slice(&d.out.stdout).expect("runs JSON")
    }

    pub fn last_run(&self, job: &str) -> Value {
        self.runs(job).into_iter().next().expect("a run")
    }

    pub fn log_of(&self, run: &Value) -> String {
        std::fs::read_to_string(run["log_path"].as_str().expect("log_path")).unwrap_or_default()
    }
}

pub struct Done {
    pub desc: String,
    pub out: Output,
}

impl Done {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    pub fn code(&self, want: i32) -> &Done {
        assert_eq!(
            self.out.status.code(),
            Some(want),
            "{}\n--- stdout\n{}\n--- stderr\n{}",
            self.desc,
            self.stdout(),
            self.stderr()
        );
        self
    }
    pub fn stdout_has(&self, needle: &str) -> &Done {
        self.stream_has("stdout", &self.stdout(), needle)
    }
    pub fn stderr_has(&self, needle: &str) -> &Done {
        self.stream_has("stderr", &self.stderr(), needle)
    }
    fn stream_has(&self, stream: &str, text: &str, needle: &str) -> &Done {
        assert!(
            text.contains(needle),
            "{stream} of {} lacks {needle:?}:\n{text}",
            self.desc
        );
        self
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.out.stdout)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}):\n{}", self.desc, self.stdout()))
    }
}

pub use crate::support::{pid_alive, wait_for};

/// The TOML line `command = ["sh", "-c", SCRIPT]` (a JSON string is a TOML
/// basic string too).
pub fn sh_command(script: &str) -> String {
    format!("command = [\"sh\", \"-c\", {}]", Value::from(script))
}

/// SIGKILL a runner (its job lives on, orphaned) and reap it.
pub fn sigkill_runner(runner: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(runner.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_child(runner, Duration::from_secs(5));
}

pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Wait for the child, failing the test if it runs past `limit`.
pub fn wait_child(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("batchguard did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
