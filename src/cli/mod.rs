//! Command-line parsing and dispatch. No business logic lives here: each
//! subcommand loads what it needs, calls the library, and renders.

mod args;
mod render;

pub use args::{Cli, Format};
use args::{Command, CronAction, DEFAULT_CONFIG_DIR, Deferred, NotifyAction};

use crate::error::{Error, Result};
use crate::exec::{Context, Request};
use crate::runner;
use crate::{exit, host, publish, store};
use batchguard_config::{self as config, DEFAULT_STATE, Global, Job};
use std::path::{Path, PathBuf};

/// Parse the command line, run it, and return the process exit code.
pub fn main() -> i32 {
    // Nothing this process inherited reaches a job (SPEC §4).
    batchguard_supervise::seal_inherited_fds();
    let cli = match parse_args() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return code;
        }
    };
    tracing::debug!("arguments parsed");
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("batchguard: {e}");
            e.exit_code()
        }
    }
}

/// The command line, parsed. clap builds the whole command tree (every
/// subcommand and option) to parse one line; the tree is left to the
/// process's exit instead of freed piece by piece (2.5% of a run).
fn parse_args() -> std::result::Result<Cli, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    let command: &'static mut clap::Command = Box::leak(Box::new(Cli::command()));
    let mut matches = command.try_get_matches_from_mut(std::env::args_os())?;
    Cli::from_arg_matches_mut(&mut matches)
}

fn state_url(cli_state: Option<&str>, global: &Global) -> String {
    cli_state
        .map(str::to_string)
        .or_else(|| global.state.clone())
        .unwrap_or_else(|| DEFAULT_STATE.to_string())
}

fn context(cli: &Cli, global: Global) -> Result<Context> {
    let url = state_url(cli.state.as_deref(), &global);
    tracing::debug!("configuration loaded");
    let store = store::open(&url)?;
    tracing::debug!(url = %url, "state store open");
    Ok(assemble(cli, global, url, store, false))
}

/// The application context of this command line.
fn assemble(
    cli: &Cli,
    global: Global,
    state_url: String,
    store: Box<dyn store::Store>,
    read_only: bool,
) -> Context {
    Context {
        store,
        state_url,
        me: host::identity(global.host.as_deref()),
        global,
        invocation: crate::exec::Invocation {
            read_only,
            ..invocation(cli)
        },
    }
}

/// What the re-run command must repeat of this command line.
fn invocation(cli: &Cli) -> crate::exec::Invocation {
    let config_dir = (cli.config_dir != Path::new(DEFAULT_CONFIG_DIR))
        .then(|| std::path::absolute(&cli.config_dir).unwrap_or_else(|_| cli.config_dir.clone()));
    let mut inv = crate::exec::Invocation {
        config_dir,
        ..Default::default()
    };
    match &cli.command {
        Command::Run(Deferred(args::RunArgs {
            file: Some(file), ..
        })) => inv.file = Some(std::path::absolute(file).unwrap_or_else(|_| file.clone())),
        Command::Exec(Deferred(exec)) => inv.exec = Some(exec.argv()),
        _ => {}
    }
    inv
}

fn load_job(dir: &Path, name: &str, global: &Global) -> Result<Job> {
    if !dir.is_dir() {
        return Err(Error::NoConfigDir(dir.to_path_buf()));
    }
    Ok(config::load_job_file(&configured_job(dir, name)?, global)?)
}

/// `DIR/jobs/NAME.toml`, whether or not it exists.
fn job_file(dir: &Path, name: &str) -> PathBuf {
    dir.join("jobs").join(format!("{name}.toml"))
}

/// The file of configured job `name`; exit 1 with the known jobs when
/// there is none (a typo must not look like a job without runs).
fn configured_job(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = job_file(dir, name);
    if path.is_file() {
        return Ok(path);
    }
    Err(Error::UnknownJob {
        job: name.to_string(),
        dir: dir.to_path_buf(),
        known: known_jobs(dir).join(", "),
    })
}

fn known_jobs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("jobs"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            (p.extension()? == "toml").then(|| p.file_stem()?.to_str().map(str::to_string))?
        })
        .collect();
    names.sort();
    names
}

fn dispatch(cli: Cli) -> Result<i32> {
    let dir = cli.config_dir.clone();
    if cli.command.prints_for_a_reader() {
        end_quietly_when_the_reader_goes();
    }
    match &cli.command {
        Command::Run(Deferred(args::RunArgs {
            job,
            file,
            params,
            scope,
            shard,
            no_work,
            if_due,
        })) => {
            let req = Request {
                params: params.clone(),
                scope: scope.clone(),
                shard: *shard,
                no_work: *no_work,
            };
            run_job(&cli, job.as_deref(), file.as_deref(), req, *if_due)
        }
        Command::Worker(Deferred(args::WorkerArgs {
            job,
            concurrency,
            scope,
            follow,
        })) => {
            let opts = crate::items::distributed::WorkerOpts {
                concurrency: *concurrency,
                scope: scope.clone(),
                follow: *follow,
            };
            worker(&cli, job, &opts)
        }
        Command::Exec(Deferred(exec)) => exec_adhoc(&cli, exec),
        Command::Publish(Deferred(args::PublishArgs { src, dest })) => {
            publish::publish(src, dest)?;
            Ok(exit::OK)
        }
        Command::Validate(Deferred(args::ValidateArgs { offline })) => validate(&dir, *offline),
        Command::Status(_) | Command::Runs(_) | Command::Show(_) => records(&cli),
        Command::Ledger(Deferred(args::LedgerArgs {
            args,
            scope,
            limit,
            format,
        })) => ledger(&cli, args, scope.as_deref(), *limit, *format),
        Command::Check(Deferred(args::CheckArgs {
            jobs,
            format,
            strict,
            cron_dir,
        })) => check(&cli, jobs, *format, *strict, cron_dir),
        Command::Cron { action } => cron_command(&dir, action),
        Command::Watchdog => watchdog(&cli),
        Command::Notify { action } => notify(&cli, action),
        Command::Serve(Deferred(args::ServeArgs { listen, token_env })) => {
            crate::serve::command(&dir, cli.state.as_deref(), listen, token_env.as_deref())
        }
        Command::Completions(Deferred(args::CompletionsArgs { shell })) => {
            args::completions(*shell, &mut std::io::stdout());
            Ok(exit::OK)
        }
        Command::Man => {
            args::man(&mut std::io::stdout()).map_err(|e| Error::io("write", "stdout", e))?;
            Ok(exit::OK)
        }
        Command::Logs(Deferred(args::LogsArgs { run_id, follow })) => {
            let ctx = read_context(&cli)?;
            render::logs(&ctx, run_id, *follow)
        }
    }
}

/// `batchguard runs JOB | head`: a command that only prints ends as any Unix
/// filter does when its reader goes away, by SIGPIPE (status 141 in the
/// shell), not with a "failed printing to stdout" panic. The entry point
/// ignores SIGPIPE for everything else: a runner must see a write to a job
/// that closed its input as an error, never die of it with the run
/// unrecorded.
fn end_quietly_when_the_reader_goes() {
    // SAFETY: signal(2) with integer arguments, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// `batchguard exec --name NAME ... -- CMD`: an ad-hoc run, never under
/// the name of a configured job.
fn exec_adhoc(cli: &Cli, exec: &args::Exec) -> Result<i32> {
    let dir = &cli.config_dir;
    let global = config::load_global(dir)?;
    let name = &exec.name;
    let file = job_file(dir, name);
    if file.is_file() {
        return Err(Error::Usage(format!(
            "`{name}` is a configured job ({}): run it with `batchguard run {name}`, or give this ad-hoc command another --name (an ad-hoc run never stands in for a job's history)",
            file.display()
        )));
    }
    let job = config::adhoc_job(
        name,
        exec.command.clone(),
        exec.timeout,
        exec.memory_max,
        exec.concurrency,
        &global,
    )?;
    let ctx = context(cli, global)?;
    run_recorded(&ctx, &job, &Request::default())
}

/// `batchguard run JOB | --file PATH`.
fn run_job(
    cli: &Cli,
    name: Option<&str>,
    file: Option<&Path>,
    req: Request,
    if_due: bool,
) -> Result<i32> {
    let dir = &cli.config_dir;
    let global = config::load_global(dir)?;
    let mut job = match (name, file) {
        (_, Some(path)) => config::load_job_file(path, &global)?,
        (Some(name), None) => load_job(dir, name, &global)?,
        (None, None) => return Err(Error::Usage("run needs JOB or --file PATH".into())),
    };
    // `--if-due` (the per-minute line where cron ignores CRON_TZ): not
    // this minute in the job's zone, so nothing to do and nothing to say.
    if if_due && !crate::cron::due_now(&job, jiff::Timestamp::now()) {
        return Ok(exit::OK);
    }
    let ctx = context(cli, global)?;
    if req.no_work && !job.distributed.enabled {
        return Err(Error::Usage(format!(
            "--no-work is for distributed jobs; `{}` has no [distributed] enabled = true",
            job.name
        )));
    }
    if let Some((i, n)) = req.shard {
        if job.distributed.enabled {
            return Err(Error::Usage(
                "--shard and [distributed] are two ways to split the work: use one".into(),
            ));
        }
        if job.items.is_none() {
            return Err(Error::Usage(format!(
                "--shard needs a job with [items]; `{}` has none",
                job.name
            )));
        }
        // The shards of one job run at once: each has its own lock.
        job.lock = format!("{}#shard-{i}-of-{n}", job.lock);
    }
    runner::replay_spool(&ctx, &|n| load_job(dir, n, &ctx.global).ok());
    run_recorded(&ctx, &job, &req)
}

/// One run, then the metrics textfile (SPEC §10) whatever the run's end:
/// the runner records, the dashboard's metrics are written from the
/// records (the runner does not depend on `serve`).
fn run_recorded(ctx: &Context, job: &Job, req: &Request) -> Result<i32> {
    let report = runner::run(ctx, job, req);
    crate::serve::after_run(ctx);
    // The exit follows; closing SQLite would only free (3% of a run).
    ctx.store.ends_with_the_process();
    Ok(report?.exit_code())
}

/// `batchguard worker JOB`.
fn worker(cli: &Cli, name: &str, opts: &crate::items::distributed::WorkerOpts) -> Result<i32> {
    let global = config::load_global(&cli.config_dir)?;
    let job = load_job(&cli.config_dir, name, &global)?;
    let ctx = context(cli, global)?;
    Ok(crate::items::distributed::worker(&ctx, &job, opts)?.exit_code())
}

/// `batchguard validate`.
fn validate(dir: &Path, offline: bool) -> Result<i32> {
    let cfg = config::load(dir)?;
    if !offline {
        let problems = host_problems(&cfg);
        if !problems.is_empty() {
            return Err(batchguard_config::Errors(problems).into());
        }
    }
    for w in config::warnings(&cfg) {
        eprintln!("warning: {w}");
    }
    println!(
        "{}: configuration valid ({} job{})",
        dir.display(),
        cfg.jobs.len(),
        if cfg.jobs.len() == 1 { "" } else { "s" }
    );
    Ok(exit::OK)
}

/// What `validate` finds missing on this host: a job's program that is not
/// there (or not executable), a channel variable that is not set.
fn host_problems(cfg: &config::Config) -> Vec<batchguard_config::Diagnostic> {
    use batchguard_config::Diagnostic;
    let offline = "or pass --offline to check the files only";
    let mut found = Vec::new();
    for job in cfg.jobs.values() {
        let Some(program) = job.program_argv().first() else {
            continue;
        };
        let mut env: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::var_os("PATH")
            .map(|p| ("PATH".into(), p))
            .into_iter()
            .collect();
        env.extend(job.env.iter().map(|(k, v)| (k.into(), v.into())));
        let program_path = job.workdir.join(program);
        let program = if program.contains('/') {
            program_path.as_os_str()
        } else {
            std::ffi::OsStr::new(program)
        };
        let usable = batchguard_supervise::resolve_program(program, &env).is_ok_and(|p| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(&p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        });
        if !usable {
            found.push(Diagnostic::general(
                &job.file,
                Some("command"),
                format!(
                    "job `{}`: program `{}` is not an executable file on this host (searched PATH and workdir {})",
                    job.name,
                    program.to_string_lossy(),
                    job.workdir.display()
                ),
                Some(format!("install it, or fix `command` (an absolute path is safest); {offline}")),
            ));
        }
    }
    let file = cfg
        .global
        .file
        .clone()
        .unwrap_or_else(|| cfg.dir.join(config::GLOBAL_FILE));
    for (name, ch) in &cfg.global.channels {
        // The URL, the signing secret, an email channel's SMTP credentials:
        // every variable the channel declares.
        for (key, var) in ch.env_vars() {
            if std::env::var_os(var).is_none_or(|v| v.is_empty()) {
                found.push(Diagnostic::general(
                    &file,
                    Some(&format!("channels.{name}.{key}")),
                    format!("channel `{name}`: the variable {var} is not set here, so nothing can be sent through it"),
                    Some(format!("set {var} in the environment batchguard runs in (for cron, a line `{var}=…` in its cron.d file); {offline}")),
                ));
            }
        }
    }
    found
}

/// `status`, `runs` and `show`: spooled outcomes and lost runs are
/// recorded first, so what they show is current; their notifications wait
/// in the outbox for the next run or the watchdog (a read command never
/// spends time delivering).
fn records(cli: &Cli) -> Result<i32> {
    let dir = &cli.config_dir;
    let ctx = read_context(cli)?;
    runner::reap_lost(&ctx, &|name| load_job(dir, name, &ctx.global).ok())?;
    match &cli.command {
        Command::Status(Deferred(args::StatusArgs { format })) => {
            let jobs = load_jobs_leniently(dir, &ctx.global);
            render::status(&ctx, &jobs, *format)
        }
        Command::Runs(Deferred(args::RunsArgs { job, limit, format })) => {
            let runs = ctx.store.list_runs(Some(job), *limit)?;
            if runs.is_empty() {
                configured_job(dir, job)?;
            }
            render::runs(&runs, *format)
        }
        Command::Show(Deferred(args::ShowArgs { run_id, format })) => {
            let run = ctx
                .store
                .get_run(run_id)?
                .ok_or_else(|| Error::UnknownRun(run_id.clone()))?;
            render::show(&run, *format)
        }
        _ => Err(Error::Internal(
            "records() called for another command".into(),
        )),
    }
}

/// The context of a read command: the configuration honoured as `run`
/// honours it (a missing config dir or a broken `batchguard.toml` is exit
/// 78) and a state store that already exists (exit 69 otherwise: a read
/// never creates one).
fn read_context(cli: &Cli) -> Result<Context> {
    let dir = &cli.config_dir;
    if !dir.is_dir() {
        return Err(Error::NoConfigDir(dir.clone()));
    }
    let global = config::load_global(dir)?;
    let url = state_url(cli.state.as_deref(), &global);
    let store = store::open_existing(&url)?;
    Ok(assemble(cli, global, url, store, true))
}

/// `batchguard ledger JOB | ledger reset JOB --scope S`.
fn ledger(
    cli: &Cli,
    args: &[String],
    scope: Option<&str>,
    limit: usize,
    format: Format,
) -> Result<i32> {
    let dir = &cli.config_dir;
    let ctx = read_context(cli)?;
    match args {
        [verb, job] if verb == "reset" => {
            let Some(scope) = scope else {
                return Err(Error::Usage(
                    "ledger reset needs --scope S (--scope '' is the default scope)".into(),
                ));
            };
            let n = ctx.store.ledger_reset(job, scope)?;
            println!(
                "ledger of job `{job}`, scope {scope:?}: {n} keys forgotten; the next run redoes them"
            );
            Ok(exit::OK)
        }
        [job] => {
            // Only a name that is not configured costs the extra read.
            if !job_file(dir, job).is_file() && ctx.store.ledger_counts(job, scope)?.is_empty() {
                configured_job(dir, job)?;
            }
            let max_attempts = load_job(dir, job, &ctx.global)
                .ok()
                .and_then(|j| j.items.map(|i| i.max_attempts));
            render::ledger(&ctx, job, scope, limit, max_attempts, format)
        }
        _ => Err(Error::Usage(
            "usage: batchguard ledger JOB | ledger reset JOB --scope S".into(),
        )),
    }
}

/// `batchguard check [JOB...]`.
fn check(
    cli: &Cli,
    names: &[String],
    format: Format,
    strict: bool,
    cron_dir: &Path,
) -> Result<i32> {
    let dir = &cli.config_dir;
    let ctx = read_context(cli)?;
    let names = if names.is_empty() {
        known_jobs(dir)
    } else {
        names.to_vec()
    };
    let (mut jobs, mut broken) = (Vec::new(), Vec::new());
    for name in &names {
        match load_job(dir, name, &ctx.global) {
            Ok(job) => jobs.push(job),
            Err(Error::Config(errors)) => broken.push(crate::check::broken_job(name, &errors)),
            Err(e) => return Err(e),
        }
    }
    let cron_facts = crate::cron::check_facts(
        cron_dir.to_path_buf(),
        Some(own_binary()?),
        Some(absolute(dir)?),
        crate::cron::flavor::host(),
    );
    Ok(crate::check::command(
        &jobs,
        broken,
        &ctx.global,
        ctx.store.as_ref(),
        &cron_facts,
        format == Format::Json,
        strict,
    ))
}

/// `batchguard watchdog`.
fn watchdog(cli: &Cli) -> Result<i32> {
    let global = config::load_global(&cli.config_dir)?;
    let jobs = load_jobs_leniently(&cli.config_dir, &global);
    let ctx = context(cli, global)?;
    let r = crate::watchdog::run(&ctx, &jobs)?;
    // A line only when something happened: not every minute while a
    // channel stays down and its notifications wait (cron mails each line).
    if r.lost > 0 || !r.missed.is_empty() || r.delivered > 0 || r.first_failures > 0 {
        eprintln!(
            "batchguard watchdog: {} lost, missed: [{}], {} notifications delivered, {} pending",
            r.lost,
            r.missed.join(", "),
            r.delivered,
            r.pending
        );
    }
    Ok(exit::OK)
}

/// `batchguard notify flush | test JOB`.
fn notify(cli: &Cli, action: &NotifyAction) -> Result<i32> {
    let global = config::load_global(&cli.config_dir)?;
    let ctx = context(cli, global)?;
    match action {
        NotifyAction::Flush => {
            let r = crate::notify::flush(
                ctx.store.as_ref(),
                &ctx.global,
                std::time::Duration::from_secs(300),
                true,
            );
            println!(
                "delivered {}, failed {}, still pending {}",
                r.delivered, r.failed, r.pending
            );
            Ok(if r.failed > 0 {
                exit::FAILURE
            } else {
                exit::OK
            })
        }
        NotifyAction::Test { job } => {
            let job = load_job(&cli.config_dir, job, &ctx.global)?;
            Ok(crate::runner::notify_test(&ctx, &job))
        }
    }
}

/// Every job that loads; a broken job file is reported on stderr and left
/// out, so `status` still shows the others.
fn load_jobs_leniently(dir: &Path, global: &Global) -> Vec<Job> {
    let mut jobs = Vec::new();
    for name in known_jobs(dir) {
        match load_job(dir, &name, global) {
            Ok(job) => jobs.push(job),
            Err(e) => eprintln!("batchguard: job `{name}` skipped: {e}"),
        }
    }
    jobs
}

/// The binary cron should call: this one, by its canonical path.
fn own_binary() -> Result<PathBuf> {
    std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .map_err(|e| Error::io("locate", "the batchguard binary", e))
}

fn absolute(dir: &Path) -> Result<PathBuf> {
    std::path::absolute(dir).map_err(|e| Error::io("resolve", dir, e))
}

fn cron_command(dir: &Path, action: &CronAction) -> Result<i32> {
    use crate::cron;
    match action {
        CronAction::Render { job, cron_flavor } => {
            let flavor = cron_flavor.unwrap_or_else(cron::flavor::host);
            let cfg = config::load(dir)?;
            let (bin, cdir) = (own_binary()?, absolute(dir)?);
            let jobs: Vec<&Job> = match job {
                Some(name) => vec![cfg.jobs.get(name).ok_or_else(|| Error::UnknownJob {
                    job: name.clone(),
                    dir: dir.to_path_buf(),
                    known: cfg.jobs.keys().cloned().collect::<Vec<_>>().join(", "),
                })?],
                None => cfg.jobs.values().collect(),
            };
            let mut first = true;
            for j in jobs {
                let Some(entry) = cron::CronEntry::from_job(j) else {
                    if job.is_some() {
                        eprintln!("batchguard: job `{}` has no schedule", j.name);
                        return Ok(exit::FAILURE);
                    }
                    continue;
                };
                if !first {
                    println!();
                }
                first = false;
                println!("# file: {}", cron::file_name(&entry.job));
                print!("{}", cron::render(&entry, &bin, &cdir, flavor));
            }
            if job.is_none() {
                if !first {
                    println!();
                }
                println!("# file: {}", cron::WATCHDOG_FILE);
                print!("{}", cron::render_watchdog(&bin, &cdir, flavor));
            }
            Ok(exit::OK)
        }
        CronAction::Install {
            dir: cron_dir,
            cron_flavor,
        } => {
            let flavor = cron_flavor.unwrap_or_else(cron::flavor::host);
            let cfg = config::load(dir)?;
            let entries: Vec<cron::CronEntry> = cfg
                .jobs
                .values()
                .filter_map(cron::CronEntry::from_job)
                .collect();
            let report =
                cron::install(&entries, cron_dir, &own_binary()?, &absolute(dir)?, flavor)?;
            println!("cron daemon: {}", flavor.describe());
            for p in &report.written {
                println!("wrote {}", p.display());
            }
            for p in &report.removed {
                println!("removed {}", p.display());
            }
            println!(
                "{} written, {} unchanged, {} removed",
                report.written.len(),
                report.unchanged.len(),
                report.removed.len()
            );
            Ok(exit::OK)
        }
        CronAction::Next { job, n, from } => {
            let global = config::load_global(dir)?;
            let job = load_job(dir, job, &global)?;
            let Some(schedule) = &job.schedule else {
                eprintln!("batchguard: job `{}` has no schedule", job.name);
                return Ok(exit::FAILURE);
            };
            let after = match from {
                Some(t) => t.parse::<jiff::Timestamp>().map_err(|e| {
                    Error::Usage(format!("--from `{t}` is not an RFC 3339 time: {e}"))
                })?,
                None => jiff::Timestamp::now(),
            };
            let schedule = cron::Schedule::parse(schedule).map_err(cron::CronError::from)?;
            let fires = cron::job_rule(&job).next_fires(&schedule, after, *n);
            for f in fires {
                println!("{}", f.strftime("%Y-%m-%dT%H:%M:%S%:z"));
            }
            Ok(exit::OK)
        }
    }
}
