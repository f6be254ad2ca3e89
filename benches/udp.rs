//! UDP through the mesh against UDP direct, in one run on one machine:
//! ping-pong latency (p50, p99) and the most datagrams one flow carries.
//!
//! - **Ping-pong**: 100-byte datagrams to a UDP echo app in this process,
//!   one in flight, 1,000 warm-up round trips, then blocks of 4,000 with
//!   the paths taking turns block by block (the machine is noisy: both
//!   paths see the same noise).
//! - **One flow's rate**: iperf3 in UDP mode (`-l 1200`: iperf3's default
//!   1460 bytes exceeds a QUIC datagram on loopback, 1452), at 200 Mbit/s
//!   (the loss target) and unlimited (`-b 0`: what one flow
//!   carries); datagrams a second delivered, loss as iperf3 counts it.
//!   iperf3's TCP control connection and its UDP stream share a port, so
//!   the mesh carries a TCP and a UDP upstream on that port.
//!
//! The mesh is the real release build started by `phoenix up`; each proxy's
//! CPU is read from /proc around each run.
//!
//!   cargo build --release --workspace --bins && cargo bench --bench udp
//!   cargo bench --bench udp -- --quick

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench panics on failure by design

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use process::{commit, cpu_secs, phoenix_up, proxy_of, rss_kib};

#[path = "support/process.rs"]
mod process;

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (blocks, seconds) = if quick { (1, 2) } else { (5, 5) };
    ensure!(
        Command::new("iperf3").arg("--version").output().is_ok(),
        "iperf3 is missing: apt-get install iperf3"
    );
    let echo = udp_echo()?;
    let iperf_port = free_port_both()?;
    let _iperf = Spawned(
        Command::new("iperf3")
            .args(["-s", "-B", "127.0.0.1", "-p", &iperf_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("iperf3 -s")?,
    );
    let dir = tempfile::tempdir()?;
    let mesh = Mesh::start(dir.path(), echo, iperf_port)?;

    println!("# UDP through the mesh\n");
    println!(
        "Machine: {} cores; commit {}; loopback; release build.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        commit()
    );
    println!(
        "Proxies' VmRSS at the start: client {} KiB, server {} KiB.\n",
        rss_kib(mesh.pids.0)?,
        rss_kib(mesh.pids.1)?
    );
    println!("## Ping-pong, 100-byte datagrams, one in flight\n");
    println!(
        "| path | round trips | p50 | p99 | p50 added | p99 added | client proxy CPU per round trip | server proxy CPU per round trip |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let direct = UdpSocket::bind("127.0.0.1:0")?;
    direct.connect(echo)?;
    let meshed = UdpSocket::bind("127.0.0.1:0")?;
    meshed.connect(mesh.udp_echo)?;
    for s in [&direct, &meshed] {
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        // The meshed flow's setup, then the warm-up.
        for _ in 0..1_000 {
            ping(s)?;
        }
    }
    let (mut d, mut m) = (Vec::new(), Vec::new());
    let cpu_before = mesh.cpu()?;
    for _ in 0..blocks {
        for _ in 0..4_000 {
            d.push(ping(&direct)?);
        }
        for _ in 0..4_000 {
            m.push(ping(&meshed)?);
        }
    }
    let cpu = mesh.cpu()? - cpu_before;
    let (d50, d99) = (percentile(&mut d, 0.5), percentile(&mut d, 0.99));
    let (m50, m99) = (percentile(&mut m, 0.5), percentile(&mut m, 0.99));
    println!(
        "| direct | {} | {d50:.0} µs | {d99:.0} µs | | | | |",
        d.len()
    );
    let per = |cores: f64| format!("{:.1} µs", cores * 1e6 / m.len() as f64);
    println!(
        "| Phoenix | {} | {m50:.0} µs | {m99:.0} µs | {:+.0} µs | {:+.0} µs | {} | {} |",
        m.len(),
        m50 - d50,
        m99 - d99,
        per(cpu.0),
        per(cpu.1)
    );

    println!("\n## One flow, iperf3 -u -l 1200, {seconds} s\n");
    println!(
        "| rate asked | path | datagrams/s delivered | Mbit/s delivered | lost | client proxy CPU | server proxy CPU | proxies' VmRSS after (KiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for rate in ["200M", "0"] {
        let asked = if rate == "0" {
            "unlimited"
        } else {
            "200 Mbit/s"
        };
        let d = iperf(iperf_port, rate, seconds)?;
        println!(
            "| {asked} | direct | {:.0} | {:.1} | {:.2}% | | | |",
            d.delivered_pps, d.delivered_mbps, d.lost_percent
        );
        let before = mesh.cpu()?;
        let p = iperf(mesh.iperf, rate, seconds)?;
        let cpu = mesh.cpu()? - before;
        println!(
            "| {asked} | Phoenix | {:.0} | {:.1} | {:.2}% | {:.2} cores | {:.2} cores | {} / {} |",
            p.delivered_pps,
            p.delivered_mbps,
            p.lost_percent,
            cpu.0 / p.secs,
            cpu.1 / p.secs,
            rss_kib(mesh.pids.0)?,
            rss_kib(mesh.pids.1)?
        );
    }
    let drops = mesh.metric_sum("client", "udp_datagrams_total", "dropped_overflow")?
        + mesh.metric_sum("server", "udp_datagrams_total", "dropped_overflow")?;
    let too_large = mesh.metric_sum("client", "udp_datagrams_total", "too_large")?;
    println!(
        "\nDropped by the proxies (full queues, counted): {drops}; too large: {too_large}. \
         Proxy memory after the runs: client {} KiB, server {} KiB (VmRSS).",
        rss_kib(mesh.pids.0)?,
        rss_kib(mesh.pids.1)?
    );
    Ok(())
}

/// One round trip's time, µs.
fn ping(s: &UdpSocket) -> anyhow::Result<f64> {
    let msg = [b'p'; 100];
    let mut buf = [0u8; 256];
    let start = Instant::now();
    s.send(&msg)?;
    let n = s.recv(&mut buf).context("no echo within 2 s")?;
    ensure!(n == msg.len(), "echo of {n} bytes");
    Ok(start.elapsed().as_secs_f64() * 1e6)
}

fn percentile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)]
}

/// What one iperf3 run measured.
struct Iperf {
    delivered_pps: f64,
    delivered_mbps: f64,
    lost_percent: f64,
    secs: f64,
}

fn iperf(port: u16, rate: &str, seconds: u32) -> anyhow::Result<Iperf> {
    let out = Command::new("iperf3")
        .args([
            "-c",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-u",
            "-b",
            rate,
            "-l",
            "1200",
            "-t",
            &seconds.to_string(),
            "-w",
            "4M",
            "--json",
        ])
        .output()?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stderr).into_owned())?;
    let sum = &report["end"]["sum"];
    let f = |k: &str| {
        sum[k]
            .as_f64()
            .with_context(|| format!("iperf3 printed no {k}"))
    };
    let (packets, lost, secs) = (f("packets")?, f("lost_packets")?, f("seconds")?);
    let delivered = packets - lost;
    Ok(Iperf {
        delivered_pps: delivered / secs,
        delivered_mbps: delivered * 1200.0 * 8.0 / secs / 1e6,
        lost_percent: f("lost_percent")?,
        secs,
    })
}

/// A UDP echo app on its own thread.
fn udp_echo() -> anyhow::Result<SocketAddr> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let addr = socket.local_addr()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 65_535];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    });
    Ok(addr)
}

fn free_port_both() -> anyhow::Result<u16> {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
}

struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A two-workload mesh from the release build: `echo` over UDP, `iperf`
/// over both.
struct Mesh {
    child: Spawned,
    udp_echo: SocketAddr,
    iperf: u16,
    admins: (SocketAddr, SocketAddr),
    /// Client and server proxy pids.
    pids: (u32, u32),
}

impl Mesh {
    fn start(dir: &Path, echo: SocketAddr, iperf: u16) -> anyhow::Result<Self> {
        let listen = free_port_both()?;
        let mesh = dir.join("mesh.yaml");
        std::fs::write(
            &mesh,
            format!(
                "trustDomain: phoenix.local\nstateDir: state\nworkloads:\n  \
                 - name: client\n    upstreams:\n      \
                 - {{service: echo, transport: udp, listen: \"127.0.0.1:0\"}}\n      \
                 - {{service: iperf, transport: udp, listen: \"127.0.0.1:{listen}\"}}\n      \
                 - {{service: iperf, listen: \"127.0.0.1:{listen}\", protocol: opaque}}\n  \
                 - name: server\n    serve:\n      \
                 - {{service: echo, transport: udp, target: \"{echo}\"}}\n      \
                 - {{service: iperf, transport: udp, target: \"127.0.0.1:{iperf}\"}}\n      \
                 - {{service: iperf, target: \"127.0.0.1:{iperf}\", protocol: opaque}}\n"
            ),
        )?;
        let (child, report) = phoenix_up(&mesh)?;
        let child = Spawned(child);
        let proxy = |w: &str| proxy_of(&report, w);
        let (client, server) = (proxy("client")?, proxy("server")?);
        let udp_echo = client["outbound"]
            .as_array()
            .and_then(|o| o.iter().find(|l| l["service"] == "echo/udp"))
            .and_then(|l| l["listen"].as_str()?.parse().ok())
            .context("no UDP listener for echo")?;
        let pid = |p: &serde_json::Value| p["pid"].as_u64().map(|n| n as u32).context("pid");
        let admin = |p: &serde_json::Value| -> anyhow::Result<SocketAddr> {
            Ok(p["admin"].as_str().context("admin")?.parse()?)
        };
        Ok(Self {
            child,
            udp_echo,
            iperf: listen,
            admins: (admin(&client)?, admin(&server)?),
            pids: (pid(&client)?, pid(&server)?),
        })
    }

    /// CPU seconds of the client and server proxies so far.
    fn cpu(&self) -> anyhow::Result<Cpu> {
        Ok(Cpu(cpu_secs(self.pids.0)?, cpu_secs(self.pids.1)?))
    }

    /// The sum of one metric's series with `result` in their labels.
    fn metric_sum(&self, workload: &str, name: &str, result: &str) -> anyhow::Result<f64> {
        let admin = if workload == "client" {
            self.admins.0
        } else {
            self.admins.1
        };
        let out = Command::new("curl")
            .args(["-sf", &format!("http://{admin}/metrics")])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(&format!("result=\"{result}\"")))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum())
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.0.id().to_string()])
            .status();
    }
}

#[derive(Clone, Copy)]
struct Cpu(f64, f64);

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, o: Cpu) -> Cpu {
        Cpu(self.0 - o.0, self.1 - o.1)
    }
}
