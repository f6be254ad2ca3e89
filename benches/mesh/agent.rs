//! The agent: a helper process that takes one JSON [`Request`] per stdin line,
//! carries it out from where it runs (its network namespace), and answers
//! with one JSON [`Reply`] line. The bench keeps one per side: the client
//! side's generates the load; the server side's reads the admin endpoints
//! that only its namespace can reach.
//!
//! Load is generated with blocking sockets on one thread: no runtime between
//! the measuring code and the socket. The handshake client is async (quinn).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use phoenix_api::SpiffeId;
use phoenix_api::control::ALPN_TUNNEL;
use phoenix_api::tls_policy::KeyExchange;
use phoenix_control_plane::ca::{Ca, ROOT_CERT_FILE};
use phoenix_tls::credentials::Credentials;
use phoenix_tls::endpoint::TransportSettings;
use phoenix_tls::handshake::{TlsContext, TlsPolicy};
use rustls::NamedGroup;
use serde::{Deserialize, Serialize};

use crate::apps::{Fnv, MODE_CHECKED, MODE_ECHO, MODE_THROUGHPUT, prepare_child};

/// How long one socket operation may block before the run is failed.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Client connections each handshake worker keeps open: a connection is
/// closed only well after the server has finished its side of it.
const HANDSHAKE_WINDOW: usize = 8;

/// What the bench asks of an agent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// HTTP GET (admin endpoints).
    Get { addr: SocketAddr, path: String },
    /// One echo round trip on a fresh connection.
    Echo { addr: SocketAddr },
    /// One stream of bytes for at most `max_bytes` or `max_secs`.
    Throughput {
        addr: SocketAddr,
        max_bytes: u64,
        max_secs: f64,
        /// Also compare a digest of the bytes (`--check`).
        checked: bool,
        /// Parallel connections (`--streams`), each carrying a share of
        /// `max_bytes` from its own thread.
        streams: u32,
    },
    /// `size`-byte request/response, one persistent connection per address;
    /// the addresses take turns in `blocks` blocks of `rounds`, so a change
    /// in the machine's load during the run affects them alike.
    PingPong {
        addrs: Vec<SocketAddr>,
        warmup: u32,
        blocks: u32,
        rounds: u32,
        size: usize,
    },
    /// The UDP counters of the agent's network namespace.
    UdpStats,
    /// Opens `count` connections, one round trip each, and keeps them.
    OpenIdle { addr: SocketAddr, count: u32 },
    /// Closes the connections of `OpenIdle`.
    CloseIdle,
    /// Fresh full handshakes against a proxy's inbound port; the last few
    /// connections stay open until `CloseHandshakes`.
    Handshakes(HandshakeRequest),
    /// Closes what `Handshakes` kept open.
    CloseHandshakes,
}

/// Parameters of [`Request::Handshakes`].
#[derive(Debug, Serialize, Deserialize)]
pub struct HandshakeRequest {
    /// The proxy's inbound (QUIC) address.
    pub addr: SocketAddr,
    /// Handshakes in all.
    pub count: u32,
    /// Handshakes in flight at once.
    pub concurrency: u32,
    /// Local address to bind the client endpoint on.
    pub bind: IpAddr,
    /// The mesh state directory holding the CA.
    pub state_dir: PathBuf,
    /// Trust domain of the mesh.
    pub trust_domain: String,
    /// Identity our certificate carries.
    pub client_identity: String,
    /// Identity the proxy must present.
    pub server_identity: String,
}

/// An agent's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The request's result.
    Ok(serde_json::Value),
    /// Why it failed.
    Err(String),
}

/// Result of [`Request::Get`].
#[derive(Debug, Serialize, Deserialize)]
pub struct GetResult {
    pub status: u16,
    pub body: String,
}

/// Result of [`Request::Throughput`].
#[derive(Debug, Serialize, Deserialize)]
pub struct ThroughputResult {
    /// Bytes the server counted.
    pub bytes: u64,
    /// From the first byte written to the server's count read.
    pub secs: f64,
}

/// Result of [`Request::PingPong`], per address.
#[derive(Debug, Serialize, Deserialize)]
pub struct LatencyResult {
    pub rounds: u32,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    /// Sum of the measured round trips.
    pub secs: f64,
}

/// Result of [`Request::Handshakes`].
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HandshakeResult {
    /// Handshakes completed.
    pub ok: u32,
    /// Handshakes failed.
    pub failed: u32,
    /// Completed ones that negotiated X25519MLKEM768.
    pub pq: u32,
    /// Wall time.
    pub secs: f64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

/// Runs the agent until stdin closes.
pub fn run() -> anyhow::Result<()> {
    prepare_child();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut state = State::default();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lines() {
        let line = line?;
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(request) => match handle(&runtime, &mut state, request) {
                Ok(v) => Reply::Ok(v),
                Err(e) => Reply::Err(format!("{e:#}")),
            },
            Err(e) => Reply::Err(format!("bad request `{line}`: {e}")),
        };
        writeln!(out, "{}", serde_json::to_string(&reply)?)?;
        out.flush()?;
    }
    Ok(())
}

/// What an agent holds between requests.
#[derive(Default)]
struct State {
    idle: Vec<TcpStream>,
    handshakes: Option<(quinn::Endpoint, Vec<quinn::Connection>)>,
}

fn handle(
    runtime: &tokio::runtime::Runtime,
    state: &mut State,
    request: Request,
) -> anyhow::Result<serde_json::Value> {
    Ok(match request {
        Request::Get { addr, path } => serde_json::to_value(get(addr, &path)?)?,
        Request::Echo { addr } => {
            let mut tcp = connect(addr)?;
            round_trip(&mut tcp, &[MODE_ECHO, b'x'], 1)?;
            serde_json::Value::Null
        }
        Request::Throughput {
            addr,
            max_bytes,
            max_secs,
            checked,
            streams,
        } => serde_json::to_value(parallel_throughput(
            addr, max_bytes, max_secs, checked, streams,
        )?)?,
        Request::PingPong {
            addrs,
            warmup,
            blocks,
            rounds,
            size,
        } => serde_json::to_value(ping_pong(&addrs, warmup, blocks, rounds, size)?)?,
        Request::UdpStats => serde_json::to_value(udp_stats()?)?,
        Request::OpenIdle { addr, count } => {
            for i in 0..count {
                let mut tcp = connect(addr).with_context(|| format!("connection {i}"))?;
                round_trip(&mut tcp, &[MODE_ECHO, b'x'], 1)
                    .with_context(|| format!("connection {i}"))?;
                state.idle.push(tcp);
            }
            serde_json::json!(state.idle.len())
        }
        Request::CloseIdle => {
            state.idle.clear();
            serde_json::Value::Null
        }
        Request::Handshakes(req) => {
            let (result, kept) = runtime.block_on(handshakes(req))?;
            state.handshakes = Some(kept);
            serde_json::to_value(result)?
        }
        Request::CloseHandshakes => {
            if let Some((endpoint, conns)) = state.handshakes.take() {
                for c in conns {
                    c.close(0u32.into(), b"done");
                }
                runtime.block_on(async {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle()).await;
                });
            }
            serde_json::Value::Null
        }
    })
}

fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .with_context(|| format!("cannot connect to {addr}"))?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(tcp)
}

/// Writes `msg` and reads `answer_len` bytes back.
fn round_trip(tcp: &mut TcpStream, msg: &[u8], answer_len: usize) -> anyhow::Result<()> {
    tcp.write_all(msg)?;
    let mut back = vec![0u8; answer_len];
    tcp.read_exact(&mut back)?;
    Ok(())
}

/// `streams` connections at once; the bytes are their sum and the time
/// the slowest one's (all start together).
fn parallel_throughput(
    addr: SocketAddr,
    max_bytes: u64,
    max_secs: f64,
    checked: bool,
    streams: u32,
) -> anyhow::Result<ThroughputResult> {
    if streams <= 1 {
        return throughput(addr, max_bytes, max_secs, checked);
    }
    let share = max_bytes / u64::from(streams);
    let workers: Vec<_> = (0..streams)
        .map(|_| std::thread::spawn(move || throughput(addr, share, max_secs, checked)))
        .collect();
    let mut total = ThroughputResult {
        bytes: 0,
        secs: 0.0,
    };
    for w in workers {
        let r = w
            .join()
            .map_err(|_| anyhow::anyhow!("a throughput stream panicked"))??;
        total.bytes += r.bytes;
        total.secs = total.secs.max(r.secs);
    }
    Ok(total)
}

fn throughput(
    addr: SocketAddr,
    max_bytes: u64,
    max_secs: f64,
    checked: bool,
) -> anyhow::Result<ThroughputResult> {
    let mut tcp = connect(addr)?;
    // Bytes that do not compress or repeat, in case anything on the path cares.
    let mut chunk: Vec<u8> = (0..256 * 1024).map(|_| rand::random::<u8>()).collect();
    let limit = Duration::from_secs_f64(max_secs);
    tcp.write_all(&[if checked {
        MODE_CHECKED
    } else {
        MODE_THROUGHPUT
    }])?;
    let mut digest = Fnv::default();
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < max_bytes && start.elapsed() < limit {
        let n = chunk
            .len()
            .min(usize::try_from(max_bytes - sent).unwrap_or(usize::MAX));
        if checked {
            // A different chunk each time: a repeated or skipped chunk
            // changes the digest too.
            let k = n.min(8);
            chunk[..k].copy_from_slice(&sent.to_be_bytes()[..k]);
            digest.write(&chunk[..n]);
        }
        tcp.write_all(&chunk[..n])?;
        sent += n as u64;
    }
    tcp.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    tcp.read_exact(&mut count)
        .context("the server's byte count did not arrive")?;
    let secs = start.elapsed().as_secs_f64();
    let bytes = u64::from_be_bytes(count);
    ensure!(
        bytes == sent,
        "sent {sent} bytes but the server counted {bytes}"
    );
    if checked {
        let mut theirs = [0u8; 8];
        tcp.read_exact(&mut theirs)
            .context("the server's digest did not arrive")?;
        ensure!(
            u64::from_be_bytes(theirs) == digest.0,
            "the server read {bytes} bytes, as many as were sent, but not the same bytes (digest mismatch)"
        );
    }
    Ok(ThroughputResult { bytes, secs })
}

fn ping_pong(
    addrs: &[SocketAddr],
    warmup: u32,
    blocks: u32,
    rounds: u32,
    size: usize,
) -> anyhow::Result<Vec<LatencyResult>> {
    ensure!(blocks > 0 && rounds > 0, "no rounds");
    ensure!(size >= 4, "messages carry a 4-byte round number");
    let mut msg = vec![0x42u8; size];
    let mut back = vec![0u8; size];
    let mut conns = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let mut tcp = connect(*addr)?;
        tcp.write_all(&[MODE_ECHO])?;
        for _ in 0..warmup {
            tcp.write_all(&msg)?;
            tcp.read_exact(&mut back)?;
        }
        conns.push(tcp);
    }
    let total = (blocks * rounds) as usize;
    let mut samples: Vec<Vec<Duration>> = addrs.iter().map(|_| Vec::with_capacity(total)).collect();
    for _ in 0..blocks {
        for (tcp, samples) in conns.iter_mut().zip(&mut samples) {
            for round in 0..rounds {
                // Each message differs, and each echo is compared: a
                // stale or misrouted answer cannot pass.
                msg[..4].copy_from_slice(&round.to_be_bytes());
                let t = Instant::now();
                tcp.write_all(&msg)?;
                tcp.read_exact(&mut back)?;
                samples.push(t.elapsed());
                ensure!(back == msg, "echo {round} came back different");
            }
        }
    }
    Ok(samples.into_iter().map(summarize).collect())
}

fn summarize(mut samples: Vec<Duration>) -> LatencyResult {
    samples.sort_unstable();
    let n = samples.len().max(1);
    let pct = |p: f64| {
        let i = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
        samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    let sum: Duration = samples.iter().sum();
    LatencyResult {
        rounds: u32::try_from(samples.len()).unwrap_or(u32::MAX),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        mean_us: sum.as_secs_f64() * 1e6 / n as f64,
        secs: sum.as_secs_f64(),
    }
}

/// UDP counters of this network namespace (`/proc/net/snmp`).
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub struct UdpStats {
    pub in_datagrams: u64,
    pub in_errors: u64,
    pub rcvbuf_errors: u64,
    pub sndbuf_errors: u64,
}

fn udp_stats() -> anyhow::Result<UdpStats> {
    let text = std::fs::read_to_string("/proc/net/snmp")?;
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        bail!("no Udp lines in /proc/net/snmp");
    };
    let field = |name: &str| -> u64 {
        names
            .split_whitespace()
            .position(|n| n == name)
            .and_then(|i| values.split_whitespace().nth(i)?.parse().ok())
            .unwrap_or(0)
    };
    Ok(UdpStats {
        in_datagrams: field("InDatagrams"),
        in_errors: field("InErrors"),
        rcvbuf_errors: field("RcvbufErrors"),
        sndbuf_errors: field("SndbufErrors"),
    })
}

/// Minimal HTTP/1.1 GET with `Connection: close`.
fn get(addr: SocketAddr, path: &str) -> anyhow::Result<GetResult> {
    let mut tcp = connect(addr)?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    tcp.read_to_string(&mut raw)?;
    let Some((head, body)) = raw.split_once("\r\n\r\n") else {
        bail!("no HTTP response from {addr}");
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line from {addr}: {head}"))?;
    Ok(GetResult {
        status,
        body: body.to_owned(),
    })
}

type Kept = (quinn::Endpoint, Vec<quinn::Connection>);

/// Fresh full handshakes with a certificate from the mesh CA, as a peer
/// proxy would make them (same TLS context code, no resumption).
async fn handshakes(req: HandshakeRequest) -> anyhow::Result<(HandshakeResult, Kept)> {
    ensure!(
        req.state_dir.join(ROOT_CERT_FILE).is_file(),
        "no mesh CA in {}",
        req.state_dir.display()
    );
    let (ca, _) = Ca::load_or_create(&req.state_dir, &req.trust_domain, Default::default())?;
    let client_id: SpiffeId = req
        .client_identity
        .parse()
        .map_err(|e| anyhow::anyhow!("{}: {e:?}", req.client_identity))?;
    let server_id: SpiffeId = req
        .server_identity
        .parse()
        .map_err(|e| anyhow::anyhow!("{}: {e:?}", req.server_identity))?;
    // The client's key is of the mesh root's algorithm, as a proxy's is.
    let key = rcgen::KeyPair::generate_for(phoenix_control_plane::ca::signature_algorithm(
        ca.algorithm(),
    ))?;
    let pem = ca.issue_for_key(&key, &client_id, Duration::from_secs(3600))?;
    let provider = phoenix_tls::provider::provider(KeyExchange::PqOnly, &[]);
    let credentials = Arc::new(Credentials::default());
    credentials.store(Credentials::parse(&pem, &key.serialize_pem(), &provider)?);
    let tls = Arc::new(TlsContext::new(ca.root_pem(), credentials)?);
    let settings = TransportSettings::default();
    let endpoint = phoenix_tls::endpoint::bind(SocketAddr::new(req.bind, 0), &settings, None)?;

    let next = Arc::new(AtomicU32::new(0));
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..req.concurrency.max(1) {
        workers.spawn(worker(
            endpoint.clone(),
            tls.clone(),
            server_id.clone(),
            req.addr,
            next.clone(),
            req.count,
            settings.client_transport(),
        ));
    }
    let mut result = HandshakeResult::default();
    let mut kept = Vec::new();
    while let Some(done) = workers.join_next().await {
        let (part, conns) = done??;
        result.ok += part.ok;
        result.failed += part.failed;
        result.pq += part.pq;
        result.first_error = result.first_error.or(part.first_error);
        kept.extend(conns);
    }
    result.secs = start.elapsed().as_secs_f64();
    Ok((result, (endpoint, kept)))
}

async fn worker(
    endpoint: quinn::Endpoint,
    tls: Arc<TlsContext>,
    server_id: SpiffeId,
    addr: SocketAddr,
    next: Arc<AtomicU32>,
    count: u32,
    transport: Arc<quinn::TransportConfig>,
) -> anyhow::Result<(HandshakeResult, Vec<quinn::Connection>)> {
    let policy = TlsPolicy::default();
    let mut tally = HandshakeResult::default();
    let mut open = VecDeque::with_capacity(HANDSHAKE_WINDOW + 1);
    while next.fetch_add(1, Ordering::Relaxed) < count {
        let (config, lease) = tls.client(
            &policy,
            server_id.clone(),
            &[ALPN_TUNNEL],
            true,
            transport.clone(),
        )?;
        match endpoint.connect_with(config, addr, "peer.phoenix")?.await {
            Ok(conn) => {
                tally.ok += 1;
                if lease.group() == Some(NamedGroup::X25519MLKEM768) {
                    tally.pq += 1;
                }
                open.push_back(conn);
                if open.len() > HANDSHAKE_WINDOW
                    && let Some(old) = open.pop_front()
                {
                    old.close(0u32.into(), b"done");
                }
            }
            Err(e) => {
                tally.failed += 1;
                tally.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    Ok((tally, open.into()))
}

/// The bench's handle on an agent process.
pub struct AgentHandle {
    child: crate::child::Child,
}

/// How long a request may take (the longest are the measurements).
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

impl AgentHandle {
    /// Starts an agent, inside `netns` when given.
    pub fn start(name: &str, netns: Option<&str>) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let child = crate::child::Child::spawn(
            name,
            netns,
            &exe,
            &[],
            &[(crate::ROLE_ENV, "agent".to_owned())],
        )?;
        Ok(Self { child })
    }

    /// Sends `request` and waits for its result.
    pub fn call<T: serde::de::DeserializeOwned>(&mut self, request: &Request) -> anyhow::Result<T> {
        self.child.send_line(&serde_json::to_string(request)?)?;
        let line = self.child.line(CALL_TIMEOUT)?;
        match serde_json::from_str::<Reply>(&line)
            .with_context(|| format!("{} answered `{line}`", self.child.name))?
        {
            Reply::Ok(v) => Ok(serde_json::from_value(v)?),
            Reply::Err(e) => bail!("{}: {e}", self.child.name),
        }
    }

    /// HTTP GET from the agent's namespace.
    pub fn get(&mut self, addr: SocketAddr, path: &str) -> anyhow::Result<GetResult> {
        self.call(&Request::Get {
            addr,
            path: path.to_owned(),
        })
    }
}
