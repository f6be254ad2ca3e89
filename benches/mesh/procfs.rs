//! Memory and CPU time of a process, from `/proc`. Pids are global: the
//! namespaces of a veth run are network namespaces only.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::ProxyPair;

/// How long RSS may take to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Readings this close (KiB) count as settled.
const SETTLE_KIB: u64 = 16;

/// VmRSS in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

/// VmRSS once two readings 100 ms apart agree (background tasks such as
/// closing connections or the allocator returning memory have finished),
/// or the last reading after [`SETTLE_TIMEOUT`].
pub fn settled_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut last = rss_kib(pid)?;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = rss_kib(pid)?;
        if now.abs_diff(last) <= SETTLE_KIB {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

/// utime + stime of the whole process (all threads), in seconds.
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'. There, field 3 (state) is index 0, so utime (field 14)
    // is index 11 and stime (15) index 12.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("malformed {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("malformed {path}"))
    };
    Ok((ticks(11)? + ticks(12)?) as f64 / clock_ticks() as f64)
}

/// CPU seconds of both proxies.
pub fn cpu_pair(pids: ProxyPair<u32>) -> anyhow::Result<ProxyPair<f64>> {
    Ok(ProxyPair {
        client: cpu_secs(pids.client)?,
        echo: cpu_secs(pids.echo)?,
    })
}

/// `sysconf(_SC_CLK_TCK)`, asked of `getconf` (no `unsafe` here); Linux
/// uses 100 everywhere, which is the fallback.
fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}
