//! Test harness: real `phoenix`, `phoenix-control-plane` and `phoenix-proxy`
//! processes on loopback with OS-assigned ports, so tests run in parallel.
//!
//! Children are killed when their handle drops, also when a test panics;
//! the proxies and the control plane additionally die with their parent.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of a workspace binary (built by `cargo build --workspace`).
pub fn bin(name: &str) -> PathBuf {
    let phoenix = PathBuf::from(env!("CARGO_BIN_EXE_phoenix"));
    let p = phoenix.with_file_name(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace --bins` before the tests (scripts/test does)",
        p.display()
    );
    p
}

/// A child process with its stdout lines on a channel and stderr kept for failures.
pub struct Proc {
    pub name: String,
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub stderr: Arc<Mutex<String>>,
    /// The thread copying stderr; joined by `stderr_at_exit`.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    /// Spawns `cmd` with piped stdio.
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = child.stderr.take().unwrap();
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            name: name.to_owned(),
            child,
            lines,
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    /// Waits for exit within `timeout`, then returns all it wrote to stderr.
    pub fn stderr_at_exit(&mut self, timeout: Duration) -> String {
        self.wait(timeout);
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        self.stderr.lock().unwrap().clone()
    }

    /// The next stdout line, within `timeout`.
    pub fn line(&self, timeout: Duration) -> String {
        self.lines.recv_timeout(timeout).unwrap_or_else(|_| {
            panic!(
                "{} printed no line within {timeout:?}; stderr:\n{}",
                self.name,
                self.stderr.lock().unwrap()
            )
        })
    }

    /// The next stdout line if one comes within `timeout`.
    pub fn try_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }

    /// Waits for exit within `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A mesh run by `phoenix up -o json`.
pub struct Up {
    pub proc: Proc,
    pub report: serde_json::Value,
    pub dir: tempfile::TempDir,
}

impl Up {
    /// Writes `yaml` as the mesh file and runs `phoenix up` on it.
    pub fn start(yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, yaml).unwrap();
        Self::start_file(dir, &path)
    }

    /// As [`Up::start`], with `env` set for `phoenix up` and so for every
    /// process it starts (the proxies read their `PHOENIX_*` settings).
    pub fn start_env(yaml: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, yaml).unwrap();
        Self::start_file_env(dir, &path, env)
    }

    fn start_file(dir: tempfile::TempDir, path: &Path) -> Self {
        Self::start_file_env(dir, path, &[])
    }

    fn start_file_env(dir: tempfile::TempDir, path: &Path, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(bin("phoenix"));
        cmd.args(["up", "-o", "json", "--drain-grace", "2s", "-f"])
            .arg(path)
            .envs(env.iter().copied());
        let proc = Proc::spawn("phoenix up", cmd);
        let line = proc.line(Duration::from_secs(90));
        let report: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("up printed `{line}`: {e}"));
        Self { proc, report, dir }
    }

    pub fn proxy(&self, workload: &str) -> &serde_json::Value {
        self.report["proxies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["workload"] == workload)
            .unwrap_or_else(|| panic!("no proxy for {workload}"))
    }

    /// The app-facing listener of `workload` for `service`.
    pub fn outbound(&self, workload: &str, service: &str) -> SocketAddr {
        let p = self.proxy(workload);
        p["outbound"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["service"] == service)
            .unwrap_or_else(|| panic!("{workload} has no listener for {service}"))["listen"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    pub fn admin(&self, workload: &str) -> SocketAddr {
        self.proxy(workload)["admin"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    pub fn inbound(&self, workload: &str) -> SocketAddr {
        self.proxy(workload)["inbound"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    pub fn metrics(&self, workload: &str) -> String {
        get(self.admin(workload), "/metrics").1
    }

    /// The state directory (`stateDir: state` in test meshes).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
}

/// HTTP GET on loopback: (status, body).
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = get_full(addr, path);
    (status, body)
}

/// HTTP GET on loopback: (status, head, body). Chunked bodies are decoded.
pub fn get_full(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((len, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    (status, head.to_owned(), body)
}

/// Sum of the samples of `metric` whose labels include all of `want`
/// (0 when the family exists but no sample has those labels yet). A metric
/// the text does not have at all fails the test: a renamed or unregistered
/// metric must not read as a passing `== 0.0`. (prometheus-client leaves a
/// labelled family out of the scrape until its first sample: a test that
/// expects none of one says so with [`metric_or_absent`].)
pub fn metric(text: &str, metric: &str, want: &[(&str, &str)]) -> f64 {
    let family = ["_total", "_bucket", "_count", "_sum", "_created"]
        .iter()
        .find_map(|suffix| metric.strip_suffix(suffix))
        .unwrap_or(metric);
    let known = text.lines().any(|l| {
        let name = l
            .strip_prefix("# TYPE ")
            .and_then(|t| t.split_whitespace().next())
            .unwrap_or_else(|| l.split(['{', ' ']).next().unwrap_or(""));
        name == metric || name == family
    });
    assert!(
        known,
        "no metric {metric} in the scrape (renamed or not registered?):\n{text}"
    );
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (nl, v) = l.rsplit_once(' ')?;
            let (name, labels) = nl.split_once('{').unwrap_or((nl, ""));
            (name == metric
                && want.iter().all(|(k, val)| {
                    labels
                        .trim_end_matches('}')
                        .split(',')
                        .any(|kv| kv == format!("{k}=\"{val}\""))
                }))
            .then(|| v.parse::<f64>().ok())?
        })
        .sum()
}

/// [`metric`] for a labelled family that is absent until its first sample
/// (failure counters): 0 when absent.
pub fn metric_or_absent(text: &str, metric_name: &str, want: &[(&str, &str)]) -> f64 {
    let present = text
        .lines()
        .any(|l| l.starts_with(metric_name) && l[metric_name.len()..].starts_with(['{', ' ']));
    if present {
        metric(text, metric_name, want)
    } else {
        0.0
    }
}

/// Waits until `workload`'s `metric` (samples with `labels`) sums to `want`.
pub fn wait_metric(up: &Up, workload: &str, metric_name: &str, labels: &[(&str, &str)], want: f64) {
    let what = format!("{workload}: {metric_name}{labels:?} == {want}");
    eventually(Duration::from_secs(10), &what, || {
        let text = up.metrics(workload);
        // Waiting for a first sample: the family may not exist yet (a
        // renamed one still times out). Waiting for 0 needs it to exist.
        let got = if want == 0.0 {
            metric(&text, metric_name, labels)
        } else {
            metric_or_absent(&text, metric_name, labels)
        };
        (got == want).then_some(())
    });
}

/// Runs curl (from the machine, not a pod) with `args`, whatever its
/// exit status: (stdout, exit code).
pub fn curl_status(args: &[&str]) -> (String, i32) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .expect("curl runs");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A TCP echo server on 127.0.0.1:0, served by threads.
pub fn echo_server() -> SocketAddr {
    let l = deep_listener();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

/// A loopback listener whose accept queue holds a burst of 4,096 connections.
///
/// std's `TcpListener::bind` listens with a backlog of 128: when a test opens
/// a thousand connections at once, the kernel drops the SYNs beyond the queue
/// (`TcpExtListenOverflows`) and the proxy's connects back off by 1, 3, 7,
/// 15 s, so an echo arrives after the test's read deadline. Real servers
/// (nginx, Envoy) listen with a deep queue for the same reason.
pub fn deep_listener() -> std::net::TcpListener {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    socket.listen(4096).unwrap();
    socket.into()
}

/// A port that refuses connections (bound then closed).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// The two-workload mesh most tests use: `client` calls `echo`.
pub fn client_echo_mesh(target: SocketAddr, extra: &str) -> String {
    format!(
        "trustDomain: phoenix.local\n\
         stateDir: state\n\
         {extra}\
         workloads:\n\
         \x20 - name: client\n\
         \x20   upstreams: [{{service: echo, listen: \"127.0.0.1:0\"}}]\n\
         \x20 - name: echo\n\
         \x20   serve: [{{service: echo, target: \"{target}\", allow: [client]}}]\n"
    )
}

/// A mesh whose control plane and proxies the test starts and stops itself.
pub struct Manual {
    pub dir: tempfile::TempDir,
    pub mesh_path: PathBuf,
    pub tokens: std::collections::BTreeMap<String, String>,
    pub cp: Option<Proc>,
    pub cp_bound: serde_json::Value,
    pub proxies: std::collections::BTreeMap<String, (Proc, serde_json::Value)>,
}

impl Manual {
    /// Writes `yaml` and a token per workload; starts nothing.
    pub fn new(yaml: &str, workloads: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mesh_path = dir.path().join("mesh.yaml");
        std::fs::write(&mesh_path, yaml).unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        let tokens: std::collections::BTreeMap<String, String> = workloads
            .iter()
            .map(|w| {
                (
                    w.to_string(),
                    format!("token-{w}-{}", rand::random::<u64>()),
                )
            })
            .collect();
        phoenix_control_plane::tokens::Tokens::from_pairs(
            tokens.iter().map(|(w, t)| (t.clone(), w.clone())),
        )
        .write(&dir.path().join("state/tokens.json"))
        .unwrap();
        Self {
            dir,
            mesh_path,
            tokens,
            cp: None,
            cp_bound: serde_json::Value::Null,
            proxies: Default::default(),
        }
    }

    /// Starts the control plane on `listen` and waits until it is ready.
    pub fn start_control_plane(&mut self, listen: &str) {
        let mut cmd = Command::new(bin("phoenix-control-plane"));
        cmd.arg("--mesh")
            .arg(&self.mesh_path)
            .args(["--listen", listen]);
        let p = Proc::spawn("control-plane", cmd);
        let line = p.line(Duration::from_secs(30));
        self.cp_bound = serde_json::from_str(&line).unwrap();
        let admin = self.cp_bound["admin"].as_str().unwrap().parse().unwrap();
        eventually(Duration::from_secs(20), "control plane ready", || {
            (get(admin, "/ready").0 == 200).then_some(())
        });
        self.cp = Some(p);
    }

    pub fn control_addr(&self) -> SocketAddr {
        self.cp_bound["control"].as_str().unwrap().parse().unwrap()
    }

    /// Starts `workload`'s proxy and waits until it is ready.
    pub fn start_proxy(&mut self, workload: &str, extra: &[&str]) {
        let mut cmd = Command::new(bin("phoenix-proxy"));
        // By name: proxies resolve the control plane's address at every
        // connection (in a cluster it is a Service name).
        cmd.arg("--control-plane")
            .arg(format!("localhost:{}", self.control_addr().port()))
            .arg("--control-plane-identity")
            .arg(self.cp_bound["identity"].as_str().unwrap())
            .arg("--trust-anchor")
            .arg(self.cp_bound["trustAnchor"].as_str().unwrap())
            .args(extra)
            .env("PHOENIX_TOKEN", &self.tokens[workload]);
        let p = Proc::spawn(workload, cmd);
        let bound: serde_json::Value =
            serde_json::from_str(&p.line(Duration::from_secs(30))).unwrap();
        let admin = bound["admin"].as_str().unwrap().parse().unwrap();
        eventually(Duration::from_secs(20), "proxy ready", || {
            (get(admin, "/ready").0 == 200).then_some(())
        });
        self.proxies.insert(workload.to_owned(), (p, bound));
    }

    pub fn admin(&self, workload: &str) -> SocketAddr {
        self.proxies[workload].1["admin"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    pub fn config(&self, workload: &str) -> serde_json::Value {
        serde_json::from_str(&get(self.admin(workload), "/config").1).unwrap()
    }

    /// The bound outbound listener of `workload` for `service`, once it exists.
    pub fn outbound(&self, workload: &str, service: &str) -> SocketAddr {
        eventually(Duration::from_secs(20), "outbound listener", || {
            self.config(workload)["listeners"]
                .as_array()?
                .iter()
                .find(|l| l["service"] == service)
                .and_then(|l| l["listen"].as_str()?.parse().ok())
        })
    }

    pub fn metrics(&self, workload: &str) -> String {
        get(self.admin(workload), "/metrics").1
    }
}

/// A connection to `addr` whose reads give up after 10 s.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

/// Traffic through a root rotation: pings on one long connection, and a
/// fresh connection every fifth tick, 40 ms apart, failing the test past
/// `limit` from its start.
pub struct Ticker {
    addr: SocketAddr,
    started: Instant,
    limit: Duration,
    i: u32,
}

impl Ticker {
    pub fn new(addr: SocketAddr, limit: Duration) -> Self {
        Self {
            addr,
            started: Instant::now(),
            limit,
            i: 0,
        }
    }

    pub fn tick(&mut self, long: &mut TcpStream) {
        ping(long, format!("ping-{:06}", self.i).as_bytes());
        self.i += 1;
        if self.i.is_multiple_of(5) {
            ping(&mut connect(self.addr), b"fresh");
        }
        std::thread::sleep(Duration::from_millis(40));
        assert!(
            self.started.elapsed() < self.limit,
            "still not there after {:?}",
            self.limit
        );
    }
}

/// Sends `msg` on `c` and checks the echo.
pub fn ping(c: &mut TcpStream, msg: &[u8]) {
    c.write_all(msg).unwrap();
    let mut buf = vec![0u8; msg.len()];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(buf, msg);
}

/// Runs `cmd`, asserting it succeeds; its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
