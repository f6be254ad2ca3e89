//! What the benches read of the processes they start: the release binaries,
//! a process's CPU time and memory from /proc, and the commit measured.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};

/// A release binary of this workspace (`PHOENIX_BENCH_BIN_DIR` overrides).
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("PHOENIX_BENCH_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release"),
    };
    let path = dir.join(name);
    ensure!(
        path.exists(),
        "{} is missing: cargo build --release --workspace --bins",
        path.display()
    );
    Ok(path)
}

/// User plus system CPU seconds of `pid` so far.
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// VmRSS of `pid`, KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")
}

/// The commit measured (short hash).
pub fn commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// `phoenix up` (the release build) on `mesh`, quiet; the child and what
/// it reported once every proxy was ready.
pub fn phoenix_up(mesh: &Path) -> anyhow::Result<(std::process::Child, serde_json::Value)> {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(bin("phoenix")?)
        .args(["up", "-o", "json", "-f"])
        .arg(mesh)
        .env("PHOENIX_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("phoenix up")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let report =
        serde_json::from_str(&line).with_context(|| format!("phoenix up printed `{line}`"))?;
    Ok((child, report))
}

/// The proxy of `workload` in a `phoenix up` report.
pub fn proxy_of(report: &serde_json::Value, workload: &str) -> anyhow::Result<serde_json::Value> {
    report["proxies"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["workload"] == workload))
        .cloned()
        .with_context(|| format!("no proxy {workload}"))
}
