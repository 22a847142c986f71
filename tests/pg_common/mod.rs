//! Helpers shared by the test binaries that use the real PostgreSQL:
//! one serialising lock per binary, unique schema names, the server's URL
//! (`BATCHGUARD_TEST_PG`, else the loopback server) and an admin client.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

static SERIAL: Mutex<()> = Mutex::new(());
static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The gate and the lock of a test that needs the server: `None` (with the
/// line [`available`] writes) when the server does not answer; else the
/// lock that keeps this binary's PostgreSQL tests one at a time. The test
/// is named after the thread libtest runs it on.
pub fn begin() -> Option<MutexGuard<'static, ()>> {
    let test = std::thread::current()
        .name()
        .unwrap_or("a PostgreSQL test")
        .to_string();
    available(&test).then(serial)
}

/// A number unique within this test binary (for schema names).
pub fn next_id() -> usize {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

pub fn base() -> String {
    std::env::var("BATCHGUARD_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn admin() -> postgres::Client {
    postgres::Client::connect(
        &format!("{}?application_name=batchguard_test_admin", base()),
        postgres::NoTls,
    )
    .expect("connect to the test PostgreSQL")
}

/// The gate of every test that needs the server: `true` when it answers.
/// Otherwise one line says what is missing and how to get it (SKIPPED, or
/// a failure under `BATCHGUARD_TEST_STRICT=1`), instead of dozens of
/// connection panics. The first call also drops the schemas that aborted
/// test runs left behind (their process is gone).
pub fn available(test: &str) -> bool {
    static REACHED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let reached = REACHED.get_or_init(|| {
        let url = format!("{}?connect_timeout=3", base());
        let mut c = postgres::Client::connect(&url, postgres::NoTls).map_err(|e| {
            let cause = std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string());
            format!(
                "needs PostgreSQL at {} ({cause}); `.ci/run` installs and starts it, or set BATCHGUARD_TEST_PG",
                base()
            )
        })?;
        sweep_leaked_schemas(&mut c);
        Ok(())
    });
    match reached {
        Ok(()) => true,
        Err(why) => {
            crate::support::cannot_run(test, why);
            false
        }
    }
}

/// Drop `bg_…_PID_N`, `dist_…_PID_N` and `hostile_PID_N` schemas whose test
/// process is gone.
fn sweep_leaked_schemas(c: &mut postgres::Client) {
    let Ok(rows) = c.query(
        "SELECT nspname FROM pg_namespace WHERE nspname ~ '^(bg|dist|hostile)(_[a-z_]+)?_[0-9]+_[0-9]+$'",
        &[],
    ) else {
        return;
    };
    for row in rows {
        let name: String = row.get(0);
        let pid = name.rsplit('_').nth(1).and_then(|p| p.parse::<u32>().ok());
        let gone = pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists());
        if gone {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"));
        }
    }
}

/// [`base`] as the driver parses it.
fn config() -> postgres::Config {
    base()
        .parse()
        .unwrap_or_else(|e| panic!("BATCHGUARD_TEST_PG {}: {e}", base()))
}

/// `host:port` of the test server (from [`base`]).
pub fn server_addr() -> String {
    let c = config();
    let host = match c.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_string(),
    };
    format!("{host}:{}", c.get_ports().first().copied().unwrap_or(5432))
}

/// The test database's name (from [`base`]).
pub fn database() -> String {
    config().get_dbname().unwrap_or("test").to_string()
}

/// [`base`]'s user (and password) on another `host:port` and `database`.
pub fn url_at(addr: &str, database: &str) -> String {
    let c = config();
    let user = c.get_user().unwrap_or("postgres");
    let login = match c.get_password() {
        Some(pw) => format!("{user}:{}", String::from_utf8_lossy(pw)),
        None => user.to_string(),
    };
    format!("postgres://{login}@{addr}/{database}")
}
