//! Helpers shared by the test binaries that use the real PostgreSQL:
//! one serialising lock per binary, unique schema names, the server's URL
//! (`BATCHGUARD_TEST_PG`, else the loopback server) and an admin client.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

static SERIAL: Mutex<()> = Mutex::new(());
static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
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
