//! `phoenix demo`: a whole mesh on this machine with real traffic.
//!
//! It writes a two-workload mesh file, starts an echo service and `phoenix
//! up` for it (real control plane and proxy processes), then runs clients
//! that send requests through the mesh and shows what happened: requests,
//! bytes, connections, handshakes with their key-exchange group, latency.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use phoenix_control_plane::mesh::Mesh;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::http;
use crate::up::{self, UpOptions};

/// Size of one demo request (and of its echo).
const REQUEST_BYTES: usize = 1024;
/// Requests per client connection before it reconnects.
const REQUESTS_PER_CONNECTION: usize = 200;
/// Concurrent demo clients.
const CLIENTS: usize = 4;

/// The demo's summary, printed as one JSON object with `-o json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Document version.
    pub version: u32,
    /// How long traffic ran.
    pub duration_seconds: f64,
    /// Tunnel handshakes by key-exchange group.
    pub kx_groups: BTreeMap<String, u64>,
    /// Tunnel handshakes.
    pub handshakes: Counts,
    /// Requests (1 KiB echoed through the mesh).
    pub requests: Counts,
    /// Payload bytes.
    pub bytes: Bytes,
    /// Round-trip latency through both proxies.
    pub latency_micros: Latency,
}

/// ok / failed.
#[derive(Debug, Serialize, Default)]
pub struct Counts {
    /// Succeeded.
    pub ok: u64,
    /// Failed.
    pub failed: u64,
}

/// sent / received.
#[derive(Debug, Serialize, Default)]
pub struct Bytes {
    /// Sent by the clients.
    pub sent: u64,
    /// Received back.
    pub received: u64,
}

/// Percentiles.
#[derive(Debug, Serialize, Default)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
}

#[derive(Debug, Default)]
struct Stats {
    ok: AtomicU64,
    failed: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    connections: AtomicU64,
    latencies: std::sync::Mutex<Vec<u32>>,
}

/// Runs the demo; `duration` None runs until Ctrl-C.
pub async fn run(duration: Option<Duration>, json: bool) -> anyhow::Result<bool> {
    let dir = std::env::temp_dir().join(format!("phoenix-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveDir(dir.clone());

    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo.local_addr()?;
    tokio::spawn(echo_server(echo));

    let mesh_path = dir.join("mesh.yaml");
    std::fs::write(
        &mesh_path,
        format!(
            "# Written by `phoenix demo`.\n\
             trustDomain: phoenix.local\n\
             keyExchange: pq-only\n\
             stateDir: state\n\
             workloads:\n  \
               - name: client\n    \
                 upstreams:\n      \
                   - service: echo\n        \
                     listen: 127.0.0.1:0\n  \
               - name: echo\n    \
                 serve:\n      \
                   - service: echo\n        \
                     target: {echo_addr}\n        \
                     allow: [client]\n"
        ),
    )?;
    let mesh = Mesh::load(&mesh_path)?;
    let say = |s: String| {
        if json {
            eprintln!("{s}")
        } else {
            println!("{s}")
        }
    };
    say(format!(
        "Starting a post-quantum mesh from {} ...",
        mesh_path.display()
    ));
    let options = UpOptions {
        mesh_path: mesh_path.clone(),
        drain_grace: Duration::from_secs(2),
        forward_logs: std::env::var_os("PHOENIX_LOG").is_some(),
    };
    let running = up::start(&options, &mesh).await?;
    let target = running
        .report
        .proxies
        .iter()
        .find(|p| p.workload == "client")
        .and_then(|p| p.outbound.iter().find(|o| o.service == "echo"))
        .map(|o| o.listen)
        .context("the client proxy has no `echo` listener")?;
    say(format!(
        "Mesh ready: app `client` → {target} → proxy (pid {}) ⇒ PQ-QUIC ⇒ proxy (pid {}) → echo at {echo_addr}",
        running.report.proxies[0].pid, running.report.proxies[1].pid
    ));

    let stats = Arc::new(Stats::default());
    let stop = tokio_util_stop();
    let mut workers = Vec::new();
    for _ in 0..CLIENTS {
        workers.push(tokio::spawn(client(target, stats.clone(), stop.1.clone())));
    }
    let started = Instant::now();
    let deadline = duration.map(|d| started + d);
    let ctrl_c = phoenix_runtime::process::shutdown_signal();
    tokio::pin!(ctrl_c);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        let sleep_until = deadline.map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = tick.tick() => {
                let hs = handshakes(&running).await;
                let lat = percentiles(&stats);
                say(format!(
                    "{:>4.0}s  requests {:>7} ok {:>3} failed  bytes {:>10}  connections {:>5}  handshakes {}  p50 {:>5}µs p99 {:>6}µs",
                    started.elapsed().as_secs_f64(),
                    stats.ok.load(Ordering::Relaxed),
                    stats.failed.load(Ordering::Relaxed),
                    stats.sent.load(Ordering::Relaxed) + stats.received.load(Ordering::Relaxed),
                    stats.connections.load(Ordering::Relaxed),
                    if hs.0.is_empty() { "-".to_owned() } else { hs.0.iter().map(|(g, n)| format!("{g}×{n}")).collect::<Vec<_>>().join(" ") },
                    lat.p50, lat.p99,
                ));
            }
            _ = async { match sleep_until { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => break,
            _ = &mut ctrl_c => break,
        }
    }
    let _ = stop.0.send(true);
    for w in workers {
        let _ = w.await;
    }
    let elapsed = started.elapsed();
    let (kx_groups, failed_handshakes) = handshakes(&running).await;
    running.shutdown(Duration::from_secs(2)).await;

    let summary = Summary {
        version: 1,
        duration_seconds: (elapsed.as_secs_f64() * 10.0).round() / 10.0,
        handshakes: Counts {
            ok: kx_groups.values().sum(),
            failed: failed_handshakes,
        },
        kx_groups,
        requests: Counts {
            ok: stats.ok.load(Ordering::Relaxed),
            failed: stats.failed.load(Ordering::Relaxed),
        },
        bytes: Bytes {
            sent: stats.sent.load(Ordering::Relaxed),
            received: stats.received.load(Ordering::Relaxed),
        },
        latency_micros: percentiles(&stats),
    };
    let healthy =
        summary.requests.ok > 0 && summary.handshakes.failed == 0 && summary.handshakes.ok > 0;
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!();
        println!("Summary after {:.1}s:", summary.duration_seconds);
        println!(
            "  requests    {} ok, {} failed",
            summary.requests.ok, summary.requests.failed
        );
        println!(
            "  bytes       {} sent, {} received",
            summary.bytes.sent, summary.bytes.received
        );
        println!(
            "  handshakes  {} ok, {} failed, by group: {:?}",
            summary.handshakes.ok, summary.handshakes.failed, summary.kx_groups
        );
        println!(
            "  latency     p50 {} µs, p99 {} µs (round trip through two proxies)",
            summary.latency_micros.p50, summary.latency_micros.p99
        );
        println!(
            "{}",
            if healthy {
                "All traffic crossed the mesh over post-quantum mutual TLS."
            } else {
                "The demo did not complete cleanly."
            }
        );
    }
    Ok(healthy)
}

/// Tunnel handshakes by group (client side: one per connection) and failures.
async fn handshakes(running: &up::Running) -> (BTreeMap<String, u64>, u64) {
    let mut groups = BTreeMap::new();
    let mut failed = 0;
    for (_, text) in running.metrics().await {
        for (g, n) in http::by_label(
            &text,
            "tls_handshakes_total",
            "kx_group",
            &[("side", "client"), ("result", "success")],
        ) {
            *groups.entry(g).or_insert(0) += n as u64;
        }
        failed += http::sum_metric(&text, "tls_handshakes_total", &[("result", "failure")]) as u64;
    }
    (groups, failed)
}

async fn client(
    target: std::net::SocketAddr,
    stats: Arc<Stats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let payload: Vec<u8> = (0..REQUEST_BYTES).map(|i| (i % 251) as u8).collect();
    let mut back = vec![0u8; REQUEST_BYTES];
    while !*stop.borrow() {
        let Ok(mut tcp) = TcpStream::connect(target).await else {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        stats.connections.fetch_add(1, Ordering::Relaxed);
        for _ in 0..REQUESTS_PER_CONNECTION {
            if *stop.borrow() {
                return;
            }
            let t = Instant::now();
            let round = async {
                tcp.write_all(&payload).await?;
                tcp.read_exact(&mut back).await?;
                std::io::Result::Ok(())
            };
            let result = tokio::select! {
                r = tokio::time::timeout(Duration::from_secs(5), round) => r,
                _ = stop.changed() => return,
            };
            match result {
                Ok(Ok(())) if back == payload => {
                    let us = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
                    stats.ok.fetch_add(1, Ordering::Relaxed);
                    stats
                        .sent
                        .fetch_add(REQUEST_BYTES as u64, Ordering::Relaxed);
                    stats
                        .received
                        .fetch_add(REQUEST_BYTES as u64, Ordering::Relaxed);
                    if let Ok(mut l) = stats.latencies.lock()
                        && l.len() < 2_000_000
                    {
                        l.push(us);
                    }
                }
                _ => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
}

fn percentiles(stats: &Stats) -> Latency {
    let Ok(l) = stats.latencies.lock() else {
        return Latency::default();
    };
    if l.is_empty() {
        return Latency::default();
    }
    let mut v = l.clone();
    drop(l);
    v.sort_unstable();
    let at = |q: f64| u64::from(v[((v.len() - 1) as f64 * q).round() as usize]);
    Latency {
        p50: at(0.50),
        p99: at(0.99),
    }
}

async fn echo_server(listener: TcpListener) {
    while let Ok((mut tcp, _)) = listener.accept().await {
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let (mut r, mut w) = tcp.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

fn tokio_util_stop() -> (
    tokio::sync::watch::Sender<bool>,
    tokio::sync::watch::Receiver<bool>,
) {
    tokio::sync::watch::channel(false)
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
