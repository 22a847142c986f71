//! batchguard runs any batch job (Python, Ruby, shell, Rust…) supervised,
//! locked, bounded and recorded, so that the batch guideline (G01-G16, see
//! `docs/`) holds by construction.
//!
//! The library is layered; each module owns one concept:
//! - [`batchguard_config`] (crate `config`): job and global files, validation with spans;
//! - [`batchguard_supervise`] (crate `supervise`): one process tree, limits, signals;
//! - [`store`]: the state store trait and its backends;
//! - [`runner`]: one invocation of a job: lock, attempts, records;
//! - [`logs`], [`redact`], [`publish`], [`cron`], [`host`], [`clock`], [`atomic_file`]:
//!   supporting concepts;
//! - [`serve`]: the read-only web dashboard and Prometheus metrics;
//! - [`cli`]: argument parsing, dispatch and rendering, no business logic;
//! - [`error`] and [`exit`]: the one place where errors become exit codes.

pub mod atomic_file;
pub mod check;
pub mod cli;
pub mod clock;
pub mod cron;
pub mod error;
pub mod exec;
pub mod exit;
pub mod host;
pub mod id;
pub mod items;
pub mod logs;
pub mod notify;
pub mod outcome;
pub mod publish;
pub mod redact;
pub mod runner;
pub mod sanitize;
pub mod serve;
pub mod store;
pub mod watchdog;

pub use batchguard_config as config;
pub use batchguard_supervise as supervise;
