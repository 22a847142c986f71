//! Everything about a job that does not change between its attempts: param
//! values, the scope, templates, the environment (env_file values become
//! secrets), the run-as user, and the exact re-run command.

use crate::clock;
use crate::error::{Error, Result};
use crate::redact::Redactor;
use batchguard_config::{Channel, Global, Job, template};
use batchguard_supervise as supervise;
use std::collections::BTreeMap;
use std::ffi::OsString;

use super::Request;

/// Everything about the job that does not change between attempts.
pub(crate) struct Prepared {
    pub(crate) params: BTreeMap<String, String>,
    pub(crate) scope: Option<String>,
    pub(crate) shard: Option<(u32, u32)>,
    pub(crate) no_work: bool,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) redactor: Redactor,
    pub(crate) run_as: Option<supervise::RunAs>,
    /// The job's `user` is who this runner already is: no switch happens.
    pub(crate) already_user: Option<String>,
    pub(crate) tz: jiff::tz::TimeZone,
    pub(crate) today: String,
    pub(crate) yesterday: String,
}

pub(crate) fn builtin(job: &Job, run_id: &str, p: &Prepared, name: &str) -> Option<String> {
    match name {
        "job" => Some(job.name.clone()),
        "run_id" => Some(run_id.to_string()),
        "today" => Some(p.today.clone()),
        "yesterday" => Some(p.yesterday.clone()),
        _ => p.params.get(name).cloned(),
    }
}

pub(crate) fn render_all(
    job: &Job,
    run_id: &str,
    p: &Prepared,
    what: &str,
    templates: &[String],
) -> Result<Vec<String>> {
    templates
        .iter()
        .map(|t| {
            template::render(t, &|n| builtin(job, run_id, p, n))
                .map_err(|e| template_error(job, what, t, e))
        })
        .collect()
}

pub(crate) fn template_error(
    job: &Job,
    what: &str,
    template: &str,
    e: impl std::fmt::Display,
) -> Error {
    Error::Template {
        job: job.name.clone(),
        what: what.to_string(),
        template: template.to_string(),
        reason: e.to_string(),
    }
}

/// The names of the variables that hold the runner's own secrets (channel
/// URLs, signing secrets, SMTP credentials): never passed to a job.
fn runner_secret_vars(global: &Global) -> Vec<&str> {
    global
        .channels
        .values()
        .flat_map(Channel::env_vars)
        .map(|(_, var)| var)
        .collect()
}

/// Prepare `job` for this request. `global` says which of the runner's
/// variables are its own secrets (kept from the job).
pub(crate) fn prepare(job: &Job, req: &Request, global: &Global) -> Result<Prepared> {
    let tz = clock::zone(job.timezone.as_deref());
    let (today, yesterday) = clock::today_yesterday(clock::now_ms(), &tz);
    let mut p = Prepared {
        params: BTreeMap::new(),
        scope: None,
        shard: req.shard,
        no_work: req.no_work,
        env: Vec::new(),
        redactor: Redactor::default(),
        run_as: None,
        already_user: None,
        tz,
        today,
        yesterday,
    };
    p.params = params(job, req, &p)?;
    p.scope = scope(job, req, &p)?;
    let (env, secrets, run_as) = environment(job, &runner_secret_vars(global))?;
    p.env = env;
    p.redactor = Redactor::new(secrets);
    if run_as.is_none() {
        p.already_user = job.user.clone();
    }
    p.run_as = run_as;
    Ok(p)
}

/// Param values: defaults (which may use the built-ins), then `--param`
/// overrides (literal), each of which must be declared.
fn params(job: &Job, req: &Request, p: &Prepared) -> Result<BTreeMap<String, String>> {
    let mut params = BTreeMap::new();
    for (k, v) in &job.params {
        let value = render_all(job, "", p, "param", std::slice::from_ref(v))?.remove(0);
        params.insert(k.clone(), value);
    }
    for (k, v) in &req.params {
        if !job.params.contains_key(k) {
            let known: Vec<&str> = job.params.keys().map(String::as_str).collect();
            return Err(Error::Usage(format!(
                "job `{}` has no param `{k}` (declared params: {}); declare it under [params]",
                job.name,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        params.insert(k.clone(), v.clone());
    }
    Ok(params)
}

/// The ledger scope: `--scope`, else `items.scope` rendered with the params.
fn scope(job: &Job, req: &Request, p: &Prepared) -> Result<Option<String>> {
    Ok(
        match (
            &req.scope,
            job.items.as_ref().and_then(|i| i.scope.as_ref()),
        ) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(t)) => {
                Some(render_all(job, "", p, "items.scope", std::slice::from_ref(t))?.remove(0))
            }
            (None, None) => None,
        },
    )
}

type Environment = (
    Vec<(OsString, OsString)>,
    Vec<String>,
    Option<supervise::RunAs>,
);

/// The job's environment (the runner's, then env_file, then env), the
/// secret values (env_file's, and those named by `secrets`), and the user
/// it runs as.
fn environment(job: &Job, withheld: &[&str]) -> Result<Environment> {
    // The runner's environment minus its own variables (the state store's
    // URL among them) and its channel secrets: a job is untrusted (SPEC §4).
    let mut env: BTreeMap<OsString, OsString> = std::env::vars_os()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            !k.starts_with("BATCHGUARD_") && !withheld.contains(&k.as_ref())
        })
        .collect();
    let mut secrets = Vec::new();
    if let Some(path) = &job.env_file {
        let vars = batchguard_config::dotenv::read(path).map_err(|source| Error::EnvFile {
            job: job.name.clone(),
            source,
        })?;
        for v in vars {
            secrets.push(v.value.clone());
            env.insert(v.name.into(), v.value.into());
        }
    }
    for (k, v) in &job.env {
        env.insert(k.into(), v.into());
    }
    for name in &job.secrets {
        if let Some(v) = env.get(&OsString::from(name)) {
            secrets.push(v.to_string_lossy().into_owned());
        }
    }
    let mut run_as = None;
    if let Some(user) = &job.user {
        let who = supervise::RunAs::lookup(user).map_err(|e| Error::User {
            job: job.name.clone(),
            user: user.clone(),
            reason: e.to_string(),
        })?;
        env.insert("USER".into(), user.into());
        env.insert("LOGNAME".into(), user.into());
        env.insert("HOME".into(), who.home.clone().into_os_string());
        // Started as that user already (a cron line with the job's user in
        // its user field): nothing to switch, and no failing setuid (SPEC §3).
        if who.uid != nix::unistd::geteuid().as_raw() {
            run_as = Some(who);
        }
    }
    Ok((env.into_iter().collect(), secrets, run_as))
}

/// The exact command that re-runs this run (SPEC §4): `run JOB` (or `run
/// --file PATH`), every `--param`, `--scope` and `--shard`, then
/// `--config-dir` and `--state` (its password removed) when they differ
/// from the defaults; for an `exec` run, the `exec` command line itself with
/// those two options before its `--` (after it they would be the job's
/// arguments). A param whose value is a secret is shown as `***`, with a
/// note naming what to supply.
pub(crate) fn rerun_command(ctx: &super::Context, job: &Job, p: &Prepared) -> String {
    let inv = &ctx.invocation;
    let mut notes = Vec::new();
    let mut globals = Vec::new();
    if let Some(dir) = &inv.config_dir {
        globals.extend(["--config-dir".to_string(), dir.display().to_string()]);
    }
    if ctx.state_url != batchguard_config::DEFAULT_STATE {
        let shown = crate::redact::redact_url(&ctx.state_url);
        if shown != ctx.state_url {
            notes.push("the --state password is removed: supply it".to_string());
        }
        globals.extend(["--state".to_string(), shown]);
    }
    let mut args: Vec<String> = Vec::new();
    if let Some(exec) = &inv.exec {
        args.push("exec".into());
        args.extend(exec.iter().map(|a| p.redactor.redact(a).into_owned()));
        // The options go before the `--` (after it they are the command's).
        let dashes = args.iter().position(|a| a == "--").unwrap_or(args.len());
        args.splice(dashes..dashes, globals);
    } else {
        args.push("run".into());
        match &inv.file {
            Some(file) => args.extend(["--file".to_string(), file.display().to_string()]),
            None => args.push(job.name.clone()),
        }
        for (k, v) in &p.params {
            let shown = p.redactor.redact(v);
            if shown != v.as_str() {
                notes.push(format!("*** in --param {k} is a secret: supply its value"));
            }
            args.extend(["--param".to_string(), format!("{k}={shown}")]);
        }
        if let Some(scope) = &p.scope {
            args.extend(["--scope".to_string(), scope.clone()]);
        }
        if let Some((i, n)) = job
            .lock
            .rsplit_once("#shard-")
            .and_then(|(_, s)| s.split_once("-of-"))
        {
            args.extend(["--shard".to_string(), format!("{i}/{n}")]);
        }
        args.append(&mut globals);
    }
    let mut cmd = String::from("batchguard");
    for a in &args {
        cmd.push(' ');
        cmd.push_str(&shell_quote(a));
    }
    with_notes(cmd, &notes)
}

/// `cmd`, then the notes (what to supply) as a shell comment.
fn with_notes(mut cmd: String, notes: &[String]) -> String {
    if !notes.is_empty() {
        cmd.push_str(&format!("  # {}", notes.join("; ")));
    }
    cmd
}

pub(crate) fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.,:=/@+%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
