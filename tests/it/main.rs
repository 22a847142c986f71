//! Integration tests: the real binary, real processes, real signals, real
//! cgroups and the real state store.

#[path = "../support/mod.rs"]
mod support;

mod harness;
mod receiver;

mod config_errors;
mod failure_paths;
mod faults;
mod hostile;
mod items;
mod locking;
mod noise;
mod notify;
mod operator;
mod records;
mod schedule;
mod secrets;
mod supervision;
