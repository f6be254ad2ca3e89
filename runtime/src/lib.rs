//! What every Phoenix binary needs around its real work, kept in one crate
//! so the proxy and the control plane share it without depending on each
//! other: the admin HTTP server (`/live`, `/ready`, `/metrics`, `/config`),
//! logging and signals and exit codes, supervision of long-lived tasks,
//! jittered backoff, accepting without spinning on EMFILE, and the JSON line
//! each binary announces on stdout.

pub mod accept;
pub mod admin;
pub mod announce;
pub mod backoff;
pub mod process;
pub mod supervisor;
