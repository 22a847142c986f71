//! The command line as clap sees it: every command, flag and its help. The
//! same definition generates the shell completions and the man page
//! (`batchguard completions SHELL`, `batchguard man`). docs/reference.md is
//! the long form.

use batchguard_config::{self as config, Concurrency};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// The configuration directory when `--config-dir` is not given.
pub(super) const DEFAULT_CONFIG_DIR: &str = "/etc/batchguard";

#[derive(Parser, Debug)]
#[command(
    name = "batchguard",
    version,
    about = "Run batch jobs supervised, locked, bounded and recorded",
    after_help = "Exit codes, config keys, JSON shapes and files: docs/reference.md (or `man batchguard`)."
)]
pub struct Cli {
    /// Configuration directory (batchguard.toml and jobs/NAME.toml).
    #[arg(
        long,
        global = true,
        env = "BATCHGUARD_CONFIG_DIR",
        default_value = DEFAULT_CONFIG_DIR,
        value_name = "DIR"
    )]
    pub config_dir: PathBuf,
    /// State store URL: sqlite:PATH or postgres://… [default: `state` in
    /// batchguard.toml, else sqlite:/var/lib/batchguard/state.db]
    #[arg(long, global = true, env = "BATCHGUARD_STATE", value_name = "URL")]
    pub state: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// How read commands print.
#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Text,
    /// The JSON shapes of docs/reference.md, for scripts.
    Json,
}

/// A shell to generate completions for.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// A subcommand's arguments, added to its `clap::Command` only when that
/// command is built: when the command line names it, or when help, the
/// completions or the man page build the whole tree. clap builds every
/// subcommand's arguments to parse a command line; deferring all but the
/// one named saves 58k instructions per invocation (docs/performance.md).
/// The argument structs have no doc comment: built after the variant's,
/// it would replace the subcommand's help.
#[derive(Debug)]
pub struct Deferred<T>(pub T);

impl<T: clap::Args> clap::Args for Deferred<T> {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.defer(T::augment_args)
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        cmd.defer(T::augment_args_for_update)
    }
    fn group_id() -> Option<clap::Id> {
        T::group_id()
    }
}

impl<T: clap::FromArgMatches> clap::FromArgMatches for Deferred<T> {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches(matches).map(Deferred)
    }
    fn from_arg_matches_mut(matches: &mut clap::ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches_mut(matches).map(Deferred)
    }
    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(matches)
    }
    fn update_from_arg_matches_mut(
        &mut self,
        matches: &mut clap::ArgMatches,
    ) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches_mut(matches)
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a job under supervision: lock, limits, retries, record, notify.
    Run(Deferred<RunArgs>),
    /// Work on a distributed job's queue: claim batches of keys from the
    /// running coordinator's queue and process them.
    Worker(Deferred<WorkerArgs>),
    /// Run an ad-hoc command under the same supervision (recorded with
    /// "adhoc": true; NAME must not be a configured job).
    Exec(Deferred<Exec>),
    /// Inside a run: rename SRC over DEST only while this run's token is
    /// the newest (else exit 75, DEST untouched).
    Publish(Deferred<PublishArgs>),
    /// Check the whole configuration directory, and that each job's program
    /// and each channel's variables exist on this host.
    Validate(Deferred<ValidateArgs>),
    /// One row per job: last run, outcome, next run, state.
    Status(Deferred<StatusArgs>),
    /// A job's runs, newest first.
    Runs(Deferred<RunsArgs>),
    /// One run in detail.
    Show(Deferred<ShowArgs>),
    /// A job's item ledger: counts per scope and failed keys;
    /// `ledger reset JOB --scope S` forgets one scope (clean and redo).
    Ledger(Deferred<LedgerArgs>),
    /// Audit jobs against the guideline (G01-G16); exit 1 on a fail.
    Check(Deferred<CheckArgs>),
    /// Cron schedules (G13): render or install /etc/cron.d files, predict
    /// fire times.
    Cron {
        #[command(subcommand)]
        action: CronAction,
    },
    /// Record lost runs, raise `missed`, flush notifications (cron runs it
    /// every minute; it prints only when something happened).
    Watchdog,
    /// Notifications: deliver what the outbox holds, or test a job's
    /// channels.
    Notify {
        #[command(subcommand)]
        action: NotifyAction,
    },
    /// Read-only web dashboard, JSON API and Prometheus metrics.
    Serve(Deferred<ServeArgs>),
    /// A run's log (stdout and stderr interleaved, timestamped).
    Logs(Deferred<LogsArgs>),
    /// Print shell completions: `batchguard completions bash >
    /// /etc/bash_completion.d/batchguard`.
    Completions(Deferred<CompletionsArgs>),
    /// Print the man page (roff): `batchguard man | man -l -`.
    Man,
}

// `run`'s arguments (no doc comment: see `Deferred`).
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The job's name (DIR/jobs/JOB.toml).
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub job: Option<String>,
    /// Run this job file instead (its name is the file stem).
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Override a declared param (repeatable): --param date=2026-11-01
    #[arg(long = "param", value_name = "K=V", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// The ledger scope to run in (default: the job's items.scope).
    #[arg(long, value_name = "S")]
    pub scope: Option<String>,
    /// Process only the keys of shard I of N (FNV-1a 64 of the key mod
    /// N == I); each shard takes its own lock (LOCK#shard-I-of-N).
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<(u32, u32)>,
    /// Distributed coordinator only: enqueue and wait, process no key
    /// here.
    #[arg(long)]
    pub no_work: bool,
    /// Start only when this minute is a fire of the job's schedule in
    /// its timezone; else exit 0 silently (the per-minute cron line of
    /// a daemon that ignores CRON_TZ).
    #[arg(long)]
    pub if_due: bool,
}

// `worker`'s arguments (no doc comment: see `Deferred`).
#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// The distributed job ([distributed] enabled = true).
    pub job: String,
    /// Items processed at once (default: the job's items.parallelism).
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u32>,
    /// Only work for a coordinator running in this scope.
    #[arg(long, value_name = "S")]
    pub scope: Option<String>,
    /// Keep waiting for coordinators instead of exiting when none runs.
    #[arg(long)]
    pub follow: bool,
}

// `publish`'s arguments (no doc comment: see `Deferred`).
#[derive(clap::Args, Debug)]
pub struct PublishArgs {
    /// The finished result, written beside DEST.
    pub src: PathBuf,
    /// Where the result goes.
    pub dest: PathBuf,
}

// `validate`'s arguments (no doc comment: see `Deferred`).
#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// Check the files only, not this host (CI on another machine).
    #[arg(long)]
    pub offline: bool,
}

// `status`'s arguments (no doc comment: see `Deferred`).
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// text or json.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

// `runs`'s arguments (no doc comment: see `Deferred`).
#[derive(clap::Args, Debug)]
pub struct RunsArgs {
    /// The job's name.
    pub job: String,
    /// How many runs to list.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub limit: usize,
    /// text or json.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

// `show`'s arguments (no doc comment: see `Deferred`).
#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// The run's id (from `runs`, a report or a notification).
    pub run_id: String,
    /// text or json.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

// `ledger`'s arguments (no doc comment: see `Deferred`).
#[derive(clap::Args, Debug)]
pub struct LedgerArgs {
    /// JOB, or `reset JOB`.
    #[arg(num_args = 1..=2, value_name = "JOB", required = true)]
    pub args: Vec<String>,
    /// One scope only (required for reset; '' is the default scope).
    #[arg(long, value_name = "S")]
    pub scope: Option<String>,
    /// How many failed keys to list per scope.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub limit: usize,
    /// text or json.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

// `check`'s arguments (no doc comment: see `Deferred`).
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Jobs to check (default: all).
    pub jobs: Vec<String>,
    /// text or json.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// Warnings fail too (exit 1).
    #[arg(long)]
    pub strict: bool,
    /// Where the cron.d files should be (G13).
    #[arg(long, default_value = crate::cron::DEFAULT_DIR, value_name = "DIR")]
    pub cron_dir: PathBuf,
}

// `serve`'s arguments (no doc comment: see `Deferred`).
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on; beyond loopback only with --token-env.
    #[arg(long, default_value = "127.0.0.1:8470", value_name = "ADDR")]
    pub listen: String,
    /// Environment variable holding the access token.
    #[arg(long, value_name = "VAR")]
    pub token_env: Option<String>,
}

// `logs`'s arguments (no doc comment: see `Deferred`).
#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// The run's id.
    pub run_id: String,
    /// Keep printing until the run ends.
    #[arg(long, short)]
    pub follow: bool,
}

// `completions`'s arguments (no doc comment: see `Deferred`).
#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// bash, zsh or fish.
    #[arg(value_enum)]
    pub shell: Shell,
}

impl Command {
    /// Commands whose whole work is printing what the store and the files
    /// say (a read command may record a lost run first, in one transaction):
    /// their output may go to a reader that stops early (`| head`).
    pub fn prints_for_a_reader(&self) -> bool {
        matches!(
            self,
            Command::Status(_)
                | Command::Runs(_)
                | Command::Show(_)
                | Command::Ledger(_)
                | Command::Check(_)
                | Command::Validate(_)
                | Command::Logs(_)
                | Command::Completions(_)
                | Command::Man
        )
    }
}

// `exec`'s arguments (no doc comment: see `Deferred`).
#[derive(clap::Args, Debug)]
pub struct Exec {
    /// The run's job name (not one of DIR/jobs).
    #[arg(long)]
    pub name: String,
    /// Kill the whole tree after this long: 90s, 30m, 2h.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<std::time::Duration>,
    /// Hard memory limit of the tree: 512MiB, 2GiB.
    #[arg(long = "memory-max", value_parser = parse_size, value_name = "SIZE")]
    pub memory_max: Option<u64>,
    /// forbid (default), replace or allow overlapping runs of NAME.
    #[arg(long, value_parser = |s: &str| s.parse::<Concurrency>(), value_name = "POLICY")]
    pub concurrency: Option<Concurrency>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl Exec {
    /// This command line after `exec`, as the re-run command repeats it.
    pub fn argv(&self) -> Vec<String> {
        let mut args = vec!["--name".to_string(), self.name.clone()];
        if let Some(t) = self.timeout {
            args.extend(["--timeout".into(), config::format_duration(t)]);
        }
        if let Some(m) = self.memory_max {
            args.extend(["--memory-max".into(), m.to_string()]);
        }
        if let Some(c) = self.concurrency {
            args.extend(["--concurrency".into(), c.as_str().to_string()]);
        }
        args.push("--".into());
        args.extend(self.command.iter().cloned());
        args
    }
}

#[derive(Subcommand, Debug)]
pub enum CronAction {
    /// Print the cron.d content of scheduled jobs (one job, or all and the
    /// watchdog).
    Render {
        /// One job only (default: every scheduled job and the watchdog).
        job: Option<String>,
        /// The cron daemon to write for: cronie, vixie or busybox (default:
        /// detected).
        #[arg(long, value_parser = parse_flavor, value_name = "FLAVOR")]
        cron_flavor: Option<crate::cron::Flavor>,
    },
    /// Write one file per scheduled job (and the watchdog) atomically;
    /// remove stale ones.
    Install {
        /// The cron directory (it must exist).
        #[arg(long, default_value = crate::cron::DEFAULT_DIR, value_name = "DIR")]
        dir: PathBuf,
        /// The cron daemon to write for: cronie, vixie (Debian/Ubuntu cron)
        /// or busybox (default: detected).
        #[arg(long, value_parser = parse_flavor, value_name = "FLAVOR")]
        cron_flavor: Option<crate::cron::Flavor>,
    },
    /// The next fire times of a job, in its time zone.
    Next {
        /// The scheduled job.
        job: String,
        /// How many fire times.
        #[arg(short = 'n', default_value_t = 5)]
        n: usize,
        /// Start after this time (RFC 3339) instead of now.
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum NotifyAction {
    /// Deliver every undelivered notification now, due or not.
    Flush,
    /// Send a test notification through each of the job's channels.
    Test {
        /// The job whose channels to test.
        job: String,
    },
}

fn parse_flavor(s: &str) -> std::result::Result<crate::cron::Flavor, String> {
    s.parse()
}

fn parse_param(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not K=V")),
    }
}

fn parse_shard(s: &str) -> std::result::Result<(u32, u32), String> {
    let bad = || format!("`{s}` is not I/N with 0 <= I < N (for example 0/3)");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n) = (
        i.parse::<u32>().map_err(|_| bad())?,
        n.parse::<u32>().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    config::parse_duration(s)
}

fn parse_size(s: &str) -> std::result::Result<u64, String> {
    config::parse_size(s)
}

/// Write the completions for `shell` to `out`.
pub fn completions(shell: Shell, out: &mut dyn std::io::Write) {
    use clap::CommandFactory;
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut Cli::command(), "batchguard", out);
}

/// The exit codes as the man page lists them, from `crate::exit` (the one
/// list; docs/reference.md §4 is its prose).
fn exit_codes() -> Vec<(String, &'static str)> {
    use crate::exit;
    let code = |c: i32| c.to_string();
    vec![
        (
            code(exit::OK),
            "success (also: --if-due outside a fire, nothing to do)",
        ),
        (
            code(exit::FAILURE),
            "the job failed with exit 1 or items failed; a check fail; an unknown job or run",
        ),
        (code(exit::USAGE), "usage error"),
        (
            code(exit::UNAVAILABLE),
            "the state store is unreachable, missing (read commands) or failing",
        ),
        (code(exit::SOFTWARE), "an internal error of batchguard"),
        (
            code(exit::CANT_CREATE),
            "a cron.d file cannot be created (foreign file, missing directory)",
        ),
        (code(exit::IO_ERROR), "an I/O error"),
        (
            code(exit::TEMPFAIL),
            "skipped (lock held) or fenced; publish refused",
        ),
        (
            code(exit::CONFIG),
            "configuration error, or the config directory does not exist",
        ),
        (code(exit::TIMEOUT), "timeout"),
        (
            format!("{}, {}", exit::NOT_EXECUTABLE, exit::NOT_FOUND),
            "the command is not executable, not found",
        ),
        (code(exit::OOM), "killed at memory_max (oom)"),
        (
            format!("{}+N", exit::signal(0)),
            "ended by signal N from outside",
        ),
    ]
}

/// Write the man page (roff) to `out`: the command, then one section per
/// subcommand.
pub fn man(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    man.render_subcommands_section(out)?;
    for sub in cmd.get_subcommands() {
        let page = clap_mangen::Man::new(
            sub.clone()
                .bin_name(format!("batchguard {}", sub.get_name())),
        );
        writeln!(out, ".SH \"{}\"", sub.get_name().to_uppercase())?;
        page.render_synopsis_section(out)?;
        page.render_options_section(out)?;
    }
    writeln!(out, ".SH \"EXIT STATUS\"")?;
    for (code, meaning) in exit_codes() {
        writeln!(out, ".TP\n\\fB{code}\\fR\n{meaning}")?;
    }
    writeln!(out, ".SH \"SEE ALSO\"")?;
    writeln!(
        out,
        "/usr/share/doc/batchguard/reference.md: every config key, exit code, JSON shape, file and variable."
    )?;
    man.render_version_section(out)?;
    man.render_authors_section(out)
}
