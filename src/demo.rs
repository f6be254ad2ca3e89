//! `phoenix demo`: a whole mesh on this machine with real traffic.
//!
//! It writes a mesh file, starts its sample services (an HTTP/1.1 web
//! service, a gRPC service on two endpoints, a TCP echo) and `phoenix up`
//! for them (real control plane and proxy processes), then runs clients
//! that call them through the mesh and shows what happened: per service
//! the golden metrics the client's proxy keeps (success rate, requests a
//! second, p50 and p99), the echo's bytes and round trips, and every
//! handshake with its key-exchange group.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use phoenix_api::tls_policy::{AuthPolicy, IdentityAlgorithm};
use phoenix_control_plane::mesh::Mesh;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::http;
use crate::up::{self, UpOptions};

mod apps;
mod golden;

pub use golden::Golden;

/// Size of one demo request (and of its echo).
const REQUEST_BYTES: usize = 1024;
/// Requests per client connection before it reconnects.
const REQUESTS_PER_CONNECTION: usize = 200;
/// Concurrent echo clients.
const CLIENTS: usize = 2;
/// Concurrent web clients (HTTP/1.1, one keep-alive connection each).
const WEB_CLIENTS: usize = 2;

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
    /// Tunnel handshakes by the signature scheme that authenticated the
    /// server (what the client proxy verified: ML-DSA in a PQ mesh).
    pub sig_schemes: BTreeMap<String, u64>,
    /// Tunnel handshakes.
    pub handshakes: Counts,
    /// Requests (1 KiB echoed through the mesh).
    pub requests: Counts,
    /// Payload bytes.
    pub bytes: Bytes,
    /// Round-trip latency through both proxies.
    pub latency_micros: Latency,
    /// The HTTP and gRPC services' golden metrics, from the client's proxy.
    pub services: BTreeMap<String, Golden>,
    /// Calls as the demo's HTTP and gRPC clients saw them.
    pub calls: BTreeMap<String, Counts>,
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
pub async fn run(
    duration: Option<Duration>,
    json: bool,
    identities: IdentityAlgorithm,
) -> anyhow::Result<bool> {
    let dir = std::env::temp_dir().join(format!("phoenix-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveDir(dir.clone());

    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo.local_addr()?;
    tokio::spawn(apps::echo_server(echo));
    let web = TcpListener::bind("127.0.0.1:0").await?;
    let web_addr = web.local_addr()?;
    tokio::spawn(apps::web_server(web));
    let game = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let game_addr = game.local_addr()?;
    tokio::spawn(apps::game_server(game));
    let mut grpc_addrs = Vec::new();
    for _ in 0..2 {
        let grpc = TcpListener::bind("127.0.0.1:0").await?;
        grpc_addrs.push(grpc.local_addr()?);
        tokio::spawn(apps::grpc_server(grpc));
    }

    // ML-DSA identities make the mesh fully post-quantum: refuse classical
    // authentication too.
    let auth = if identities.is_post_quantum() {
        AuthPolicy::PqOnly
    } else {
        AuthPolicy::Any
    }
    .as_str();
    let mesh_path = dir.join("mesh.yaml");
    std::fs::write(
        &mesh_path,
        format!(
            "# Written by `phoenix demo`.\n\
             trustDomain: phoenix.local\n\
             keyExchange: pq-only\n\
             identityAlgorithm: {identities}\n\
             authPolicy: {auth}\n\
             stateDir: state\n\
             workloads:\n  \
               - name: client\n    \
                 upstreams:\n      \
                   - {{service: echo, listen: 127.0.0.1:0, protocol: opaque}}\n      \
                   - {{service: web, listen: 127.0.0.1:0}}\n      \
                   - {{service: grpc, listen: 127.0.0.1:0}}\n      \
                   - {{service: game, transport: udp, listen: 127.0.0.1:0}}\n  \
               - name: game\n    \
                 serve: [{{service: game, transport: udp, target: {game_addr}, allow: [client]}}]\n  \
               - name: echo\n    \
                 serve: [{{service: echo, target: {echo_addr}, allow: [client], protocol: opaque}}]\n  \
               - name: web\n    \
                 serve: [{{service: web, target: {web_addr}, allow: [client]}}]\n  \
               - name: grpc-1\n    \
                 serve: [{{service: grpc, target: {}, allow: [client]}}]\n  \
               - name: grpc-2\n    \
                 serve: [{{service: grpc, target: {}, allow: [client]}}]\n",
            grpc_addrs[0], grpc_addrs[1],
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
    let client_proxy = running
        .report
        .proxies
        .iter()
        .find(|p| p.workload == "client")
        .context("no client proxy")?;
    let listener = |service: &str| {
        client_proxy
            .outbound
            .iter()
            .find(|o| o.service == service)
            .map(|o| o.listen)
            .with_context(|| format!("the client proxy has no `{service}` listener"))
    };
    let (target, web_target, grpc_target, game_target) = (
        listener("echo")?,
        listener("web")?,
        listener("grpc")?,
        listener("game/udp")?,
    );
    let client_admin = client_proxy.admin;
    say(format!(
        "Mesh ready: app `client` → its proxy (pid {}) ⇒ PQ-QUIC ⇒ the services' proxies:\n  \
         echo (TCP) via {target}, web (HTTP/1.1) via {web_target}, grpc (gRPC on two endpoints, one HTTP/2 connection) via {grpc_target}, game (UDP, as QUIC datagrams) via {game_target}",
        client_proxy.pid
    ));

    let stats = Arc::new(Stats::default());
    let web_calls = Arc::new(apps::Calls::default());
    let grpc_calls = Arc::new(apps::Calls::default());
    let game_calls = Arc::new(apps::Calls::default());
    let stop = tokio_util_stop();
    let mut workers = Vec::new();
    for _ in 0..CLIENTS {
        workers.push(tokio::spawn(client(target, stats.clone(), stop.1.clone())));
    }
    for _ in 0..WEB_CLIENTS {
        workers.push(tokio::spawn(apps::web_client(
            web_target,
            web_calls.clone(),
            stop.1.clone(),
        )));
    }
    workers.push(tokio::spawn(apps::game_client(
        game_target,
        game_calls.clone(),
        stop.1.clone(),
    )));
    workers.push(tokio::spawn(apps::grpc_client(
        grpc_target,
        grpc_calls.clone(),
        stop.1.clone(),
    )));
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
                    "{:>4.0}s  echo {:>7} ok {:>3} failed p50 {:>5}µs  web {:>6} ok  grpc {:>6} ok  game {:>5} ok  handshakes {}",
                    started.elapsed().as_secs_f64(),
                    stats.ok.load(Ordering::Relaxed),
                    stats.failed.load(Ordering::Relaxed),
                    lat.p50,
                    web_calls.ok.load(Ordering::Relaxed),
                    grpc_calls.ok.load(Ordering::Relaxed),
                    game_calls.ok.load(Ordering::Relaxed),
                    if hs.0.is_empty() { "-".to_owned() } else { hs.0.iter().map(|(g, n)| format!("{g}×{n}")).collect::<Vec<_>>().join(" ") },
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
    let (kx_groups, sig_schemes, failed_handshakes) = handshakes(&running).await;
    let client_metrics = http::get(client_admin, "/metrics")
        .await
        .map(|(_, text)| text)
        .unwrap_or_default();
    let services: BTreeMap<String, Golden> = ["web", "grpc"]
        .into_iter()
        .map(|s| {
            (
                s.to_owned(),
                golden::of(&client_metrics, s, elapsed.as_secs_f64()),
            )
        })
        .collect();
    let count = |c: &apps::Calls| Counts {
        ok: c.ok.load(Ordering::Relaxed),
        failed: c.failed.load(Ordering::Relaxed),
    };
    let calls: BTreeMap<String, Counts> = [
        ("web".to_owned(), count(&web_calls)),
        ("grpc".to_owned(), count(&grpc_calls)),
        ("game".to_owned(), count(&game_calls)),
    ]
    .into();
    running.shutdown(Duration::from_secs(2)).await;

    let summary = Summary {
        version: 1,
        duration_seconds: (elapsed.as_secs_f64() * 10.0).round() / 10.0,
        handshakes: Counts {
            ok: kx_groups.values().sum(),
            failed: failed_handshakes,
        },
        kx_groups,
        sig_schemes,
        requests: Counts {
            ok: stats.ok.load(Ordering::Relaxed),
            failed: stats.failed.load(Ordering::Relaxed),
        },
        bytes: Bytes {
            sent: stats.sent.load(Ordering::Relaxed),
            received: stats.received.load(Ordering::Relaxed),
        },
        latency_micros: percentiles(&stats),
        services,
        calls,
    };
    let healthy = summary.requests.ok > 0
        && summary.handshakes.failed == 0
        && summary.handshakes.ok > 0
        && summary.calls.values().all(|c| c.ok > 0)
        && summary.services.values().all(|g| g.requests > 0)
        && (!identities.is_post_quantum()
            || summary.sig_schemes.keys().all(|s| s.starts_with("ML_DSA")));
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
            "  handshakes  {} ok, {} failed, by group: {:?}, by signature: {:?}",
            summary.handshakes.ok,
            summary.handshakes.failed,
            summary.kx_groups,
            summary.sig_schemes
        );
        println!(
            "  echo        p50 {} µs, p99 {} µs (round trip through two proxies)",
            summary.latency_micros.p50, summary.latency_micros.p99
        );
        if let Some(game) = summary.calls.get("game") {
            println!(
                "  game        {} moves answered, {} lost (UDP as QUIC datagrams)",
                game.ok, game.failed
            );
        }
        println!("  golden metrics from the client's proxy:");
        println!(
            "    {:<6} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "service", "requests", "success", "req/s", "p50", "p99"
        );
        for (name, g) in &summary.services {
            println!(
                "    {:<6} {:>9} {:>8.2}% {:>9.0} {:>7.2}ms {:>7.2}ms",
                name,
                g.requests,
                g.success_rate * 100.0,
                g.rps,
                g.p50_ms,
                g.p99_ms
            );
        }
        println!(
            "{}",
            if healthy {
                if identities.is_post_quantum() {
                    "All traffic crossed the mesh over post-quantum mutual TLS: ML-KEM key exchange, ML-DSA identities."
                } else {
                    "All traffic crossed the mesh over post-quantum mutual TLS."
                }
            } else {
                "The demo did not complete cleanly."
            }
        );
    }
    Ok(healthy)
}

/// Tunnel handshakes by group and by signature scheme (client side: one
/// per connection) and failures.
async fn handshakes(running: &up::Running) -> (BTreeMap<String, u64>, BTreeMap<String, u64>, u64) {
    let mut groups = BTreeMap::new();
    let mut schemes = BTreeMap::new();
    let mut failed = 0;
    for (_, text) in running.metrics().await {
        let ok = [("side", "client"), ("result", "success")];
        for (g, n) in http::by_label(&text, "tls_handshakes_total", "kx_group", &ok) {
            *groups.entry(g).or_insert(0) += n as u64;
        }
        for (s, n) in http::by_label(&text, "tls_handshakes_total", "sig_scheme", &ok) {
            *schemes.entry(s).or_insert(0) += n as u64;
        }
        failed += http::sum_metric(&text, "tls_handshakes_total", &[("result", "failure")]) as u64;
    }
    (groups, schemes, failed)
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
