//! The Phoenix side of a run, started by hand: the control plane and the echo
//! proxy on the server side, the client proxy on the client side, each the
//! real release binary, each in its side's namespace (veth runs).

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};
use phoenix_control_plane::tokens::{TOKENS_FILE, Tokens};
use serde::Deserialize;

use crate::agent::{AgentHandle, Request};
use crate::child::Child;
use crate::{Side, poll};

/// Trust domain of the bench mesh.
pub const TRUST_DOMAIN: &str = "phoenix.local";
/// Identity of the client workload.
pub const CLIENT_ID: &str = "spiffe://phoenix.local/ns/default/sa/client";
/// Identity of the echo workload.
pub const ECHO_ID: &str = "spiffe://phoenix.local/ns/default/sa/echo";

/// How long each part has to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running Phoenix mesh of two workloads. Fields drop in order: the
/// processes go before their state directory.
pub struct Phoenix {
    /// The client workload's proxy (client side).
    pub client: Child,
    /// The echo workload's proxy (server side).
    pub echo: Child,
    /// The control plane (server side); held so it runs.
    _control_plane: Child,
    /// Where the app connects: the client proxy's listener for `echo`.
    pub outbound: SocketAddr,
    /// The echo proxy's QUIC address.
    pub echo_inbound: SocketAddr,
    /// The echo proxy's admin address (server side).
    pub echo_admin: SocketAddr,
    /// The client proxy's admin address (client side).
    pub client_admin: SocketAddr,
    /// The mesh state directory (CA, tokens).
    pub state_dir: PathBuf,
    /// Holds the mesh file and the state directory.
    _dir: tempfile::TempDir,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ControlPlaneBound {
    control: SocketAddr,
    admin: SocketAddr,
    identity: String,
    trust_anchor: PathBuf,
}

#[derive(Debug, Deserialize)]
struct ProxyBound {
    inbound: SocketAddr,
    admin: SocketAddr,
}

/// How both proxies of a mesh run.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProxySettings {
    /// `--max-udp-payload`, when fixed.
    pub max_udp_payload: Option<u16>,
    /// `--max-path-mtu`, on jumbo links.
    pub max_path_mtu: Option<u32>,
    /// The setting this mesh changes, if it is a variant.
    pub variant: Option<crate::Variant>,
}

impl Phoenix {
    /// Starts the mesh in front of `server` and waits until a connection
    /// through it works.
    pub fn start(
        client_side: &Side,
        server_side: &Side,
        agent_a: &mut AgentHandle,
        agent_b: &mut AgentHandle,
        server: SocketAddr,
        settings: &ProxySettings,
    ) -> anyhow::Result<Self> {
        let variant = settings.variant;
        let dir = tempfile::Builder::new()
            .prefix("phoenix-bench-")
            .tempdir()?;
        let state_dir = dir.path().join("state");
        std::fs::create_dir_all(&state_dir)?;
        let mesh_path = dir.path().join("mesh.yaml");
        let ciphers = variant
            .and_then(crate::Variant::cipher_suites)
            .map(|c| format!("cipherSuites: {c}\n"))
            .unwrap_or_default();
        std::fs::write(
            &mesh_path,
            format!(
                "trustDomain: {TRUST_DOMAIN}\n\
                 stateDir: state\n\
                 {ciphers}\
                 workloads:\n\
                 \x20 - name: client\n\
                 \x20   upstreams: [{{service: echo, listen: \"127.0.0.1:0\"}}]\n\
                 \x20 - name: echo\n\
                 \x20   serve: [{{service: echo, target: \"{server}\", allow: [client]}}]\n"
            ),
        )?;
        let token = |w: &str| format!("bench-{w}-{:016x}", rand::random::<u64>());
        let (client_token, echo_token) = (token("client"), token("echo"));
        Tokens::from_pairs([
            (client_token.clone(), "client".to_owned()),
            (echo_token.clone(), "echo".to_owned()),
        ])
        .write(&state_dir.join(TOKENS_FILE))?;

        let mut control_plane = Child::spawn(
            "phoenix-control-plane",
            server_side.netns.as_deref(),
            &workspace_bin("phoenix-control-plane")?,
            &[
                "--mesh".into(),
                mesh_path.clone().into(),
                "--listen".into(),
                SocketAddr::new(server_side.ip, 0).to_string().into(),
            ],
            &[("PHOENIX_DIE_WITH_PARENT", "true".to_owned())],
        )?;
        let line = control_plane.line(READY_TIMEOUT)?;
        let cp: ControlPlaneBound = serde_json::from_str(&line)
            .with_context(|| format!("the control plane announced `{line}`"))?;
        poll(READY_TIMEOUT, "the control plane's /ready", || {
            Ok((agent_b.get(cp.admin, "/ready")?.status == 200).then_some(()))
        })?;

        let (echo, echo_bound) = start_proxy(
            "echo proxy",
            server_side,
            agent_b,
            &cp,
            &echo_token,
            settings,
        )?;
        let (client, client_bound) = start_proxy(
            "client proxy",
            client_side,
            agent_a,
            &cp,
            &client_token,
            settings,
        )?;
        let outbound = poll(
            READY_TIMEOUT,
            "the client proxy's listener for echo",
            || {
                let config: serde_json::Value =
                    serde_json::from_str(&agent_a.get(client_bound.admin, "/config")?.body)?;
                Ok(config["listeners"].as_array().and_then(|ls| {
                    ls.iter()
                        .find(|l| l["service"] == "echo")
                        .and_then(|l| l["listen"].as_str()?.parse().ok())
                }))
            },
        )?;
        // Ready proxies may still wait for each other's endpoints: retry the
        // first tunnelled connection until it goes through.
        poll(
            READY_TIMEOUT,
            "a first connection through the proxies",
            || {
                agent_a.call::<serde_json::Value>(&Request::Echo { addr: outbound })?;
                Ok(Some(()))
            },
        )?;
        Ok(Self {
            client,
            echo,
            _control_plane: control_plane,
            outbound,
            echo_inbound: echo_bound.inbound,
            echo_admin: echo_bound.admin,
            client_admin: client_bound.admin,
            state_dir,
            _dir: dir,
        })
    }
}

fn start_proxy(
    name: &str,
    side: &Side,
    agent: &mut AgentHandle,
    cp: &ControlPlaneBound,
    token: &str,
    settings: &ProxySettings,
) -> anyhow::Result<(Child, ProxyBound)> {
    let extra: &[&str] = settings.variant.map_or(&[], crate::Variant::proxy_args);
    let mut args: Vec<OsString> = vec![
        "--control-plane".into(),
        cp.control.to_string().into(),
        "--control-plane-identity".into(),
        cp.identity.clone().into(),
        "--trust-anchor".into(),
        cp.trust_anchor.clone().into(),
        "--inbound".into(),
        SocketAddr::new(side.ip, 0).to_string().into(),
        "--admin".into(),
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
            .to_string()
            .into(),
        "--drain-grace".into(),
        "1s".into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    if let Some(n) = settings.max_path_mtu {
        args.extend(["--max-path-mtu".into(), n.to_string().into()]);
    }
    if let Some(n) = settings.max_udp_payload {
        args.extend(["--max-udp-payload".into(), n.to_string().into()]);
    }
    let mut child = Child::spawn(
        name,
        side.netns.as_deref(),
        &workspace_bin("phoenix-proxy")?,
        &args,
        &[
            ("PHOENIX_TOKEN", token.to_owned()),
            ("PHOENIX_DIE_WITH_PARENT", "true".to_owned()),
        ],
    )?;
    let line = child.line(READY_TIMEOUT)?;
    let bound: ProxyBound =
        serde_json::from_str(&line).with_context(|| format!("{name} announced `{line}`"))?;
    poll(READY_TIMEOUT, &format!("{name}'s /ready"), || {
        Ok((agent.get(bound.admin, "/ready")?.status == 200).then_some(()))
    })
    .with_context(|| format!("{name} stderr:\n{}", child.stderr_tail()))?;
    Ok((child, bound))
}

/// Where `benches/run --baseline REV` puts the binaries of another commit,
/// to measure them with this bench in the same session.
pub const BIN_DIR_ENV: &str = "PHOENIX_BENCH_BIN_DIR";

/// A release binary of the workspace, beside the `phoenix` CLI (or in
/// [`BIN_DIR_ENV`] when set).
fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) => Path::new(&dir).join(name),
        None => Path::new(env!("CARGO_BIN_EXE_phoenix")).with_file_name(name),
    };
    ensure!(
        path.is_file(),
        "{} is missing: run benches/run, which builds it first (cargo build --release --workspace --bins)",
        path.display()
    );
    Ok(path)
}
