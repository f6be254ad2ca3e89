//! Memory and CPU time of a process, from `/proc`. Pids are global: the
//! namespaces of a veth run are network namespaces only.

use std::collections::HashMap;
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
    stat_cpu_secs(&format!("/proc/{pid}/stat"))
}

/// utime + stime of each thread of `pid`, by thread ID: which threads did
/// the work (`--threads 2` shows whether a second worker took any).
pub fn thread_cpu_secs(pid: u32) -> anyhow::Result<std::collections::HashMap<u32, f64>> {
    let dir = format!("/proc/{pid}/task");
    let mut threads = std::collections::HashMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot read {dir}"))? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        // A thread may end between the listing and the read.
        if let Ok(secs) = stat_cpu_secs(&format!("{dir}/{tid}/stat")) {
            threads.insert(tid, secs);
        }
    }
    Ok(threads)
}

/// The CPU of the busiest thread between two readings, in seconds.
pub fn busiest_thread_secs(
    before: &std::collections::HashMap<u32, f64>,
    after: &std::collections::HashMap<u32, f64>,
) -> f64 {
    after
        .iter()
        .map(|(tid, a)| a - before.get(tid).copied().unwrap_or(0.0))
        .fold(0.0, f64::max)
}

fn stat_cpu_secs(path: &str) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
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

/// CPU that processes outside this bench used over an interval: the whole
/// machine's process time minus that of the bench's process group (the bench
/// and every process it started) and of kernel threads. On a shared machine
/// this says whether the figures of the interval can be trusted.
pub struct ForeignCpu {
    started: Instant,
    stat: MachineStat,
    ours: HashMap<u32, f64>,
    kernel: HashMap<u32, f64>,
}

/// What an interval's CPU went to, in CPU-seconds.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuShares {
    /// Wall seconds of the interval.
    pub wall: f64,
    /// Processes outside the bench.
    pub foreign: f64,
    /// Kernel threads (ksoftirqd, kworkers): mostly our own packets.
    pub kernel_threads: f64,
    /// Interrupt and softirq time: mostly our own packets.
    pub irq: f64,
}

impl ForeignCpu {
    /// Starts watching.
    pub fn start() -> anyhow::Result<Self> {
        let (ours, kernel) = process_cpu_secs();
        Ok(Self {
            started: Instant::now(),
            stat: MachineStat::read()?,
            ours,
            kernel,
        })
    }

    /// The shares since `start`.
    pub fn read(&self) -> anyhow::Result<CpuShares> {
        let now = MachineStat::read()?;
        let (ours, kernel) = process_cpu_secs();
        let delta = |then: &HashMap<u32, f64>, now: &HashMap<u32, f64>| -> f64 {
            now.iter()
                .map(|(pid, t)| t - then.get(pid).copied().unwrap_or(0.0))
                .sum()
        };
        let ours = delta(&self.ours, &ours);
        let kernel_threads = delta(&self.kernel, &kernel);
        Ok(CpuShares {
            wall: self.started.elapsed().as_secs_f64(),
            foreign: (now.process - self.stat.process - ours - kernel_threads).max(0.0),
            kernel_threads,
            irq: now.irq - self.stat.irq,
        })
    }
}

/// The machine's CPU time from `/proc/stat`, in seconds.
struct MachineStat {
    /// user + nice + system + steal: time charged to some task.
    process: f64,
    /// irq + softirq.
    irq: f64,
}

impl MachineStat {
    fn read() -> anyhow::Result<Self> {
        let text = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
        let line = text
            .lines()
            .find(|l| l.starts_with("cpu "))
            .context("no cpu line in /proc/stat")?;
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let at = |i: usize| f.get(i).copied().unwrap_or(0) as f64 / clock_ticks() as f64;
        // user nice system idle iowait irq softirq steal
        Ok(Self {
            process: at(0) + at(1) + at(2) + at(7),
            irq: at(5) + at(6),
        })
    }
}

/// Busy time of all CPUs (everything but idle and iowait), seconds.
pub fn machine_busy_secs() -> anyhow::Result<f64> {
    let s = MachineStat::read()?;
    Ok(s.process + s.irq)
}

/// CPU seconds of every live process of our process group, and of every
/// kernel thread.
fn process_cpu_secs() -> (HashMap<u32, f64>, HashMap<u32, f64>) {
    let ours = u64::from(rustix::process::getpgrp().as_raw_pid().unsigned_abs());
    let mut group = HashMap::new();
    let mut kernel = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return (group, kernel);
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = text.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After ')': state, ppid (1), pgrp (2), ... utime (11), stime (12).
        let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        let (Some(u), Some(s)) = (num(11), num(12)) else {
            continue;
        };
        let secs = (u + s) as f64 / clock_ticks() as f64;
        if num(2) == Some(ours) {
            group.insert(pid, secs);
        } else if pid == 2 || num(1) == Some(2) {
            kernel.insert(pid, secs);
        }
    }
    (group, kernel)
}

/// The loopback device's MTU (65,536 on Linux by default; 0 if unreadable).
pub fn loopback_mtu() -> u32 {
    std::fs::read_to_string("/sys/class/net/lo/mtu")
        .ok()
        .and_then(|m| m.trim().parse().ok())
        .unwrap_or(0)
}
