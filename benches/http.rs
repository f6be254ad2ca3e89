//! HTTP through the mesh against HTTP direct, in one run on one machine:
//! HTTP/1.1 and HTTP/2 (h2c) at fixed rates of 1,000 and 10,000 requests
//! a second, then as fast as one connection and 32 connections go.
//!
//! The load generator is h2load (Debian's nghttp2-client): `--rps` holds a
//! rate per connection and `--log-file` gives each request's latency, from
//! which p50 and p99 are computed (h2load prints no percentiles). The app
//! is a hyper server in this process on its own runtime, answering 100
//! bytes to a 100-byte POST. The mesh is the real release build started by
//! `phoenix up`; each proxy's CPU is read from /proc before and after.
//!
//!   benches/run-http            # builds the release binaries, then this
//!   cargo bench --bench http -- --quick
//!   cargo bench --bench http -- --only "HTTP/1.1 1000 req/s"

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench panics on failure by design

#[path = "../tests/support/http_app.rs"]
mod http_app;
#[path = "support/process.rs"]
mod process;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use process::{commit, cpu_secs, phoenix_up, proxy_of, rss_kib};

/// One measurement's settings.
#[derive(Clone, Copy, Debug)]
struct Load {
    /// HTTP/1.1 (`--h1`) or HTTP/2.
    h1: bool,
    /// Total requests a second, or `None`: as fast as it goes.
    rate: Option<u32>,
    /// Connections.
    connections: u32,
    /// Requests in flight per connection (HTTP/2), when unbounded.
    streams: u32,
    /// At a fixed rate: connections offset from one another so requests
    /// arrive evenly, not all connections' at once.
    spread: bool,
}

/// What one run of h2load measured.
#[derive(Debug)]
struct Measured {
    done: u64,
    failed: u64,
    req_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    /// CPU seconds of the client and server proxies during the run.
    proxy_cpu: Option<(f64, f64)>,
    secs: f64,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only TEXT`: just the loads whose row names it ("HTTP/2", "1000 req/s").
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let seconds = if quick { 2 } else { 6 };
    ensure!(
        Command::new("h2load").arg("--version").output().is_ok(),
        "h2load is missing: apt-get install nghttp2-client"
    );
    let app = app();
    let dir = tempfile::tempdir()?;
    let mesh = Mesh::start(dir.path(), app)?;
    let body = dir.path().join("body");
    std::fs::write(&body, [b'x'; 100])?;

    println!("# HTTP through the mesh\n");
    println!(
        "Machine: {} cores; commit {}; h2load, 100-byte POST bodies and responses, {seconds} s per run.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        commit()
    );
    println!(
        "| protocol | load | path | req/s | p50 | p99 | p50 added | p99 added | failed | client proxy CPU | server proxy CPU | CPU per 1k req/s (each proxy) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut loads = Vec::new();
    for h1 in [true, false] {
        for (rate, spread) in [(1_000, false), (1_000, true), (10_000, false)] {
            loads.push(Load {
                h1,
                rate: Some(rate),
                connections: 10,
                streams: 1,
                spread,
            });
        }
        loads.push(Load {
            h1,
            rate: None,
            connections: 1,
            streams: if h1 { 1 } else { 32 },
            spread: false,
        });
        loads.push(Load {
            h1,
            rate: None,
            connections: 32,
            streams: if h1 { 1 } else { 4 },
            spread: false,
        });
    }
    for load in loads {
        if only
            .as_ref()
            .is_some_and(|o| !load.name().contains(o.as_str()))
        {
            continue;
        }
        let direct = h2load(app, load, seconds, &body, dir.path(), None)?;
        let meshed = h2load(
            mesh.outbound,
            load,
            seconds,
            &body,
            dir.path(),
            Some(mesh.pids),
        )?;
        row(load, "direct", &direct, None);
        row(load, "Phoenix", &meshed, Some(&direct));
    }
    println!(
        "\nProxy memory after the runs: client {} KiB, server {} KiB (VmRSS).",
        rss_kib(mesh.pids.0)?,
        rss_kib(mesh.pids.1)?
    );
    Ok(())
}

impl Load {
    /// The protocol and the load, as the table's first two columns say them.
    fn columns(&self) -> (&'static str, String) {
        let protocol = if self.h1 { "HTTP/1.1" } else { "HTTP/2" };
        let what = match self.rate {
            Some(r) if self.spread => format!("{r} req/s, {} conns, spread", self.connections),
            Some(r) => format!("{r} req/s, {} conns", self.connections),
            None if self.h1 => format!("max, {} conns", self.connections),
            None => format!("max, {} conns x {} streams", self.connections, self.streams),
        };
        (protocol, what)
    }

    fn name(&self) -> String {
        let (protocol, what) = self.columns();
        format!("{protocol} {what}")
    }
}

fn row(load: Load, path: &str, m: &Measured, direct: Option<&Measured>) {
    let (protocol, what) = load.columns();
    let added = |ours: f64, theirs: f64| format!("{:+.0} µs", ours - theirs);
    let (p50_added, p99_added) = match direct {
        Some(d) => (added(m.p50_us, d.p50_us), added(m.p99_us, d.p99_us)),
        None => ("".into(), "".into()),
    };
    let (client, server, per_k) = match m.proxy_cpu {
        Some((c, s)) => {
            let (c, s) = (c / m.secs, s / m.secs);
            let k = m.req_per_s / 1000.0;
            (
                format!("{c:.3} cores"),
                format!("{s:.3} cores"),
                format!("{:.3} / {:.3}", c / k, s / k),
            )
        }
        None => ("".into(), "".into(), "".into()),
    };
    println!(
        "| {protocol} | {what} | {path} | {:.0} | {:.0} µs | {:.0} µs | {p50_added} | {p99_added} | {} of {} | {client} | {server} | {per_k} |",
        m.req_per_s,
        m.p50_us,
        m.p99_us,
        m.failed,
        m.done + m.failed
    );
}

/// Runs h2load against `addr`. A spread load runs one h2load per
/// connection, each started one request interval after the last, so that
/// requests arrive evenly; h2load's own connections keep their rate in
/// lockstep, every connection's request at the same instant (10 at once,
/// every 10 ms, for 1,000 req/s over 10).
fn h2load(
    addr: SocketAddr,
    load: Load,
    seconds: u32,
    body: &Path,
    dir: &Path,
    pids: Option<(u32, u32)>,
) -> anyhow::Result<Measured> {
    let runs = if load.spread { load.connections } else { 1 };
    let command = |i: u32| -> anyhow::Result<(Command, PathBuf)> {
        let log = dir.join(format!("requests.{i}.log"));
        let _ = std::fs::remove_file(&log);
        let connections = load.connections / runs;
        let mut cmd = Command::new("h2load");
        cmd.arg(format!("http://{addr}/bench"))
            .args(["-d", body.to_str().context("path")?])
            .args(["-c", &connections.to_string()])
            .args(["-D", &seconds.to_string()])
            .args(["--warm-up-time", "1"])
            .arg(format!("--log-file={}", log.display()));
        if load.h1 {
            cmd.arg("--h1");
        }
        match load.rate {
            Some(rate) => {
                cmd.args(["--rps", &(rate / load.connections).to_string()])
                    .args(["-m", "1"]);
            }
            None => {
                cmd.args(["-m", &load.streams.to_string()]);
            }
        }
        Ok((cmd, log))
    };
    let interval = Duration::from_secs_f64(1.0 / f64::from(load.rate.unwrap_or(1).max(1)));
    let before = pids.map(|(c, s)| (cpu_secs(c), cpu_secs(s)));
    let started = std::time::Instant::now();
    let mut children = Vec::new();
    for i in 0..runs {
        if i > 0 {
            std::thread::sleep(interval);
        }
        let (mut cmd, log) = command(i)?;
        let child = cmd.stdout(Stdio::piped()).spawn().context("h2load runs")?;
        children.push((child, log));
    }
    let mut outputs = Vec::new();
    for (child, log) in children {
        let out = child.wait_with_output().context("h2load runs")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(out.status.success(), "h2load failed: {text}");
        outputs.push((text, log));
    }
    let secs = started.elapsed().as_secs_f64();
    let after = pids.map(|(c, s)| (cpu_secs(c), cpu_secs(s)));
    let count = |text: &str, what: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with("requests:"))
            .and_then(|l| {
                l.split(',')
                    .find(|p| p.trim().ends_with(what))
                    .and_then(|p| p.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    };
    let rate_of = |text: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with("finished in"))
            .and_then(|l| l.split(',').nth(1))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0)
    };
    let mut latencies: Vec<f64> = Vec::new();
    for (text, log) in &outputs {
        let before = latencies.len();
        latencies.extend(
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split('\t').nth(2)?.trim().parse::<f64>().ok()),
        );
        if latencies.len() == before {
            bail!("h2load logged no request: {text}");
        }
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    // The warm-up second is not in h2load's counts; CPU is taken over the
    // whole run and divided by its length, so per-second figures hold.
    let proxy_cpu = match (before, after) {
        (Some((c0, s0)), Some((c1, s1))) => Some((c1? - c0?, s1? - s0?)),
        _ => None,
    };
    let sum = |what: &str| outputs.iter().map(|(t, _)| count(t, what)).sum::<u64>();
    let req_per_s = outputs.iter().map(|(t, _)| rate_of(t)).sum::<f64>();
    Ok(Measured {
        done: sum("succeeded"),
        failed: sum("failed"),
        req_per_s,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        proxy_cpu,
        secs,
    })
}

/// The app: 100 bytes for any request, its body read whole first.
fn app() -> SocketAddr {
    http_app::spawn(|req: hyper::Request<hyper::body::Incoming>| async move {
        let _ = req.into_body().collect().await;
        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
            &[b'y'; 100],
        ))))
    })
}

/// A two-workload mesh from the release build.
struct Mesh {
    child: Child,
    outbound: SocketAddr,
    /// Client and server proxy pids.
    pids: (u32, u32),
}

impl Mesh {
    fn start(dir: &Path, app: SocketAddr) -> anyhow::Result<Self> {
        let mesh = dir.join("mesh.yaml");
        std::fs::write(
            &mesh,
            format!(
                "trustDomain: phoenix.local\nstateDir: state\nworkloads:\n  \
                 - name: client\n    upstreams: [{{service: web, listen: \"127.0.0.1:0\"}}]\n  \
                 - name: web\n    serve: [{{service: web, target: \"{app}\"}}]\n"
            ),
        )?;
        let (child, report) = phoenix_up(&mesh)?;
        let proxy = |w: &str| proxy_of(&report, w);
        let client = proxy("client")?;
        let outbound = client["outbound"][0]["listen"]
            .as_str()
            .context("listen")?
            .parse()?;
        let pid = |p: &serde_json::Value| p["pid"].as_u64().map(|n| n as u32).context("pid");
        let pids = (pid(&client)?, pid(&proxy("web")?)?);
        // Until a request crosses.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while Command::new("curl")
            .args(["-sf", "-o", "/dev/null", &format!("http://{outbound}/")])
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            ensure!(
                std::time::Instant::now() < deadline,
                "no request crossed the mesh within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Self {
            child,
            outbound,
            pids,
        })
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
