//! `phoenix up`: the control plane and one proxy process per workload.
//!
//! Children are the real binaries (`phoenix-control-plane`, and the
//! `phoenix-proxy` that runs in pods), found beside this executable or
//! through `PHOENIX_PROXY_BIN` / `PHOENIX_CONTROL_PLANE_BIN`. Each asks the
//! kernel to end it when `phoenix` dies, so nothing is left behind even
//! after a SIGKILL; on Ctrl-C or SIGTERM they are drained and stopped.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use phoenix_control_plane::mesh::Mesh;
use phoenix_control_plane::tokens::{TOKENS_FILE, Tokens};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::http;

/// Version of the `up -o json` document. Bump on incompatible change.
pub const UP_JSON_VERSION: u32 = 1;

/// How long every part has to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What `phoenix up -o json` prints, once, when everything is ready.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpReport {
    /// Document version.
    pub version: u32,
    /// Control-plane addresses.
    pub control_plane: ControlPlaneReport,
    /// One entry per workload proxy.
    pub proxies: Vec<ProxyReport>,
}

/// Control-plane addresses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneReport {
    /// QUIC address proxies use.
    pub control: SocketAddr,
    /// Admin HTTP address.
    pub admin: SocketAddr,
}

/// One proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyReport {
    /// Workload name.
    pub workload: String,
    /// Its SPIFFE ID.
    pub identity: String,
    /// OS process id.
    pub pid: u32,
    /// QUIC (UDP) address.
    pub inbound: SocketAddr,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    /// Outbound listeners for the app.
    pub outbound: Vec<OutboundReport>,
}

/// One outbound listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundReport {
    /// Service name.
    pub service: String,
    /// Where the app connects.
    pub listen: SocketAddr,
}

/// Options of one `up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The mesh file.
    pub mesh_path: PathBuf,
    /// Drain grace given to proxies on shutdown.
    pub drain_grace: Duration,
    /// Forward children's logs to our stderr.
    pub forward_logs: bool,
}

/// A running mesh; dropping it kills every child.
#[derive(Debug)]
pub struct Running {
    /// What is where.
    pub report: UpReport,
    children: Vec<(String, Child)>,
}

use phoenix_runtime::announce::{ControlPlaneBound, ProxyBound};

/// Finds a sibling binary of this executable, or the one an env var names.
pub fn find_binary(name: &str, env: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("cannot locate the phoenix executable")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    // `cargo test` puts test binaries one level below the real ones.
    for candidate in [dir.join(name), dir.join("..").join(name)] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "cannot find `{name}` beside {}; build it (`cargo build --release`) or set {env}",
        exe.display()
    )
}

/// Starts the control plane and every proxy, and waits until all are ready.
pub async fn start(options: &UpOptions, mesh: &Mesh) -> anyhow::Result<Running> {
    let cp_bin = find_binary("phoenix-control-plane", "PHOENIX_CONTROL_PLANE_BIN")?;
    let proxy_bin = find_binary("phoenix-proxy", "PHOENIX_PROXY_BIN")?;
    std::fs::create_dir_all(&mesh.state_dir)
        .with_context(|| format!("cannot create state directory {}", mesh.state_dir.display()))?;

    // One fresh random token per workload, per run.
    let tokens: BTreeMap<String, String> = mesh
        .workloads
        .keys()
        .map(|w| (w.clone(), random_token()))
        .collect();
    let tokens_path = mesh.state_dir.join(TOKENS_FILE);
    Tokens::from_pairs(tokens.iter().map(|(w, t)| (t.clone(), w.clone())))
        .write(&tokens_path)
        .with_context(|| format!("cannot write {}", tokens_path.display()))?;

    let mut running = Running {
        report: UpReport {
            version: UP_JSON_VERSION,
            control_plane: ControlPlaneReport {
                control: mesh.control_listen,
                admin: mesh.control_admin,
            },
            proxies: Vec::new(),
        },
        children: Vec::new(),
    };
    let mut cp = Command::new(&cp_bin);
    cp.arg("--mesh")
        .arg(&options.mesh_path)
        .arg("--tokens")
        .arg(&tokens_path)
        .arg("--state-dir")
        .arg(&mesh.state_dir)
        .env("PHOENIX_DIE_WITH_PARENT", "true");
    let (child, line) = spawn(cp, "control-plane", options.forward_logs).await?;
    running.children.push(("control-plane".into(), child));
    let cp_bound: ControlPlaneBound =
        serde_json::from_str(&line).with_context(|| format!("control plane announced `{line}`"))?;
    running.report.control_plane = ControlPlaneReport {
        control: cp_bound.control,
        admin: cp_bound.admin,
    };
    // Proxies reach the control plane on loopback when it listens on all addresses.
    let cp_addr = if cp_bound.control.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], cp_bound.control.port()))
    } else {
        cp_bound.control
    };

    for w in mesh.workloads.values() {
        let mut cmd = Command::new(&proxy_bin);
        cmd.arg("--control-plane")
            .arg(cp_addr.to_string())
            .arg("--control-plane-identity")
            .arg(&cp_bound.identity)
            .arg("--trust-anchor")
            .arg(&cp_bound.trust_anchor)
            .arg("--inbound")
            .arg(w.inbound.to_string())
            .arg("--admin")
            .arg(w.admin.to_string())
            .arg("--key-exchange")
            .arg(mesh.key_exchange.as_str())
            .arg("--drain-grace")
            .arg(phoenix_api::duration::format(options.drain_grace))
            .env("PHOENIX_TOKEN", &tokens[&w.name])
            .env("PHOENIX_DIE_WITH_PARENT", "true");
        let (child, line) = spawn(cmd, &w.name, options.forward_logs).await?;
        let pid = child.id().unwrap_or(0);
        running.children.push((w.name.clone(), child));
        let bound: ProxyBound = serde_json::from_str(&line)
            .with_context(|| format!("proxy {} announced `{line}`", w.name))?;
        running.report.proxies.push(ProxyReport {
            workload: w.name.clone(),
            identity: w.identity.to_string(),
            pid,
            inbound: bound.inbound,
            admin: bound.admin,
            outbound: Vec::new(),
        });
    }

    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    wait_ready(
        running.report.control_plane.admin,
        "control plane",
        deadline,
    )
    .await?;
    for p in &mut running.report.proxies {
        wait_ready(p.admin, &p.workload, deadline).await?;
        let (_, body) = http::get(p.admin, "/config").await?;
        let dump: serde_json::Value = serde_json::from_str(&body)?;
        p.outbound = serde_json::from_value(dump["listeners"].clone()).unwrap_or_default();
    }
    Ok(running)
}

impl Running {
    /// Waits until a child exits on its own; returns its name and status.
    pub async fn any_exit(&mut self) -> (String, std::process::ExitStatus) {
        loop {
            for (name, child) in &mut self.children {
                if let Ok(Some(status)) = child.try_wait() {
                    return (name.clone(), status);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM to every proxy, then the control plane; waits for them.
    pub async fn shutdown(mut self, grace: Duration) {
        // Proxies first, so they drain while the control plane still answers.
        for (_, child) in self.children.iter().rev() {
            if let Some(pid) = child
                .id()
                .and_then(|p| rustix::process::Pid::from_raw(p as i32))
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        let wait_all = async {
            for (_, child) in &mut self.children {
                let _ = child.wait().await;
            }
        };
        if tokio::time::timeout(grace + Duration::from_secs(5), wait_all)
            .await
            .is_err()
        {
            for (_, child) in &mut self.children {
                let _ = child.start_kill();
            }
        }
    }

    /// The proxies' current metrics text, by workload.
    pub async fn metrics(&self) -> Vec<(String, String)> {
        metrics_of(&self.report).await
    }
}

/// The proxies' current metrics text, by workload.
pub async fn metrics_of(report: &UpReport) -> Vec<(String, String)> {
    {
        let mut out = Vec::new();
        for p in &report.proxies {
            if let Ok((200, body)) = http::get(p.admin, "/metrics").await {
                out.push((p.workload.clone(), body));
            }
        }
        out
    }
}

/// Spawns `cmd` and returns the first line it prints on stdout.
async fn spawn(
    mut cmd: Command,
    name: &str,
    forward_logs: bool,
) -> anyhow::Result<(Child, String)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let tag = name.to_owned();
    // Children's logs: forwarded with a tag, or drained so they never block.
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if forward_logs {
                eprintln!("[{tag}] {line}");
            }
        }
    });
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(READY_TIMEOUT, lines.next_line()).await;
    let line = match first {
        Ok(Ok(Some(line))) => line,
        _ => {
            let status = child.try_wait().ok().flatten();
            bail!("{name} did not start (exit status: {status:?}); run with logs to see why");
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, line))
}

async fn wait_ready(
    admin: SocketAddr,
    name: &str,
    deadline: tokio::time::Instant,
) -> anyhow::Result<()> {
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        match http::get(admin, "/ready").await {
            Ok((200, _)) => return Ok(()),
            Ok((_, body)) => last = body,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{name} not ready after {READY_TIMEOUT:?}: {last}")
}

fn random_token() -> String {
    let bytes: [u8; 24] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Prints where everything listens, for people.
pub fn print_human(report: &UpReport, mesh: &Mesh) {
    println!(
        "Phoenix mesh is up (trust domain {}, key exchange {}, identities {}, authentication {}).",
        mesh.trust_domain,
        mesh.key_exchange.as_str(),
        mesh.identity_algorithm.as_str(),
        mesh.auth_policy.as_str()
    );
    println!(
        "  control plane  quic {}  admin http://{}",
        report.control_plane.control, report.control_plane.admin
    );
    for p in &report.proxies {
        println!(
            "  {:<12}  pid {:<7} quic {}  admin http://{}  ({})",
            p.workload, p.pid, p.inbound, p.admin, p.identity
        );
        for o in &p.outbound {
            println!("  {:<12}    app → {} at {}", "", o.service, o.listen);
        }
    }
    println!("Press Ctrl-C to stop.");
}

/// One status line per proxy, refreshed in place on a terminal.
pub async fn status_loop(report: UpReport, to_stderr: bool) {
    let tty = if to_stderr {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    };
    let mut printed = 0usize;
    loop {
        tokio::time::sleep(Duration::from_secs(if tty { 1 } else { 10 })).await;
        let mut lines = Vec::new();
        for (workload, text) in metrics_of(&report).await {
            let open = http::sum_metric(&text, "tcp_open_connections", &[]);
            let opened = http::sum_metric(&text, "tcp_open_total", &[]);
            let read = http::sum_metric(&text, "tcp_read_bytes_total", &[]);
            let hs = http::by_label(
                &text,
                "tls_handshakes_total",
                "kx_group",
                &[("result", "success")],
            );
            let hs: Vec<String> = hs.iter().map(|(g, n)| format!("{g}:{n}")).collect();
            lines.push(format!(
                "{workload:<12} conns open {open:<4} total {opened:<6} bytes in {read:<12} handshakes {}",
                if hs.is_empty() { "-".into() } else { hs.join(",") }
            ));
        }
        let mut out = String::new();
        if tty && printed > 0 {
            out.push_str(&format!("\x1b[{printed}A"));
        }
        for l in &lines {
            out.push_str(l);
            out.push_str(if tty { "\x1b[K\n" } else { "\n" });
        }
        printed = lines.len();
        if to_stderr {
            eprint!("{out}");
        } else {
            print!("{out}");
        }
    }
}
