//! Test helpers shared by Phoenix's crates. Only ever a dev-dependency.

pub mod golden;
