//! Integration tests: the real binary, real processes, real signals, real
//! cgroups and the real state store.

mod harness;

mod config_errors;
mod items;
mod locking;
mod records;
mod secrets;
mod supervision;
