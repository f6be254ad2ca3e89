//! `cargo bench --bench mesh`: the Phoenix proxy pair against direct TCP and
//! a plain two-hop TCP forwarder pair, on loopback and over a veth pair
//! between two network namespaces. What is measured and why is in
//! `benches/README.md`; `benches/run` builds the binaries and runs this.
//!
//! One binary plays every part. Run normally, it orchestrates; with
//! `PHOENIX_BENCH_ROLE` set it is one of the helpers it starts (the test
//! server, a forwarder, or an agent that generates load from the client
//! side), so that each can be placed in a namespace with `ip netns exec`.
//!
//! Flags: `--quick` (small sizes, a smoke run), `--check` (tiny sizes; every
//! path must deliver every byte unchanged, which CI runs), `--no-netns`
//! (loopback only), `--veth-mtu N` (the veth link's MTU, 1500 by default;
//! the proxies discover the payload), `--max-udp-payload N` (a fixed payload
//! for both proxies; the veth MTU follows).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

#[path = "mesh/agent.rs"]
mod agent;
#[path = "mesh/apps.rs"]
mod apps;
#[path = "mesh/child.rs"]
mod child;
#[path = "mesh/netns.rs"]
mod netns;
#[path = "mesh/phoenix.rs"]
mod phoenix;
#[path = "mesh/procfs.rs"]
mod procfs;
#[path = "mesh/report.rs"]
mod report;
#[path = "mesh/tls_pair.rs"]
mod tls_pair;

use agent::{
    AgentHandle, HandshakeRequest, HandshakeResult, LatencyResult, Request, ThroughputResult,
    UdpStats,
};
use apps::Announce;
use child::Child;
use netns::NetnsPair;
use phoenix::{Phoenix, ProxySettings};

/// Environment variable naming the helper role of this process.
pub const ROLE_ENV: &str = "PHOENIX_BENCH_ROLE";
/// Environment variable with a helper's listen address.
const LISTEN_ENV: &str = "PHOENIX_BENCH_LISTEN";
/// Environment variable with a forwarder's target.
const TARGET_ENV: &str = "PHOENIX_BENCH_TARGET";

/// Interval of every readiness poll.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Size of a ping-pong message.
const MESSAGE_SIZE: usize = 100;
/// The veth link's MTU unless `--veth-mtu` says otherwise.
const DEFAULT_VETH_MTU: u32 = 1500;

/// Command-line options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Small sizes: a smoke run.
    pub quick: bool,
    /// Also run over veth between namespaces (when possible).
    pub netns: bool,
    /// `--max-udp-payload` for both proxies; `None`: they discover it.
    pub max_udp_payload: Option<u16>,
    /// `--veth-mtu`.
    pub veth_mtu: u32,
    /// `--check`: tiny sizes, correctness only.
    pub check: bool,
    /// `--streams`: parallel connections per throughput run.
    pub streams: u32,
    /// `--variant`: more Phoenix meshes, each with one setting changed.
    pub variants: Vec<Variant>,
}

/// A Phoenix mesh with one setting changed, measured in the same run as
/// the default one (the machine drifts between runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `cipherSuites: [TLS13_AES_128_GCM_SHA256]` (default: AES-256 first).
    Aes128,
    /// Both proxies with `--threads 2` (default: 1).
    Threads2,
}

impl Variant {
    fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "aes128" => Ok(Self::Aes128),
            "threads2" => Ok(Self::Threads2),
            other => bail!("--variant {other}: use aes128 or threads2"),
        }
    }

    /// How the tables name it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Aes128 => "(AES-128-GCM)",
            Self::Threads2 => "(--threads 2)",
        }
    }

    /// The mesh file's `cipherSuites`, when the variant sets them.
    pub fn cipher_suites(self) -> Option<&'static str> {
        match self {
            Self::Aes128 => Some("[TLS13_AES_128_GCM_SHA256]"),
            Self::Threads2 => None,
        }
    }

    /// Extra arguments of both proxies.
    pub fn proxy_args(self) -> &'static [&'static str] {
        match self {
            Self::Aes128 => &[],
            Self::Threads2 => &["--threads", "2"],
        }
    }
}

/// How much of each measurement to do.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub throughput_bytes: u64,
    pub throughput_secs: f64,
    /// Throughput runs per path, taking turns; the median is reported.
    pub throughput_runs: u32,
    pub pingpong_warmup: u32,
    /// Ping-pong blocks per path, taking turns.
    pub pingpong_blocks: u32,
    /// Round trips per block.
    pub pingpong_rounds: u32,
    pub idle_connections: u32,
    pub handshakes: u32,
    pub handshake_concurrency: u32,
}

impl Sizes {
    fn new(opts: &Options) -> Self {
        if opts.check {
            // Every path and measurement once, in seconds: what CI runs.
            Self {
                throughput_bytes: 32 << 20,
                throughput_secs: 10.0,
                throughput_runs: 1,
                pingpong_warmup: 20,
                pingpong_blocks: 1,
                pingpong_rounds: 200,
                idle_connections: 20,
                handshakes: 20,
                handshake_concurrency: 4,
            }
        } else if opts.quick {
            Self {
                throughput_bytes: 256 << 20,
                throughput_secs: 1.0,
                throughput_runs: 1,
                pingpong_warmup: 200,
                pingpong_blocks: 2,
                pingpong_rounds: 1_000,
                idle_connections: 200,
                handshakes: 200,
                handshake_concurrency: 4,
            }
        } else {
            Self {
                throughput_bytes: 4 << 30,
                throughput_secs: 5.0,
                throughput_runs: 3,
                pingpong_warmup: 1_000,
                pingpong_blocks: 5,
                pingpong_rounds: 4_000,
                idle_connections: 1_000,
                handshakes: 2_000,
                handshake_concurrency: 4,
            }
        }
    }
}

/// Where one side of a run lives.
#[derive(Debug, Clone)]
pub struct Side {
    /// Its network namespace; `None` is the bench's own (loopback runs).
    pub netns: Option<String>,
    /// The address its servers bind and the other side reaches.
    pub ip: IpAddr,
}

/// Which link a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Loopback,
    Veth,
}

impl Link {
    pub fn name(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Veth => "veth",
        }
    }
}

/// One path's figures.
#[derive(Debug)]
pub struct PathResult {
    /// Every throughput run.
    pub throughput: Vec<ThroughputResult>,
    /// Cores the whole machine kept busy during those runs (of all cores).
    pub machine_busy: f64,
    pub latency: LatencyResult,
}

impl PathResult {
    /// Gbit/s of every run, sorted.
    pub fn runs_gbps(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .throughput
            .iter()
            .map(|t| t.bytes as f64 * 8.0 / t.secs / 1e9)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    }

    /// Median Gbit/s.
    pub fn gbps(&self) -> f64 {
        let v = self.runs_gbps();
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }
}

/// CPU the two proxies spent, per process.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProxyPair<T> {
    pub client: T,
    pub echo: T,
}

/// Memory of the proxies (KiB of VmRSS).
#[derive(Debug, Default)]
pub struct Memory {
    pub idle: ProxyPair<u64>,
    pub loaded: ProxyPair<u64>,
    pub after: ProxyPair<u64>,
    pub connections: u32,
}

/// The handshake measurement.
#[derive(Debug, Default)]
pub struct Handshakes {
    pub result: HandshakeResult,
    /// utime + stime the echo proxy spent.
    pub server_cpu_secs: f64,
    /// Increase of the echo proxy's PQ server handshake counter.
    pub metric_delta: f64,
}

/// A proxy pair's path and its two processes' CPU.
#[derive(Debug)]
pub struct PairFigures {
    pub path: PathResult,
    /// During the throughput runs, as a share of one core each.
    pub throughput_cpu: ProxyPair<f64>,
    /// Per ping-pong round trip, µs.
    pub round_trip_cpu_us: ProxyPair<f64>,
    /// The busiest thread of each during the throughput runs, as a share
    /// of one core: equal to `throughput_cpu` when one thread does all.
    pub busiest_thread: ProxyPair<f64>,
}

/// Everything measured over one link.
#[derive(Debug)]
pub struct LinkResult {
    pub link: Link,
    pub direct: PathResult,
    pub forwarder: PathResult,
    pub phoenix: PathResult,
    /// The TLS-over-TCP proxy pair (stunnel), when installed, with its two
    /// processes' CPU during the throughput runs (share of one core) and per
    /// ping-pong round trip (µs), client side first.
    pub tls: Option<PairFigures>,
    /// Phoenix meshes with another setting (`--variant`), measured as
    /// the stunnel pair is.
    pub variants: Vec<(Variant, PairFigures)>,
    /// Proxy CPU during the throughput runs, as a share of one core.
    pub throughput_cpu: ProxyPair<f64>,
    /// The busiest thread of each Phoenix proxy then, likewise.
    pub busiest_thread: ProxyPair<f64>,
    /// UDP datagrams dropped by the kernel during the Phoenix throughput
    /// runs (receive-buffer and other input errors), and datagrams received.
    pub udp_drops: (u64, u64),
    /// The link's MTU.
    pub mtu: u32,
    /// The UDP payload the client proxy's peer connection sent after the
    /// throughput runs (`None`: a proxy that does not report it).
    pub udp_payload: Option<u64>,
    /// Proxy CPU per ping-pong round trip, µs.
    pub round_trip_cpu_us: ProxyPair<f64>,
    pub memory: Memory,
    pub handshakes: Handshakes,
    /// Where the machine's CPU went during this link's run besides the bench.
    pub cpu_shares: procfs::CpuShares,
}

fn main() -> ExitCode {
    let result = match std::env::var(ROLE_ENV) {
        Ok(role) => run_role(&role),
        Err(_) => parse_args().and_then(|opts| orchestrate(&opts)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_role(role: &str) -> anyhow::Result<()> {
    let addr = |var: &str| -> anyhow::Result<SocketAddr> {
        std::env::var(var)
            .with_context(|| format!("{var} is not set"))?
            .parse()
            .with_context(|| format!("{var} is not an address"))
    };
    match role {
        "agent" => agent::run(),
        "server" => apps::server(addr(LISTEN_ENV)?),
        "forward" => apps::forwarder(addr(LISTEN_ENV)?, addr(TARGET_ENV)?),
        other => bail!("unknown {ROLE_ENV} `{other}`"),
    }
}

fn parse_args() -> anyhow::Result<Options> {
    let mut opts = Options {
        quick: false,
        netns: true,
        max_udp_payload: None,
        veth_mtu: DEFAULT_VETH_MTU,
        check: false,
        streams: 1,
        variants: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => opts.quick = true,
            "--no-netns" => opts.netns = false,
            "--check" => opts.check = true,
            "--variant" => {
                let v = args.next().context("--variant needs a value")?;
                opts.variants.push(Variant::parse(&v)?);
            }
            "--streams" => {
                let v = args.next().context("--streams needs a value")?;
                opts.streams = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .with_context(|| format!("--streams {v}: use 1..=64"))?;
            }
            "--veth-mtu" => {
                let v = args.next().context("--veth-mtu needs a value")?;
                opts.veth_mtu = v
                    .parse()
                    .ok()
                    .filter(|n| (1280..=65_535).contains(n))
                    .with_context(|| format!("--veth-mtu {v}: use 1280..=65535"))?;
            }
            "--max-udp-payload" => {
                let v = args.next().context("--max-udp-payload needs a value")?;
                let n: u16 = v
                    .parse()
                    .ok()
                    .filter(|n| (1200..=65_527).contains(n))
                    .with_context(|| format!("--max-udp-payload {v}: use 1200..=65527"))?;
                opts.max_udp_payload = Some(n);
            }
            // `cargo bench` passes `--bench` to harness-less benches.
            "--bench" => {}
            "-h" | "--help" => {
                println!(
                    "usage: benches/run [--quick | --check] [--no-netns] [--veth-mtu N] [--max-udp-payload N] [--streams N] [--variant aes128|threads2]...\n\
                     Measures direct TCP, a TCP forwarder pair and the Phoenix proxy pair on\n\
                     loopback and (as root, with `ip`) over veth between two network namespaces."
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}` (try --help)"),
        }
    }
    Ok(opts)
}

fn orchestrate(opts: &Options) -> anyhow::Result<()> {
    let sizes = Sizes::new(opts);
    let machine = report::Machine::detect();
    cleanup_on_signal();
    netns::remove_stale();
    report::header(&machine, opts, &sizes);

    let mut results = Vec::new();
    let mut notes = Vec::new();
    results.push(run_link(Link::Loopback, opts, &sizes).context("loopback run")?);
    let mut veth_error = None;
    if !opts.netns {
        notes.push("veth run skipped: --no-netns".to_owned());
    } else if let Some(why) = netns::unavailable() {
        notes.push(format!("veth run skipped: {why}"));
    } else {
        match run_link(Link::Veth, opts, &sizes) {
            Ok(r) => results.push(r),
            Err(e) => {
                notes.push(format!("veth run failed: {e:#}"));
                veth_error = Some(e);
            }
        }
    }
    report::print(&results, &notes, &sizes);
    match veth_error {
        Some(e) => Err(e.context("veth run")),
        None => Ok(()),
    }
}

/// A helper process and the address it announced.
struct Helper {
    _child: Child,
    addr: SocketAddr,
}

fn helper(
    name: &str,
    side: &Side,
    role: &str,
    listen: SocketAddr,
    target: Option<SocketAddr>,
) -> anyhow::Result<Helper> {
    let mut envs = vec![
        (ROLE_ENV, role.to_owned()),
        (LISTEN_ENV, listen.to_string()),
    ];
    if let Some(t) = target {
        envs.push((TARGET_ENV, t.to_string()));
    }
    let mut child = Child::spawn(
        name,
        side.netns.as_deref(),
        &std::env::current_exe()?,
        &[],
        &envs,
    )?;
    let line = child.line(Duration::from_secs(30))?;
    let announce: Announce =
        serde_json::from_str(&line).with_context(|| format!("{name} announced `{line}`"))?;
    Ok(Helper {
        _child: child,
        addr: announce.listen,
    })
}

fn run_link(link: Link, opts: &Options, sizes: &Sizes) -> anyhow::Result<LinkResult> {
    eprintln!("== {}: starting", link.name());
    let foreign = procfs::ForeignCpu::start()?;
    // A fixed payload sets the link's MTU; otherwise the proxies find it.
    let veth_mtu = opts
        .max_udp_payload
        .map_or(opts.veth_mtu, |p| (u32::from(p) + 28).max(1500));
    // Declared first so it is dropped last: every process is gone by then.
    let pair = match link {
        Link::Veth => Some(NetnsPair::create(veth_mtu)?),
        Link::Loopback => None,
    };
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let (a, b) = match &pair {
        Some(p) => (
            Side {
                netns: Some(p.a.clone()),
                ip: p.ip_a.into(),
            },
            Side {
                netns: Some(p.b.clone()),
                ip: p.ip_b.into(),
            },
        ),
        None => (
            Side {
                netns: None,
                ip: localhost,
            },
            Side {
                netns: None,
                ip: localhost,
            },
        ),
    };
    let mut agent_a = AgentHandle::start("client-side agent", a.netns.as_deref())?;
    let mut agent_b = AgentHandle::start("server-side agent", b.netns.as_deref())?;
    let server = helper("server", &b, "server", SocketAddr::new(b.ip, 0), None)?;
    let fwd_b = helper(
        "fwdB",
        &b,
        "forward",
        SocketAddr::new(b.ip, 0),
        Some(server.addr),
    )?;
    let fwd_a = helper(
        "fwdA",
        &a,
        "forward",
        SocketAddr::new(localhost, 0),
        Some(fwd_b.addr),
    )?;
    let proxy_settings = ProxySettings {
        max_udp_payload: opts.max_udp_payload,
        // A jumbo veth link: let discovery probe up to it.
        max_path_mtu: (link == Link::Veth && veth_mtu > 1500).then_some(veth_mtu.min(9001)),
        variant: None,
    };
    let mesh = Phoenix::start(
        &a,
        &b,
        &mut agent_a,
        &mut agent_b,
        server.addr,
        &proxy_settings,
    )?;
    let mut variants = Vec::new();
    for &variant in &opts.variants {
        let m = Phoenix::start(
            &a,
            &b,
            &mut agent_a,
            &mut agent_b,
            server.addr,
            &ProxySettings {
                variant: Some(variant),
                ..proxy_settings
            },
        )?;
        variants.push((variant, m));
    }
    let tls = match tls_pair::stunnel() {
        Some(program) => Some(tls_pair::TlsPair::start(
            &program,
            &a,
            &b,
            localhost,
            server.addr,
        )?),
        None => {
            eprintln!(
                "== {}: stunnel4 is not installed (apt install stunnel4): no TLS-over-TCP pair",
                link.name()
            );
            None
        }
    };
    let tls_pids = tls.as_ref().map(|t| ProxyPair {
        client: t.client.pid(),
        echo: t.server.pid(),
    });
    let pids = ProxyPair {
        client: mesh.client.pid(),
        echo: mesh.echo.pid(),
    };
    let mut ready = vec![("direct", server.addr), ("forwarder pair", fwd_a.addr)];
    if let Some(t) = &tls {
        ready.push(("TLS-over-TCP pair", t.entry));
    }
    for (name, addr) in ready {
        poll(Duration::from_secs(10), &format!("a {name} echo"), || {
            agent_a.call::<serde_json::Value>(&Request::Echo { addr })?;
            Ok(Some(()))
        })
        .with_context(|| match &tls {
            Some(t) => format!(
                "stunnel client stderr:\n{}\nstunnel server stderr:\n{}",
                t.client.stderr_tail(),
                t.server.stderr_tail()
            ),
            None => String::new(),
        })?;
    }

    // (c) memory first, before bulk transfers leave buffers in the allocator.
    eprintln!("== {}: proxy memory", link.name());
    let streams_open = |agent_b: &mut AgentHandle| -> anyhow::Result<f64> {
        let text = agent_b.get(mesh.echo_admin, "/metrics")?.body;
        Ok(metric(
            &text,
            "quic_streams_open",
            &[("direction", "inbound")],
        ))
    };
    poll(
        Duration::from_secs(15),
        "the warm-up stream to close",
        || Ok((streams_open(&mut agent_b)? == 0.0).then_some(())),
    )?;
    let mut memory = Memory {
        idle: ProxyPair {
            client: procfs::settled_rss_kib(pids.client)?,
            echo: procfs::settled_rss_kib(pids.echo)?,
        },
        connections: sizes.idle_connections,
        ..Memory::default()
    };
    let opened: u32 = agent_a.call(&Request::OpenIdle {
        addr: mesh.outbound,
        count: sizes.idle_connections,
    })?;
    anyhow::ensure!(
        opened == sizes.idle_connections,
        "opened {opened} idle connections"
    );
    poll(
        Duration::from_secs(15),
        "every idle connection at the echo proxy",
        || Ok((streams_open(&mut agent_b)? >= f64::from(opened)).then_some(())),
    )?;
    memory.loaded = ProxyPair {
        client: procfs::settled_rss_kib(pids.client)?,
        echo: procfs::settled_rss_kib(pids.echo)?,
    };
    agent_a.call::<serde_json::Value>(&Request::CloseIdle)?;
    poll(
        Duration::from_secs(30),
        "the idle connections to close",
        || Ok((streams_open(&mut agent_b)? == 0.0).then_some(())),
    )?;

    // (a) throughput: the paths take turns, the median run is reported.
    // Each path with a proxy pair has its two PIDs, for CPU accounting.
    let mut paths: Vec<(String, SocketAddr, Option<ProxyPair<u32>>)> = vec![
        ("direct".into(), server.addr, None),
        ("forwarder".into(), fwd_a.addr, None),
        ("phoenix".into(), mesh.outbound, Some(pids)),
    ];
    if let (Some(t), Some(tp)) = (&tls, tls_pids) {
        paths.push(("tls".into(), t.entry, Some(tp)));
    }
    for (variant, m) in &variants {
        paths.push((
            format!("phoenix {}", variant.label()),
            m.outbound,
            Some(ProxyPair {
                client: m.client.pid(),
                echo: m.echo.pid(),
            }),
        ));
    }
    let zero = ProxyPair {
        client: 0.0,
        echo: 0.0,
    };
    let mut throughput: Vec<Vec<ThroughputResult>> = paths.iter().map(|_| Vec::new()).collect();
    let mut busy = vec![0.0f64; paths.len()];
    let mut pair_cpu = vec![zero; paths.len()];
    let mut pair_secs = vec![0.0f64; paths.len()];
    let mut pair_busiest = vec![zero; paths.len()];
    let mut udp_drops = (0u64, 0u64);
    for run in 0..sizes.throughput_runs {
        for (i, (name, addr, pair)) in paths.iter().enumerate() {
            eprintln!("== {}: throughput, {name}, run {}", link.name(), run + 1);
            let machine_before = procfs::machine_busy_secs()?;
            let cpu_before = pair.map(procfs::cpu_pair).transpose()?;
            let threads_before = pair
                .map(|p| {
                    anyhow::Ok((
                        procfs::thread_cpu_secs(p.client)?,
                        procfs::thread_cpu_secs(p.echo)?,
                    ))
                })
                .transpose()?;
            let udp_before = udp_stats(&mut agent_a, &mut agent_b, link)?;
            let t: ThroughputResult = agent_a.call(&Request::Throughput {
                addr: *addr,
                max_bytes: sizes.throughput_bytes,
                max_secs: sizes.throughput_secs,
                checked: opts.check,
                streams: opts.streams,
            })?;
            busy[i] += (procfs::machine_busy_secs()? - machine_before) / t.secs;
            if let (Some(p), Some(before), Some((client_threads, echo_threads))) =
                (pair, cpu_before, &threads_before)
            {
                let after = procfs::cpu_pair(*p)?;
                pair_cpu[i].client += after.client - before.client;
                pair_cpu[i].echo += after.echo - before.echo;
                pair_secs[i] += t.secs;
                pair_busiest[i].client += procfs::busiest_thread_secs(
                    client_threads,
                    &procfs::thread_cpu_secs(p.client)?,
                );
                pair_busiest[i].echo +=
                    procfs::busiest_thread_secs(echo_threads, &procfs::thread_cpu_secs(p.echo)?);
            }
            if name == "phoenix" {
                let udp_after = udp_stats(&mut agent_a, &mut agent_b, link)?;
                udp_drops.0 += (udp_after.rcvbuf_errors + udp_after.in_errors)
                    - (udp_before.rcvbuf_errors + udp_before.in_errors);
                udp_drops.1 += udp_after.in_datagrams - udp_before.in_datagrams;
            }
            throughput[i].push(t);
        }
    }
    // Share of one core per proxy, over the runs of its own path.
    let per_sec = |v: &[ProxyPair<f64>], i: usize| ProxyPair {
        client: v[i].client / pair_secs[i].max(f64::MIN_POSITIVE),
        echo: v[i].echo / pair_secs[i].max(f64::MIN_POSITIVE),
    };
    let cpu_share = |i: usize| per_sec(&pair_cpu, i);
    let busiest_share = |i: usize| per_sec(&pair_busiest, i);
    // What path MTU discovery settled on, after the bulk runs.
    let udp_payload = {
        let config: serde_json::Value =
            serde_json::from_str(&agent_a.get(mesh.client_admin, "/config")?.body)?;
        config["peers"]
            .as_array()
            .and_then(|peers| peers.iter().find_map(|p| p["path"]["udpPayload"].as_u64()))
    };
    let throughput_cpu = cpu_share(2);
    let runs = f64::from(sizes.throughput_runs);

    // (b) ping-pong, one persistent connection per path, taking turns.
    // Every pair works only during its own path's rounds, all of equal
    // number, so its CPU over the whole call is its CPU for them.
    eprintln!("== {}: ping-pong", link.name());
    let before: Vec<Option<ProxyPair<f64>>> = paths
        .iter()
        .map(|(_, _, pair)| pair.map(procfs::cpu_pair).transpose())
        .collect::<anyhow::Result<_>>()?;
    let latency: Vec<LatencyResult> = agent_a.call(&Request::PingPong {
        addrs: paths.iter().map(|(_, a, _)| *a).collect(),
        warmup: sizes.pingpong_warmup,
        blocks: sizes.pingpong_blocks,
        rounds: sizes.pingpong_rounds,
        size: MESSAGE_SIZE,
    })?;
    let rounds = f64::from(sizes.pingpong_warmup + sizes.pingpong_blocks * sizes.pingpong_rounds);
    let mut round_trip_cpu: Vec<Option<ProxyPair<f64>>> = Vec::with_capacity(paths.len());
    for ((_, _, pair), before) in paths.iter().zip(&before) {
        round_trip_cpu.push(match (pair, before) {
            (Some(p), Some(b)) => {
                let a = procfs::cpu_pair(*p)?;
                Some(ProxyPair {
                    client: (a.client - b.client) * 1e6 / rounds,
                    echo: (a.echo - b.echo) * 1e6 / rounds,
                })
            }
            _ => None,
        });
    }
    let round_trip_cpu_us = round_trip_cpu[2].unwrap_or(zero);

    // (d) handshakes against the echo proxy.
    eprintln!("== {}: handshakes", link.name());
    let handshakes_total = |agent_b: &mut AgentHandle| -> anyhow::Result<f64> {
        let text = agent_b.get(mesh.echo_admin, "/metrics")?.body;
        Ok(metric(
            &text,
            "tls_handshakes_total",
            &[
                ("side", "server"),
                ("kx_group", "X25519MLKEM768"),
                ("result", "success"),
            ],
        ))
    };
    let metric_before = handshakes_total(&mut agent_b)?;
    let cpu_before = procfs::cpu_secs(pids.echo)?;
    let result: HandshakeResult = agent_a.call(&Request::Handshakes(HandshakeRequest {
        addr: mesh.echo_inbound,
        count: sizes.handshakes,
        concurrency: sizes.handshake_concurrency,
        bind: a.ip,
        state_dir: mesh.state_dir.clone(),
        trust_domain: phoenix::TRUST_DOMAIN.to_owned(),
        client_identity: phoenix::CLIENT_ID.to_owned(),
        server_identity: phoenix::ECHO_ID.to_owned(),
    }))?;
    // Every handshake the client finished must be counted by the server
    // before its CPU is read (the last ones are still open, so none is cut).
    let want = metric_before + f64::from(result.ok);
    let counted = poll(
        Duration::from_secs(30),
        "the server to count the handshakes",
        || {
            let now = handshakes_total(&mut agent_b)?;
            Ok((now >= want).then_some(now))
        },
    );
    let cpu_after = procfs::cpu_secs(pids.echo)?;
    agent_a.call::<serde_json::Value>(&Request::CloseHandshakes)?;
    let metric_delta = match counted {
        Ok(now) => now - metric_before,
        Err(_) => handshakes_total(&mut agent_b)? - metric_before,
    };
    let handshakes = Handshakes {
        result,
        server_cpu_secs: cpu_after - cpu_before,
        metric_delta,
    };
    memory.after = ProxyPair {
        client: procfs::settled_rss_kib(pids.client)?,
        echo: procfs::settled_rss_kib(pids.echo)?,
    };

    let mut paths_out = throughput
        .into_iter()
        .zip(busy)
        .zip(latency)
        .enumerate()
        .map(|(i, ((throughput, busy), latency))| PairFigures {
            path: PathResult {
                throughput,
                machine_busy: busy / runs,
                latency,
            },
            throughput_cpu: cpu_share(i),
            round_trip_cpu_us: round_trip_cpu[i].unwrap_or(zero),
            busiest_thread: busiest_share(i),
        });
    let mut next = || paths_out.next().context("a path has no result");
    let result = LinkResult {
        link,
        direct: next()?.path,
        forwarder: next()?.path,
        phoenix: next()?.path,
        tls: match &tls {
            Some(_) => Some(next()?),
            None => None,
        },
        variants: variants
            .iter()
            .map(|(v, _)| Ok((*v, next()?)))
            .collect::<anyhow::Result<_>>()?,
        throughput_cpu,
        busiest_thread: busiest_share(2),
        udp_drops,
        mtu: match link {
            Link::Veth => veth_mtu,
            Link::Loopback => procfs::loopback_mtu(),
        },
        udp_payload,
        round_trip_cpu_us,
        memory,
        handshakes,
        cpu_shares: foreign.read()?,
    };
    eprintln!("== {}: done", link.name());
    Ok(result)
}

/// UDP counters where the proxies are: one namespace on loopback, both on veth.
fn udp_stats(a: &mut AgentHandle, b: &mut AgentHandle, link: Link) -> anyhow::Result<UdpStats> {
    let mut s: UdpStats = a.call(&Request::UdpStats)?;
    if link == Link::Veth {
        let t: UdpStats = b.call(&Request::UdpStats)?;
        s.in_datagrams += t.in_datagrams;
        s.in_errors += t.in_errors;
        s.rcvbuf_errors += t.rcvbuf_errors;
        s.sndbuf_errors += t.sndbuf_errors;
    }
    Ok(s)
}

/// Polls `f` every [`POLL_INTERVAL`] until it returns `Some`; errors count
/// as "not yet" and the last one is reported at the deadline.
pub fn poll<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        if Instant::now() >= deadline {
            match last {
                Some(e) => bail!("timed out after {timeout:?} waiting for {what}: {e:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Sum of the samples of `name` whose labels include all of `want`.
pub fn metric(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = series.split_once('{').unwrap_or((series, ""));
            let labels = labels.trim_end_matches('}');
            let matches = n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            if matches {
                value.parse::<f64>().ok()
            } else {
                None
            }
        })
        .sum()
}

/// On Ctrl-C or SIGTERM, kills the children, removes this run's namespaces
/// and exits. (Children also ask for a parent-death signal: a SIGKILLed
/// bench leaves no process behind, and the next run removes its namespaces.)
fn cleanup_on_signal() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            child::kill_all();
            let (a, b) = netns::names(std::process::id());
            netns::delete(&a);
            netns::delete(&b);
            eprintln!("mesh bench: interrupted");
            std::process::exit(130);
        });
    });
}
