//! Pods as network namespaces, for the end-to-end tests of interception
//! (file mode in tests/interception.rs, Kubernetes mode in
//! tests/kubernetes_mode.rs): a node namespace with a bridge, pods on veth
//! pairs, unmodified apps run inside them, packet captures of what crossed
//! a pod's interface. Needs root, iproute2, iptables, tcpdump, curl and
//! python3 (`scripts/test` installs them).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Proc, metric};

pub const NODE_IP: &str = "10.77.0.1";
pub const CLIENT_IP: &str = "10.77.0.2";
pub const SERVER_IP: &str = "10.77.0.3";
pub const OUTSIDER_IP: &str = "10.77.0.4";
/// The UID the proxies run as (`phoenix-proxy init --proxy-uid`'s default).
pub const PROXY_UID: &str = "2102";

/// IPv6 addresses of the IPv6-only variant (node, client, server).
pub const V6: [(&str, &str); 3] = [("node", "fd77::1"), ("a", "fd77::2"), ("b", "fd77::3")];

/// Pods as network namespaces on one bridge, removed on drop. Names are
/// unique per run, so runs can overlap.
pub struct Topology {
    pub id: String,
    pub ipv6: bool,
}

impl Topology {
    /// IPv4 pods a, b, c with IPv6 disabled (no neighbour discovery noise).
    pub fn new() -> Self {
        Self::build(false)
    }

    /// IPv6-only pods a and b (and c, unaddressed).
    pub fn new_v6() -> Self {
        Self::build(true)
    }

    /// The address of `pod` (`node`, `a`, `b`) in this topology's family.
    pub fn ip(&self, pod: &str) -> &'static str {
        let table: &[(&str, &str)] = if self.ipv6 {
            &V6
        } else {
            &[
                ("node", NODE_IP),
                ("a", CLIENT_IP),
                ("b", SERVER_IP),
                ("c", OUTSIDER_IP),
            ]
        };
        table
            .iter()
            .find(|(p, _)| *p == pod)
            .map(|(_, ip)| *ip)
            .unwrap()
    }

    /// `ip` as the host part of a URL or socket address.
    pub fn host(&self, pod: &str) -> String {
        if self.ipv6 {
            format!("[{}]", self.ip(pod))
        } else {
            self.ip(pod).to_owned()
        }
    }

    pub fn build(ipv6: bool) -> Self {
        require_root();
        let id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let t = Self { id, ipv6 };
        // IPv6 addresses without duplicate detection: usable at once.
        let cidr = |pod: &str| -> Vec<String> {
            if ipv6 {
                vec![format!("{}/64", t.ip(pod)), "nodad".into()]
            } else {
                vec![format!("{}/24", t.ip(pod))]
            }
        };
        let node = t.ns("node");
        run(&["ip", "netns", "add", &node]);
        t.exec("node", &["ip", "link", "set", "lo", "up"]);
        t.exec("node", &["ip", "link", "add", "br0", "type", "bridge"]);
        let mut add = vec!["ip", "addr", "add"];
        let node_cidr = cidr("node");
        add.extend(node_cidr.iter().map(String::as_str));
        add.extend(["dev", "br0"]);
        t.exec("node", &add);
        t.exec("node", &["ip", "link", "set", "br0", "up"]);
        let pods: &[&str] = if ipv6 { &["a", "b"] } else { &["a", "b", "c"] };
        for &pod in pods {
            let name = t.ns(pod);
            run(&["ip", "netns", "add", &name]);
            // Neighbour discovery and router solicitations would only add
            // noise to the IPv4 capture; the IPv6 variant ignores it.
            if !ipv6 {
                for scope in ["all", "default"] {
                    t.exec(
                        pod,
                        &[
                            "sysctl",
                            "-qw",
                            &format!("net.ipv6.conf.{scope}.disable_ipv6=1"),
                        ],
                    );
                }
            }
            let host_end = format!("v{pod}{}", t.id);
            run(&[
                "ip", "link", "add", &host_end, "netns", &node, "type", "veth", "peer", "name",
                "eth0", "netns", &name,
            ]);
            t.exec(
                "node",
                &["ip", "link", "set", &host_end, "master", "br0", "up"],
            );
            t.exec(pod, &["ip", "link", "set", "lo", "up"]);
            let mut add = vec!["ip", "addr", "add"];
            let pod_cidr = cidr(pod);
            add.extend(pod_cidr.iter().map(String::as_str));
            add.extend(["dev", "eth0"]);
            t.exec(pod, &add);
            t.exec(pod, &["ip", "link", "set", "eth0", "up"]);
            // As in a cluster, Service addresses are routed off the pod.
            t.exec(pod, &["ip", "route", "add", "default", "via", t.ip("node")]);
        }
        t
    }

    pub fn ns(&self, pod: &str) -> String {
        format!("phx-{}-{pod}", self.id)
    }

    /// `ip netns exec <pod> args...`, whose exec replaces `ip`: killing
    /// the child kills the program itself.
    pub fn command(&self, pod: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(pod)]).args(args);
        c
    }

    /// `phoenix-proxy` in `pod` as the injector runs it: under its own UID
    /// (which init exempts from redirection), with no other groups.
    pub fn proxy_command(&self, pod: &str) -> Command {
        let mut cmd = self.command(
            pod,
            &[
                "setpriv",
                "--reuid",
                PROXY_UID,
                "--regid",
                PROXY_UID,
                "--clear-groups",
            ],
        );
        cmd.arg(crate::harness::bin("phoenix-proxy"));
        cmd
    }

    pub fn exec(&self, pod: &str, args: &[&str]) -> Output {
        let out = self.command(pod, args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?} in {pod}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A GET from the node (where the admin ports are reachable).
    pub fn get(&self, url: &str) -> Option<String> {
        let out = self
            .command("node", &["curl", "-gsf", "--max-time", "5", url])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for pod in ["a", "b", "c", "node"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(pod)])
                .output();
        }
    }
}

pub fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The interception tests program network namespaces and iptables.
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the interception test needs root (network namespaces and iptables); CI runs as root"
    );
}

/// A proxy's metrics show at least one successful X25519MLKEM768 handshake
/// on `side` ("client" or "server").
pub fn assert_pq_handshakes(metrics: &str, side: &str) {
    let n = metric(
        metrics,
        "tls_handshakes_total",
        &[
            ("side", side),
            ("kx_group", "X25519MLKEM768"),
            ("result", "success"),
        ],
    );
    assert!(n >= 1.0, "{side}: {n} X25519MLKEM768 handshakes");
}

/// Stops tcpdump (SIGTERM flushes the file) and asserts that no TCP at all
/// crossed the captured interface: meshed traffic is UDP to the QUIC port.
pub fn stop_capture_asserting_no_tcp(mut tcpdump: std::process::Child, pcap: &Path) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(tcpdump.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    tcpdump.wait().unwrap();
    let tcp = packets(pcap, "tcp");
    assert!(
        tcp.is_empty(),
        "TCP crossed the client pod's interface: {tcp:?}"
    );
}

/// A Python program as an unmodified app in `pod`.
pub fn python(t: &Topology, pod: &str, name: &str, code: &str) -> Proc {
    Proc::spawn(name, t.command(pod, &["python3", "-u", "-c", code]))
}

/// curl from `pod`: the body, or `None` when the connection failed.
pub fn curl(t: &Topology, pod: &str, url: &str) -> Option<String> {
    let out = t
        .command(pod, &["curl", "-gsf", "--max-time", "5", url])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts tcpdump on `pod`'s eth0, writing to `file`; returns once it captures.
pub fn capture(t: &Topology, pod: &str, file: &Path) -> std::process::Child {
    let mut child = t
        // -Z root: Debian's tcpdump otherwise drops to its own user, which
        // may not write into the test's directory; --immediate-mode: hand
        // over every packet at once, not in blocks a SIGTERM may lose.
        .command(
            pod,
            &[
                "tcpdump",
                "-Z",
                "root",
                "--immediate-mode",
                "-i",
                "eth0",
                "-n",
                "-U",
                "-s",
                "0",
                "-w",
            ],
        )
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let started = Instant::now();
    loop {
        let line = lines.next().expect("tcpdump ended").unwrap();
        if line.contains("listening on") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "tcpdump did not start"
        );
    }
    // Keep draining stderr so tcpdump never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    child
}

/// The packets in `file` that match `filter`, one summary line each.
pub fn packets(file: &Path, filter: &str) -> Vec<String> {
    let out = Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(file)
        .arg(filter)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tcpdump -r: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Forwards TCP from `listen` inside the network namespace `ns` to `target`
/// in this process's own namespace, until the process ends: how a control
/// plane in the node namespace reaches an API server on the host's
/// loopback (a stand-in, or a local kind cluster) with an unchanged
/// kubeconfig. The listening socket is made by a thread moved into `ns`
/// (`setns`); the connections to `target` are made by a thread that stays
/// here, so each socket lives in the namespace it needs.
pub fn forward_into(ns: &str, listen: std::net::SocketAddr, target: std::net::SocketAddr) {
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (conn_tx, conn_rx) = std::sync::mpsc::channel::<TcpStream>();
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let bound = std::fs::File::open(&path)
            .and_then(|f| {
                rustix::thread::move_into_link_name_space(
                    f.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(std::io::Error::from)
            })
            .and_then(|()| TcpListener::bind(listen));
        let listener = match bound {
            Ok(l) => {
                let _ = ready_tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        for conn in listener.incoming().flatten() {
            if conn_tx.send(conn).is_err() {
                return;
            }
        }
    });
    ready_rx
        .recv()
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot listen on {listen} in {ns}: {e}"));
    std::thread::spawn(move || {
        for inside in conn_rx {
            let Ok(outside) = TcpStream::connect(target) else {
                continue;
            };
            let pairs = [
                (inside.try_clone().unwrap(), outside.try_clone().unwrap()),
                (outside, inside),
            ];
            for (mut from, mut to) in pairs {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
}

/// A file-mode mesh for pods: its directory (readable by the proxies'
/// UID) with the mesh file and one random bootstrap token per workload.
pub struct FileMesh {
    pub dir: tempfile::TempDir,
    tokens: Vec<(String, String)>,
}

impl FileMesh {
    pub fn new(mesh: &str, workloads: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(dir.path().join("mesh.yaml"), mesh).unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        let tokens: Vec<(String, String)> = workloads
            .iter()
            .map(|w| {
                (
                    format!("token-{w}-{}", rand::random::<u64>()),
                    w.to_string(),
                )
            })
            .collect();
        phoenix_control_plane::tokens::Tokens::from_pairs(tokens.iter().cloned())
            .write(&dir.path().join("state/tokens.json"))
            .unwrap();
        Self { dir, tokens }
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    pub fn token(&self, workload: &str) -> &str {
        &self.tokens.iter().find(|(_, w)| w == workload).unwrap().0
    }

    /// The control plane on the node, and the trust anchor it wrote.
    pub fn control_plane(&self, t: &Topology) -> (Proc, std::path::PathBuf) {
        let mut cmd = t.command("node", &[]);
        cmd.arg(crate::harness::bin("phoenix-control-plane"))
            .arg("--mesh")
            .arg(self.path("mesh.yaml"));
        let cp = Proc::spawn("control-plane", cmd);
        let bound: serde_json::Value =
            serde_json::from_str(&cp.line(Duration::from_secs(30))).unwrap();
        let anchor = bound["trustAnchor"].as_str().unwrap().into();
        (cp, anchor)
    }

    /// `workload`'s proxy in `pod`, subscribed to the control plane on the
    /// node at port 4180, with `args` after.
    pub fn proxy(
        &self,
        t: &Topology,
        pod: &str,
        workload: &str,
        anchor: &Path,
        args: &[&str],
    ) -> Proc {
        let mut cmd = t.proxy_command(pod);
        cmd.args(["--control-plane", &format!("{}:4180", t.host("node"))])
            .args([
                "--control-plane-identity",
                "spiffe://phoenix.local/ns/phoenix/sa/control-plane",
            ])
            .arg("--trust-anchor")
            .arg(anchor)
            .args(args)
            .env("PHOENIX_TOKEN", self.token(workload));
        Proc::spawn(&format!("proxy-{pod}"), cmd)
    }
}
