//! What every Phoenix binary needs around its real work, kept in one crate
//! so the proxy and the control plane share it without depending on each
//! other: the admin HTTP server (`/live`, `/ready`, `/metrics`, `/config`),
//! logging and signals and exit codes, supervision of long-lived tasks, and
//! jittered backoff.

pub mod admin;
pub mod backoff;
pub mod process;
pub mod supervisor;
