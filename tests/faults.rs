//! The mesh under network faults: random packet loss on the proxies' QUIC
//! packets, a blackhole that drops all of them for a while, and delay with
//! jitter (so reordering) from a user-space relay between the proxies.
//!
//! Each test runs a whole mesh (`phoenix up`: control plane and proxies)
//! in a network namespace of its own with only loopback, so iptables can
//! drop the proxies' packets there without touching the machine's other
//! traffic (tests run in parallel). This VM's kernel has no `sch_netem`,
//! so loss is iptables' `statistic` match (`--mode random`) on the server
//! proxy's UDP port, both directions, with UDP segmentation offload off
//! on the namespace's loopback so each QUIC packet meets the rules alone.
//! The test's own sockets are made by threads moved into the namespace
//! (`setns`), then used from anywhere. Delay needs no netem either: an
//! iptables DNAT sends the client proxy's packets for the server proxy
//! to [`Relay`], which holds each datagram for the delay plus a random
//! jitter before passing it on, both ways. Needs root, iptables and
//! ethtool (`scripts/test` installs them; CI runs as root).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

#[path = "support/harness.rs"]
mod harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{Proc, bin};
use sha2::{Digest, Sha256};

/// A network namespace with loopback up, removed on drop.
struct Ns(String);

impl Ns {
    fn new() -> Self {
        assert!(
            rustix::process::geteuid().is_root(),
            "the fault tests need root (a network namespace and iptables); CI runs as root"
        );
        let ns = Self(format!(
            "phx-faults-{:06x}",
            rand::random::<u32>() & 0xff_ffff
        ));
        run(Command::new("ip").args(["netns", "add", &ns.0]));
        run(Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]));
        // quinn sends batches of packets as one UDP GSO buffer, which
        // loopback would carry (and iptables drop) whole: segmented at the
        // device instead, each QUIC packet is one packet to the rules.
        run(ns.command("ethtool").args([
            "-K",
            "lo",
            "tx-udp-segmentation",
            "off",
            "gso",
            "off",
            "gro",
            "off",
        ]));
        ns
    }

    /// `f` run on a thread moved into the namespace: sockets it makes live
    /// there, and can be used from any thread afterwards.
    fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0, program]);
        cmd
    }

    fn iptables(&self, args: &[&str]) {
        run(self.command("iptables").args(args));
    }

    /// Drops packets to and from `port` (UDP) with `probability` (1.0:
    /// all of them). A rule before the drops counts every packet.
    fn drop_udp(&self, port: u16, probability: f64) {
        let port = port.to_string();
        for dir in ["--dport", "--sport"] {
            self.iptables(&["-A", "INPUT", "-p", "udp", dir, &port]);
        }
        for dir in ["--dport", "--sport"] {
            let mut rule = vec!["-A", "INPUT", "-p", "udp", dir, &port];
            let p = probability.to_string();
            if probability < 1.0 {
                rule.extend(["-m", "statistic", "--mode", "random", "--probability", &p]);
            }
            rule.extend(["-j", "DROP"]);
            self.iptables(&rule);
        }
    }

    /// (Packets seen, packets dropped) since the rules were added;
    /// removes them.
    fn heal(&self) -> (u64, u64) {
        let out = self
            .command("iptables")
            .args(["-L", "INPUT", "-v", "-n", "-x"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let count = |drop: bool| {
            text.lines()
                .filter(|l| l.contains("udp") && l.contains("DROP") == drop)
                .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                .sum::<u64>()
        };
        let counts = (count(false), count(true));
        self.iptables(&["-F", "INPUT"]);
        counts
    }

    fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        self.within(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
    }

    /// A TCP echo server in the namespace.
    fn echo_server(&self) -> SocketAddr {
        let listener = self.within(|| TcpListener::bind("127.0.0.1:0").unwrap());
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut reader = conn.try_clone().unwrap();
                    let mut writer = conn;
                    let _ = std::io::copy(&mut reader, &mut writer);
                    let _ = writer.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        addr
    }
}

/// A UDP relay in the namespace: every datagram is held for `delay` plus
/// a uniform random `0..jitter` (each direction keeps its order, as a
/// path whose queues vary does), and a share `reorder` of them is held
/// [`REORDER_BY`] longer, so later ones overtake them.
///
/// The client proxy's packets for the server's port `server` are sent to
/// it by a DNAT rule on loopback traffic from 127.0.0.1; it passes them on
/// from 127.0.0.2 (which the rule leaves alone) and sends the server's
/// answers back to the client from the relay's own port, which conntrack
/// turns back into the server's.
struct Relay {
    forwarded: std::sync::Arc<std::sync::atomic::AtomicU64>,
    reordered: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// How much longer a reordered datagram is held.
const REORDER_BY: Duration = Duration::from_millis(5);

/// How the relay impairs the path, each way.
#[derive(Clone, Copy)]
struct Impairment {
    delay: Duration,
    jitter: Duration,
    reorder: f64,
}

/// One direction of the relay: datagrams in, sent on to `dst` when due.
#[derive(Clone)]
struct Lane {
    tx: tokio::sync::mpsc::UnboundedSender<(tokio::time::Instant, Vec<u8>)>,
    late: std::sync::Arc<tokio::net::UdpSocket>,
}

impl Lane {
    fn new(
        out: std::sync::Arc<tokio::net::UdpSocket>,
        dst: impl Fn() -> Option<SocketAddr> + Send + Sync + 'static,
    ) -> (
        Self,
        std::sync::Arc<dyn Fn() -> Option<SocketAddr> + Send + Sync>,
    ) {
        let dst: std::sync::Arc<dyn Fn() -> Option<SocketAddr> + Send + Sync> =
            std::sync::Arc::new(dst);
        let (tx, mut rx) =
            tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
        let (sock, to) = (out.clone(), dst.clone());
        tokio::spawn(async move {
            while let Some((due, data)) = rx.recv().await {
                tokio::time::sleep_until(due).await;
                if let Some(to) = to() {
                    let _ = sock.send_to(&data, to).await;
                }
            }
        });
        (Self { tx, late: out }, dst)
    }
}

impl Relay {
    fn start(ns: &Ns, server: u16, how: Impairment) -> Self {
        let (front, back) = ns.within(|| {
            let front = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let back = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
            (front, back)
        });
        let port = front.local_addr().unwrap().port().to_string();
        ns.iptables(&[
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "udp",
            "-s",
            "127.0.0.1",
            "--dport",
            &server.to_string(),
            "-j",
            "DNAT",
            "--to-destination",
            &format!("127.0.0.1:{port}"),
        ]);
        let forwarded = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let reordered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (counted, late_counted) = (forwarded.clone(), reordered.clone());
        let server_addr: SocketAddr = format!("127.0.0.1:{server}").parse().unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                front.set_nonblocking(true).unwrap();
                back.set_nonblocking(true).unwrap();
                let front = std::sync::Arc::new(tokio::net::UdpSocket::from_std(front).unwrap());
                let back = std::sync::Arc::new(tokio::net::UdpSocket::from_std(back).unwrap());
                let client = std::sync::Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
                let seen = client.clone();
                let (to_server, _) = Lane::new(back.clone(), move || Some(server_addr));
                let (to_client, client_dst) =
                    Lane::new(front.clone(), move || *seen.lock().unwrap());
                // Datagrams from `from`, impaired and queued on `lane`.
                let relay = move |from: std::sync::Arc<tokio::net::UdpSocket>,
                                  lane: Lane,
                                  dst: std::sync::Arc<dyn Fn() -> Option<SocketAddr> + Send + Sync>,
                                  on_recv: std::sync::Arc<dyn Fn(SocketAddr) + Send + Sync>| {
                    let late_counted = late_counted.clone();
                    async move {
                        let mut last = tokio::time::Instant::now();
                        let mut buf = vec![0u8; 65536];
                        while let Ok((n, src)) = from.recv_from(&mut buf).await {
                            on_recv(src);
                            let data = buf[..n].to_vec();
                            let due = tokio::time::Instant::now()
                                + how.delay
                                + how.jitter.mul_f64(rand::random::<f64>());
                            if rand::random::<f64>() < how.reorder {
                                late_counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let (sock, to) = (lane.late.clone(), dst.clone());
                                tokio::spawn(async move {
                                    tokio::time::sleep_until(due.max(last) + REORDER_BY).await;
                                    if let Some(to) = to() {
                                        let _ = sock.send_to(&data, to).await;
                                    }
                                });
                            } else {
                                last = due.max(last);
                                let _ = lane.tx.send((last, data));
                            }
                        }
                    }
                };
                let server_dst: std::sync::Arc<dyn Fn() -> Option<SocketAddr> + Send + Sync> =
                    std::sync::Arc::new(move || Some(server_addr));
                let up = tokio::spawn(relay(
                    front.clone(),
                    to_server,
                    server_dst,
                    std::sync::Arc::new(move |src| {
                        *client.lock().unwrap() = Some(src);
                        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }),
                ));
                relay(back, to_client, client_dst, std::sync::Arc::new(|_| {})).await;
                up.abort();
            });
        });
        Self {
            forwarded,
            reordered,
        }
    }

    fn forwarded(&self) -> u64 {
        self.forwarded.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn reordered(&self) -> u64 {
        self.reordered.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `phoenix up` in `ns`: the control plane and one proxy per workload.
struct Mesh {
    _proc: Proc,
    report: serde_json::Value,
    _dir: tempfile::TempDir,
}

impl Mesh {
    fn start(ns: &Ns, echo: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        std::fs::write(
            &path,
            format!(
                "trustDomain: phoenix.local\nstateDir: state\nworkloads:\n  \
                 - name: client\n    upstreams: [{{service: echo, listen: \"127.0.0.1:0\", protocol: opaque}}]\n  \
                 - name: server\n    serve: [{{service: echo, target: \"{echo}\", protocol: opaque}}]\n"
            ),
        )
        .unwrap();
        let mut cmd = ns.command(bin("phoenix").to_str().unwrap());
        cmd.args(["up", "-o", "json", "--drain-grace", "1s", "-f"])
            .arg(&path);
        let proc = Proc::spawn("phoenix up", cmd);
        let line = proc.line(Duration::from_secs(90));
        let report =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("up printed `{line}`: {e}"));
        Self {
            _proc: proc,
            report,
            _dir: dir,
        }
    }

    fn proxy(&self, workload: &str) -> &serde_json::Value {
        self.report["proxies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["workload"] == workload)
            .unwrap()
    }

    /// The client's listener for the echo service.
    fn outbound(&self) -> SocketAddr {
        self.proxy("client")["outbound"][0]["listen"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The server proxy's QUIC port.
    fn server_port(&self) -> u16 {
        let inbound: SocketAddr = self.proxy("server")["inbound"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        inbound.port()
    }
}

/// The bytes of a transfer: a fixed pseudo-random sequence (no pattern a
/// compressor or a lucky offset could hide a fault in).
fn block(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `total` bytes through `conn` to the echo server while reading
/// them back; (SHA-256 sent, SHA-256 received, bytes received, seconds).
fn echo_transfer(conn: TcpStream, total: usize) -> (String, String, usize, f64) {
    let started = Instant::now();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut writer = conn.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut sha = Sha256::new();
        let chunk = 256 * 1024;
        for i in 0..total.div_ceil(chunk) {
            let data = block(i as u64 + 1, chunk.min(total - i * chunk));
            sha.update(&data);
            writer.write_all(&data).unwrap();
        }
        writer.shutdown(std::net::Shutdown::Write).unwrap();
        format!("{:x}", sha.finalize())
    });
    let mut reader = conn;
    let mut sha = Sha256::new();
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                sha.update(&buf[..n]);
                got += n;
            }
            Err(e) => panic!("the echo broke after {got} bytes: {e}"),
        }
    }
    let sent = sender.join().unwrap();
    (
        sent,
        format!("{:x}", sha.finalize()),
        got,
        started.elapsed().as_secs_f64(),
    )
}

/// A round trip on `conn`: `true` when the echo came back whole.
fn ping(conn: &mut TcpStream, msg: &[u8]) -> bool {
    if conn.write_all(msg).is_err() {
        return false;
    }
    let mut back = vec![0u8; msg.len()];
    conn.read_exact(&mut back).is_ok() && back == msg
}

const BIG: usize = 64 * 1024 * 1024;

/// 64 MiB each way (an echo) through the proxies with 1% and then 5% of
/// the QUIC packets between them dropped, in both directions: every byte
/// arrives, in order (the checksums match), QUIC's loss recovery doing
/// what TCP's does on a lossy path.
#[test]
fn bulk_transfers_arrive_whole_under_packet_loss() {
    let ns = Ns::new();
    let echo = ns.echo_server();
    let mesh = Mesh::start(&ns, echo);
    // A round trip first, so the peer connection exists before the loss.
    let mut conn = ns.connect(mesh.outbound()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(ping(&mut conn, b"before the loss"));
    drop(conn);
    for probability in [0.01, 0.05] {
        ns.drop_udp(mesh.server_port(), probability);
        let conn = ns.connect(mesh.outbound()).unwrap();
        let (sent, received, bytes, secs) = echo_transfer(conn, BIG);
        let (seen, dropped) = ns.heal();
        assert_eq!(bytes, BIG, "{probability} loss: every byte back");
        assert_eq!(
            sent, received,
            "{probability} loss: the same bytes, in order"
        );
        // The rules were in force, on single packets (128 MiB is ~95,000
        // full packets), and dropped about the share asked for.
        assert!(
            seen > 90_000,
            "only {seen} packets seen: batches, not packets?"
        );
        let share = dropped as f64 / seen as f64;
        assert!(
            share > probability * 0.7 && share < probability * 1.3,
            "{dropped} of {seen} packets dropped at {probability}"
        );
        eprintln!(
            "{:.0}% loss: 64 MiB each way in {secs:.1} s ({:.1} MiB/s each way), {dropped} of {seen} packets dropped",
            probability * 100.0,
            64.0 / secs
        );
    }
}

/// A blackhole: every packet between the proxies dropped for 12 s, longer
/// than the documented 10 s `--quic-idle-timeout`. A connection open
/// before it, and one opened during it, stall and then end (a reset or
/// end of stream, never a hang) once the peer has been silent for the
/// idle timeout; once the path heals, a new connection gets through
/// within seconds (a new peer connection is made).
#[test]
fn a_blackhole_ends_connections_at_the_idle_timeout_and_new_ones_recover() {
    let ns = Ns::new();
    let echo = ns.echo_server();
    let mesh = Mesh::start(&ns, echo);
    let mut before = ns.connect(mesh.outbound()).unwrap();
    before
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    assert!(ping(&mut before, b"before the blackhole"));

    let start = Instant::now();
    ns.drop_udp(mesh.server_port(), 1.0);
    let ended = |mut conn: TcpStream, what: &'static str| {
        std::thread::spawn(move || {
            let ok = ping(&mut conn, what.as_bytes());
            (ok, start.elapsed())
        })
    };
    let old = ended(before, "into the blackhole");
    let during = ns.connect(mesh.outbound()).unwrap();
    during
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let new = ended(during, "opened during the blackhole");
    let (old_ok, old_at) = old.join().unwrap();
    let (new_ok, new_at) = new.join().unwrap();
    for (what, ok, at) in [
        ("open before", old_ok, old_at),
        ("opened during", new_ok, new_at),
    ] {
        assert!(
            !ok,
            "a connection {what} the blackhole got an echo through it"
        );
        assert!(
            at >= Duration::from_secs(7) && at <= Duration::from_secs(16),
            "a connection {what} the blackhole ended after {at:?}, not at the 10 s idle timeout"
        );
    }

    // Heal after 12 s, then wait for the first connection that gets through.
    if let Some(rest) = Duration::from_secs(12).checked_sub(start.elapsed()) {
        std::thread::sleep(rest);
    }
    assert!(ns.heal().1 > 0, "the blackhole dropped nothing");
    let healed = Instant::now();
    let recovered = harness::eventually(
        Duration::from_secs(15),
        "a new connection gets through after the path heals",
        || {
            let mut conn = ns.connect(mesh.outbound()).ok()?;
            conn.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
            ping(&mut conn, b"after healing").then(|| healed.elapsed())
        },
    );
    eprintln!(
        "blackhole: connections ended at {old_at:?} and {new_at:?}; recovered {recovered:?} after healing"
    );
    assert!(
        recovered <= Duration::from_secs(10),
        "recovered after {recovered:?}"
    );
}

/// 50 ms of delay each way (a 100 ms round trip) with up to 10 ms of
/// jitter, and 1% of the packets reordered (held 5 ms longer, so later
/// ones overtake them): 64 MiB each way arrive checksummed, through a
/// relay that carried them. Reordering is not taken for loss (the
/// proxies find loss by time, see `REORDERING_PACKETS` in tls), so this
/// runs at the path's speed: ~5 s here (13 MiB/s each way), where
/// quinn's default (3 packets) made it minutes (0.26 MiB/s).
#[test]
fn bulk_transfers_arrive_whole_over_a_slow_reordering_path() {
    let ns = Ns::new();
    let echo = ns.echo_server();
    let mesh = Mesh::start(&ns, echo);
    let reorder = 0.01;
    let relay = Relay::start(
        &ns,
        mesh.server_port(),
        Impairment {
            delay: Duration::from_millis(50),
            jitter: Duration::from_millis(10),
            reorder,
        },
    );
    // The first connection after the rule: the proxies' existing peer
    // connection (if any) moves to the relayed path or a new one is made.
    let started = Instant::now();
    let mut conn = harness::eventually(
        Duration::from_secs(20),
        "a round trip over the relay",
        || {
            let mut conn = ns.connect(mesh.outbound()).ok()?;
            conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            ping(&mut conn, b"over the relay").then_some(conn)
        },
    );
    let rtt_at_least = started.elapsed();
    assert!(
        rtt_at_least >= Duration::from_millis(100),
        "a round trip took {rtt_at_least:?}: the relay's delay was not on the path"
    );
    drop(conn.shutdown(std::net::Shutdown::Both));
    conn = ns.connect(mesh.outbound()).unwrap();
    let size = BIG;
    let (sent, received, bytes, secs) = echo_transfer(conn, size);
    assert_eq!(bytes, size);
    assert_eq!(sent, received, "the same bytes, in order");
    assert!(
        relay.reordered() > 100,
        "only {} packets reordered",
        relay.reordered()
    );
    assert!(
        relay.forwarded() as usize > size / 2000,
        "only {} packets crossed the relay",
        relay.forwarded()
    );
    eprintln!(
        "50-60 ms each way, {reorder} reordered: {size} B each way in {secs:.1} s ({:.2} MiB/s each way), {} client packets relayed, {} reordered",
        size as f64 / 1048576.0 / secs,
        relay.forwarded(),
        relay.reordered()
    );
}
