//! `cargo bench --bench identity`: what ML-DSA-65 identities cost a full
//! post-quantum handshake, beside ECDSA P-256, in one run.
//!
//! Both with X25519MLKEM768 and mutual TLS, through Phoenix's own TLS
//! context and QUIC transport settings (the code a proxy runs), over real
//! UDP on loopback, no resumption. For each algorithm:
//! - latency: sequential handshakes, wall time from `connect` to the
//!   client's handshake completion (p50, p99);
//! - bytes and datagrams on the wire per handshake, both ways (quinn's
//!   connection statistics at the client once the handshake is done);
//! - server CPU per handshake and handshakes per server CPU-second, with 4
//!   handshakes in flight (the server runs on its own thread and runtime,
//!   and its thread CPU time is read, not the process's).
//!
//! Flags: `--quick` (a smoke run, as CI's `--check` runs use), `--count N`.
//! Results go in benches/README.md ("Post-quantum identities").

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench binary: failures end it

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use phoenix_api::SpiffeId;
use phoenix_api::control::ALPN_TUNNEL;
use phoenix_api::tls_policy::{AuthPolicy, IdentityAlgorithm};
use phoenix_control_plane::ca::{self, Ca};
use phoenix_tls::credentials::Credentials;
use phoenix_tls::endpoint::TransportSettings;
use phoenix_tls::handshake::{ClientAuth, TlsPolicy};
use phoenix_tls::{TlsContext, establish};

const TRUST_DOMAIN: &str = "bench.local";
const CONCURRENCY: u32 = 4;

struct Tally;

impl establish::Record for Tally {
    fn success(&self, _kx_group: &'static str, _sig_scheme: &'static str) {}
    fn failure(&self, _reason: phoenix_tls::HandshakeFailure) {}
}

/// One algorithm's figures.
#[derive(Debug)]
struct Figures {
    algorithm: IdentityAlgorithm,
    leaf_der_bytes: usize,
    first: Contact,
    returning: Contact,
    server_cpu_ms_per_handshake: f64,
    per_server_cpu_second: f64,
    sig_scheme: &'static str,
}

/// Sequential handshakes of one kind, per handshake.
#[derive(Debug)]
struct Contact {
    p50_us: f64,
    p99_us: f64,
    tx_bytes: f64,
    rx_bytes: f64,
    tx_datagrams: f64,
    rx_datagrams: f64,
    /// Handshakes whose address a token validated at once.
    validated: u32,
    first: bool,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let count = args
        .iter()
        .position(|a| a == "--count")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse::<u32>())
        .transpose()
        .context("--count takes a number")?
        .unwrap_or(if quick { 50 } else { 1000 });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut all = Vec::new();
    for algorithm in [IdentityAlgorithm::EcdsaP256, IdentityAlgorithm::MlDsa65] {
        eprintln!("== {algorithm}: {count} handshakes");
        all.push(runtime.block_on(measure(algorithm, count))?);
    }
    println!(
        "| identity | client | leaf certificate bytes (DER) | handshake p50 µs | p99 µs | client → server bytes | server → client bytes | datagrams → / ← | validated by token | peer signature |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for f in &all {
        for c in [&f.first, &f.returning] {
            println!(
                "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} / {:.1} | {}/{count} | {} |",
                f.algorithm,
                if c.first {
                    "first contact"
                } else {
                    "returning (token)"
                },
                f.leaf_der_bytes,
                c.p50_us,
                c.p99_us,
                c.tx_bytes,
                c.rx_bytes,
                c.tx_datagrams,
                c.rx_datagrams,
                c.validated,
                f.sig_scheme,
            );
        }
    }
    println!();
    println!("| identity | server CPU per handshake ms | handshakes per server CPU-second |");
    println!("|---|---:|---:|");
    for f in &all {
        println!(
            "| {} | {:.3} | {:.0} |",
            f.algorithm, f.server_cpu_ms_per_handshake, f.per_server_cpu_second
        );
    }
    Ok(())
}

/// A TLS context with a fresh key of `algorithm` certified by `ca` as `id`.
fn context(ca: &Ca, id: &SpiffeId) -> anyhow::Result<(TlsContext, usize)> {
    let key = rcgen::KeyPair::generate_for(ca::signature_algorithm(ca.algorithm()))?;
    let pem = ca.issue_for_key(&key, id, Duration::from_secs(3600))?;
    let der_len = {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem.as_bytes())?.len()
    };
    let provider = phoenix_tls::provider::provider(Default::default(), &[]);
    let credentials = Arc::new(Credentials::default());
    credentials.store(Credentials::parse(&pem, &key.serialize_pem(), &provider)?);
    Ok((TlsContext::new(ca.root_pem(), credentials)?, der_len))
}

async fn measure(algorithm: IdentityAlgorithm, count: u32) -> anyhow::Result<Figures> {
    let ca = Ca::generate_with(TRUST_DOMAIN, algorithm)?;
    let server_id = SpiffeId::workload(TRUST_DOMAIN, "bench", "server")?;
    let client_id = SpiffeId::workload(TRUST_DOMAIN, "bench", "client")?;
    let (server_tls, leaf_der_bytes) = context(&ca, &server_id)?;
    let (client_tls, _) = context(&ca, &client_id)?;
    let policy = TlsPolicy {
        auth_policy: if algorithm.is_post_quantum() {
            AuthPolicy::PqOnly
        } else {
            AuthPolicy::Any
        },
        ..TlsPolicy::default()
    };
    let server = Server::start(server_tls, policy.clone())?;
    let settings = TransportSettings::default();
    let client = Arc::new(Client {
        endpoint: phoenix_tls::endpoint::bind("127.0.0.1:0".parse()?, &settings, None)?,
        transport: settings.client_transport(),
        tls: client_tls,
        policy,
        server_id,
        addr: server.addr,
    });

    // Latency, bytes and datagrams: one handshake at a time, first contact
    // (no token) and returning (a token from the connection before).
    let mut runs = Vec::new();
    for returning in [false, true] {
        if returning {
            // The token the first measured handshake presents.
            let conn = client.handshake(true).await?.conn;
            wait_for_token(&conn).await;
            conn.close(0u32.into(), b"done");
        }
        let mut run = Run::default();
        let validated_before = server.validated();
        for _ in 0..count {
            let start = Instant::now();
            let established = client.handshake(returning).await?;
            run.latencies.push(start.elapsed());
            let stats = established.conn.stats();
            run.tx += stats.udp_tx.bytes;
            run.rx += stats.udp_rx.bytes;
            run.txd += stats.udp_tx.datagrams;
            run.rxd += stats.udp_rx.datagrams;
            run.sig_scheme = established.sig_scheme;
            if returning {
                wait_for_token(&established.conn).await;
            }
            established.conn.close(0u32.into(), b"done");
        }
        run.latencies.sort();
        run.validated = server.validated() - validated_before;
        runs.push(run);
    }

    // Server CPU: CONCURRENCY handshakes in flight.
    let before = server.cpu_secs();
    let next = Arc::new(AtomicU32::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (next, client) = (next.clone(), client.clone());
        workers.spawn(async move {
            let mut done = 0u32;
            while next.fetch_add(1, Ordering::Relaxed) < count {
                client
                    .handshake(true)
                    .await?
                    .conn
                    .close(0u32.into(), b"done");
                done += 1;
            }
            anyhow::Ok(done)
        });
    }
    let mut done = 0u32;
    while let Some(part) = workers.join_next().await {
        done += part??;
    }
    // Every handshake the server completed is in its CPU time once it has
    // accepted them all.
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.accepted() < 2 * count + 1 + done && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu = server.cpu_secs() - before;
    client.endpoint.wait_idle().await;
    server.stop();
    let n = f64::from(count);
    let per = |run: &Run, first: bool| Contact {
        p50_us: run.pct(0.50),
        p99_us: run.pct(0.99),
        tx_bytes: run.tx as f64 / n,
        rx_bytes: run.rx as f64 / n,
        tx_datagrams: run.txd as f64 / n,
        rx_datagrams: run.rxd as f64 / n,
        validated: run.validated,
        first,
    };
    Ok(Figures {
        algorithm,
        leaf_der_bytes,
        first: per(&runs[0], true),
        returning: per(&runs[1], false),
        server_cpu_ms_per_handshake: cpu * 1e3 / f64::from(done),
        per_server_cpu_second: f64::from(done) / cpu,
        sig_scheme: runs[1].sig_scheme,
    })
}

/// Servers send NEW_TOKEN once the handshake is confirmed, after the
/// client's `connect` has returned: a peer connection lives long enough to
/// get it, a bench connection waits for it (not timed).
async fn wait_for_token(conn: &quinn::Connection) {
    let deadline = Instant::now() + Duration::from_millis(200);
    while conn.stats().frame_rx.new_token == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// One sequential run's raw figures.
#[derive(Default)]
struct Run {
    latencies: Vec<Duration>,
    tx: u64,
    rx: u64,
    txd: u64,
    rxd: u64,
    validated: u32,
    sig_scheme: &'static str,
}

impl Run {
    fn pct(&self, p: f64) -> f64 {
        let len = self.latencies.len();
        let i = ((len as f64 * p).ceil() as usize).clamp(1, len) - 1;
        self.latencies[i].as_secs_f64() * 1e6
    }
}

/// The client side: Phoenix's TLS context and client transport, as a
/// proxy's connector uses them.
struct Client {
    endpoint: quinn::Endpoint,
    transport: Arc<quinn::TransportConfig>,
    tls: TlsContext,
    policy: TlsPolicy,
    server_id: SpiffeId,
    addr: SocketAddr,
}

impl Client {
    /// One full handshake; a `returning` client presents an address
    /// validation token from an earlier connection, a first-contact one has
    /// none (the server may then send only 3× what it received before the
    /// client's address is validated).
    async fn handshake(&self, returning: bool) -> anyhow::Result<establish::Established> {
        let (mut config, lease) = self.tls.client(
            &self.policy,
            self.server_id.clone(),
            &[ALPN_TUNNEL],
            true,
            self.transport.clone(),
        )?;
        if !returning {
            config.token_store(Arc::new(quinn::NoneTokenStore));
        }
        let connecting = self.endpoint.connect_with(
            config,
            self.addr,
            &phoenix_tls::tokens::peer_server_name(self.addr),
        )?;
        establish::connect(
            connecting,
            lease,
            tokio::time::sleep(Duration::from_secs(10)),
            &Tally,
        )
        .await
        .map_err(|f| anyhow::anyhow!("handshake failed: {}", f.reason.as_str()))
    }
}

/// The server: its own thread and current-thread runtime (as a proxy's
/// default), accepting every handshake as the proxy's inbound side does.
struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicU32>,
    /// Connections whose address a token validated.
    validated: Arc<AtomicU32>,
    cpu_nanos: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(tls: TlsContext, policy: TlsPolicy) -> anyhow::Result<Self> {
        let settings = TransportSettings::default();
        let endpoint = {
            // The endpoint must be made inside the runtime that drives it.
            let (tx, rx) = std::sync::mpsc::channel();
            let accepted = Arc::new(AtomicU32::new(0));
            let cpu_nanos = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let validated = Arc::new(AtomicU32::new(0));
            let (a, c, s, v) = (
                accepted.clone(),
                cpu_nanos.clone(),
                stop.clone(),
                validated.clone(),
            );
            let thread = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    // A server config lets the endpoint take connections;
                    // each is accepted with its own (`accept_with`).
                    let (default, _lease) = tls
                        .server(
                            &policy,
                            ClientAuth::Required,
                            &[ALPN_TUNNEL],
                            settings.server_transport(),
                        )
                        .unwrap();
                    let endpoint = phoenix_tls::endpoint::bind(
                        "127.0.0.1:0".parse().unwrap(),
                        &settings,
                        Some(default),
                    )
                    .unwrap();
                    tx.send(endpoint.local_addr().unwrap()).unwrap();
                    let mut tick = tokio::time::interval(Duration::from_millis(2));
                    loop {
                        c.store(thread_cpu_nanos(), Ordering::Relaxed);
                        if s.load(Ordering::Relaxed) {
                            break;
                        }
                        let incoming = tokio::select! {
                            i = endpoint.accept() => i,
                            _ = tick.tick() => continue,
                        };
                        let Some(incoming) = incoming else { break };
                        if incoming.remote_address_validated() {
                            v.fetch_add(1, Ordering::Relaxed);
                        }
                        let (config, lease) = tls
                            .server(
                                &policy,
                                ClientAuth::Required,
                                &[ALPN_TUNNEL],
                                settings.server_transport(),
                            )
                            .unwrap();
                        let a = a.clone();
                        tokio::spawn(async move {
                            if let Ok(e) = establish::accept(
                                incoming,
                                config,
                                lease,
                                ClientAuth::Required,
                                &Tally,
                            )
                            .await
                            {
                                a.fetch_add(1, Ordering::Relaxed);
                                let _ = e.conn.closed().await;
                            }
                        });
                    }
                    c.store(thread_cpu_nanos(), Ordering::Relaxed);
                });
            });
            let addr = rx.recv_timeout(Duration::from_secs(10))?;
            Self {
                addr,
                accepted,
                validated,
                cpu_nanos,
                stop,
                thread: Some(thread),
            }
        };
        Ok(endpoint)
    }

    fn accepted(&self) -> u32 {
        self.accepted.load(Ordering::Relaxed)
    }

    fn validated(&self) -> u32 {
        self.validated.load(Ordering::Relaxed)
    }

    /// The server thread's CPU time so far (updated every 2 ms and at each
    /// accept, which is finer than the figures need).
    fn cpu_secs(&self) -> f64 {
        std::thread::sleep(Duration::from_millis(5));
        self.cpu_nanos.load(Ordering::Relaxed) as f64 / 1e9
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn thread_cpu_nanos() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}
