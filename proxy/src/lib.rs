//! Phoenix proxy: carries a workload's TCP connections to peer proxies over
//! one post-quantum, mutually authenticated QUIC connection per peer.
//!
//! [`run`] is the whole proxy; `main.rs` only parses settings. Parts:
//! [`outbound`] (local listeners → streams), [`inbound`] (streams → local
//! app), [`pool`] (one connection per peer), [`relay`] (bytes both ways),
//! [`control`] (certificates and config from the control plane),
//! [`config`] (validation), [`admin`] and [`metrics`].

pub mod balance;
pub mod config;
pub mod connector;
pub mod control;
pub mod http;
pub mod inbound;
pub mod init;
pub mod intercept;
pub mod listen;
pub mod metrics;
pub mod outbound;
pub mod pool;
pub mod relay;
pub mod settings;
pub mod state;
pub mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use phoenix_tls::handshake::{ClientAuth, TlsPolicy};
use phoenix_tls::{Credentials, TlsContext};
use prometheus_client::registry::Registry;

use crate::metrics::Metrics;
use crate::outbound::Listeners;
use crate::settings::Settings;
use crate::state::Shared;
use phoenix_runtime::admin::{self, AdminState};
use phoenix_runtime::supervisor;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The trust anchor is unusable.
    #[error("trust anchor")]
    Tls(#[from] phoenix_tls::handshake::TlsConfigError),
    /// A listener could not be bound.
    #[error("cannot bind {what} on {addr}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Where.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A task the proxy needs ended before shutdown (a bug: it is logged).
    #[error("the proxy's {task} task {how} before shutdown")]
    TaskEnded {
        /// Which task.
        task: &'static str,
        /// How it ended (returned, panicked).
        how: &'static str,
    },
}

/// Addresses the proxy bound, printed on stdout as one JSON line at start.
pub use phoenix_runtime::announce::ProxyBound as Bound;

/// Runs the proxy until `shutdown` resolves, then drains open connections
/// for up to the configured grace period.
pub async fn run(
    settings: Settings,
    on_bound: impl FnOnce(&Bound) + Send,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), StartError> {
    run_boxed(settings, Box::new(on_bound), Box::pin(shutdown)).await
}

/// The body of `run` as a boxed future, built here: the future's code (its
/// poll, and all the generic code it calls) is compiled once, in this crate,
/// and a binary only polls it through the box. A generic `async fn`, and
/// even a non-generic one awaited from generic code, is compiled anew in
/// every binary that calls it, which made the binaries' release builds slow
/// (the control plane's binary alone was 54 s of a 4 min 47 s build).
#[allow(clippy::type_complexity)]
fn run_boxed<'a>(
    settings: Settings,
    on_bound: Box<dyn FnOnce(&Bound) + Send + 'a>,
    shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StartError>> + Send + 'a>> {
    Box::pin(run_body(settings, on_bound, shutdown))
}

async fn run_body(
    settings: Settings,
    on_bound: Box<dyn FnOnce(&Bound) + Send + '_>,
    shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>,
) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let credentials = Arc::new(Credentials::default());
    let tls = TlsContext::new(&settings.trust_anchor_pem, credentials)?;
    metrics.trust_roots.set(tls.root_names().len() as i64);
    // The endpoint needs a server config to accept at all; every connection
    // is then accepted with its own (see `inbound`).
    let (default_server, _lease) = tls.server(
        &TlsPolicy::default(),
        ClientAuth::Required,
        state::INBOUND_ALPN,
        settings.transport.server_transport(),
    )?;
    // `[::]` listens on both families (IPv6-primary and dual-stack pods);
    // where the kernel has no IPv6 at all (EAFNOSUPPORT, EADDRNOTAVAIL),
    // IPv4 alone. Any other error (the port taken) is an error.
    let v4_fallback = |addr: SocketAddr, error: &std::io::Error| {
        let no_ipv6 = [
            rustix::io::Errno::AFNOSUPPORT.raw_os_error(),
            rustix::io::Errno::ADDRNOTAVAIL.raw_os_error(),
        ];
        (addr.ip() == std::net::Ipv6Addr::UNSPECIFIED
            && error.raw_os_error().is_some_and(|e| no_ipv6.contains(&e)))
        .then(|| SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, addr.port())))
    };
    let bind_quic =
        |addr| phoenix_tls::endpoint::bind(addr, &settings.transport, Some(default_server.clone()));
    let endpoint = match bind_quic(settings.inbound) {
        Ok(endpoint) => Ok(endpoint),
        Err(error) => match v4_fallback(settings.inbound, &error) {
            Some(v4) => {
                tracing::info!(addr = %settings.inbound, fallback = %v4, "no IPv6 here; QUIC on IPv4 only");
                bind_quic(v4)
            }
            None => Err(error),
        },
    }
    .map_err(|source| StartError::Bind {
        what: "inbound QUIC endpoint",
        addr: settings.inbound,
        source,
    })?;
    let bind_tcp = |what: &'static str, addr: SocketAddr| async move {
        let bind_error = |source| StartError::Bind { what, addr, source };
        let listener = match listen::bind(addr) {
            Ok(l) => l,
            Err(source) => match v4_fallback(addr, &source) {
                Some(v4) => {
                    tracing::info!(what, %addr, fallback = %v4, "no IPv6 here; listening on IPv4 only");
                    listen::bind(v4).map_err(bind_error)?
                }
                None => return Err(bind_error(source)),
            },
        };
        let local = listener.local_addr().map_err(bind_error)?;
        Ok::<_, StartError>((listener, local))
    };
    let (admin, admin_addr) = bind_tcp("admin listener", settings.admin).await?;
    let redirect = |what: &'static str, addr: Option<SocketAddr>| async move {
        match addr {
            Some(addr) => bind_tcp(what, addr).await.map(Some),
            None => Ok(None),
        }
    };
    let outbound_redirect =
        redirect("outbound redirect listener", settings.outbound_redirect).await?;
    let inbound_redirect = redirect("inbound redirect listener", settings.inbound_redirect).await?;
    let bound = Bound {
        inbound: endpoint.local_addr().map_err(|source| StartError::Bind {
            what: "inbound QUIC endpoint",
            addr: settings.inbound,
            source,
        })?,
        admin: admin_addr,
        outbound_redirect: outbound_redirect.as_ref().map(|(_, a)| *a),
        inbound_redirect: inbound_redirect.as_ref().map(|(_, a)| *a),
    };
    on_bound(&bound);

    let mut shared = Shared::new(tls, settings.transport.clone(), endpoint, metrics);
    shared.pod_ips = settings
        .pod_ips
        .iter()
        .map(|ip| ip.to_canonical())
        .collect();
    shared.max_header_bytes = settings.max_header_bytes;
    shared.max_udp_flows_per_peer = settings.max_udp_flows_per_peer;
    if !settings.inbound_http3 {
        shared.inbound_alpn = state::TUNNEL_ONLY_ALPN;
    }
    let shared = Arc::new(shared);
    let listeners = Arc::new(Listeners::default());
    let admin_state = Arc::new(ProxyAdmin {
        shared: shared.clone(),
        listeners: listeners.clone(),
        bound: bound.clone(),
    });
    let mut tasks = supervisor::Supervisor::default();
    tasks.spawn(
        "admin",
        admin::serve(admin, Arc::new(registry), admin_state),
    );
    tasks.spawn("inbound", inbound::serve(shared.clone()));
    if let Some((listener, _)) = outbound_redirect {
        tasks.spawn(
            "outbound redirect",
            intercept::serve_outbound(shared.clone(), listener),
        );
    }
    if let Some((listener, _)) = inbound_redirect {
        tasks.spawn(
            "inbound redirect",
            intercept::serve_inbound(shared.clone(), listener, Arc::new(settings.probes.clone())),
        );
    }
    tasks.spawn(
        "certificates",
        control::certificates(shared.clone(), settings.control_plane.clone()),
    );
    tasks.spawn(
        "config subscription",
        control::subscribe(
            shared.clone(),
            settings.control_plane.clone(),
            bound.inbound,
        ),
    );
    {
        let shared = shared.clone();
        let listeners = listeners.clone();
        tasks.spawn("listener reconcile", async move {
            let mut changed = shared.config_changed.subscribe();
            loop {
                if let Some(config) = shared.config.load_full() {
                    listeners.reconcile(&shared, &config).await;
                }
                if changed.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    let mut shutdown = shutdown;
    tokio::select! {
        () = &mut shutdown => {}
        (task, ended) = tasks.first_to_end() => {
            // The process would limp on without it: exit non-zero instead,
            // so the orchestrator restarts the proxy.
            tracing::error!(task, how = ended.as_str(), "a proxy task ended before shutdown; exiting");
            tasks.abort_all();
            shared.endpoint.close(quinn::VarInt::from_u32(1), b"proxy task ended");
            return Err(StartError::TaskEnded { task, how: ended.as_str() });
        }
    }
    tracing::info!(grace = ?settings.drain_grace, "shutting down: draining open connections");
    listeners.close_all();
    shared.endpoint.set_server_config(None);
    shared.draining.send_replace(true);
    let mut active = shared.active.subscribe();
    let drained = tokio::time::timeout(settings.drain_grace, active.wait_for(|n| *n == 0))
        .await
        .is_ok();
    if !drained {
        tracing::warn!(
            open = *active.borrow(),
            "grace period over; closing remaining connections"
        );
    }
    shared
        .endpoint
        .close(quinn::VarInt::from_u32(0), b"shutdown");
    tasks.abort_all();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        shared.endpoint.wait_idle(),
    )
    .await;
    Ok(())
}

struct ProxyAdmin {
    shared: Arc<Shared>,
    listeners: Arc<Listeners>,
    bound: Bound,
}

impl AdminState for ProxyAdmin {
    fn ready(&self) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        match self.shared.tls.credentials().current() {
            None => reasons.push("no workload certificate yet".to_owned()),
            Some(c) if c.not_after <= now_unix() => {
                reasons.push("workload certificate expired".to_owned())
            }
            Some(_) => {}
        }
        let config = self.shared.config.load();
        match config.as_ref() {
            None => reasons.push("no config from the control plane yet".to_owned()),
            Some(c) => {
                let bound = self.listeners.addresses();
                let listening = c.upstreams.iter().filter(|(_, u)| u.listen.is_some());
                for (service, _) in listening {
                    if !bound.iter().any(|(s, _)| s == service) {
                        reasons.push(format!("outbound listener for `{service}` not bound"));
                    }
                }
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    fn config_dump(&self) -> serde_json::Value {
        let config = self.shared.config.load();
        let cert = self.shared.tls.credentials().current();
        // Both pools: opaque streams ride tunnel connections, HTTP
        // requests HTTP/3 ones (a peer may hold one of each).
        let peers: Vec<serde_json::Value> = [
            ("tunnel", &self.shared.pool),
            ("http3", &self.shared.http_pool),
        ]
        .into_iter()
        .flat_map(|(protocol, pool)| pool.peers().into_iter().map(move |p| (protocol, p)))
        .map(|(protocol, p)| {
            serde_json::json!({
                "protocol": protocol,
                "address": p.address,
                "identity": p.identity,
                "path": p.path.map(|path| serde_json::json!({
                    // Path MTU discovery's result so far.
                    "udpPayload": path.current_mtu,
                    "rttMicros": u64::try_from(path.rtt.as_micros()).unwrap_or(u64::MAX),
                    "congestionWindow": path.cwnd,
                    "congestionEvents": path.congestion_events,
                    "sentPackets": path.sent_packets,
                    "lostPackets": path.lost_packets,
                    "mtuProbesSent": path.sent_plpmtud_probes,
                    "mtuProbesLost": path.lost_plpmtud_probes,
                    "blackHolesDetected": path.black_holes_detected,
                })),
            })
        })
        .collect();
        serde_json::json!({
            "version": config.as_ref().map(|c| c.version),
            "inbound": self.bound.inbound,
            "admin": self.bound.admin,
            "certificate": cert.as_ref().map(|c| serde_json::json!({
                "identity": c.identity.to_string(),
                "notBefore": c.not_before,
                "notAfter": c.not_after,
                "issuer": c.issuer,
                // The key's algorithm and the scheme of our handshake signatures.
                "algorithm": c.algorithm().map(|a| a.as_str()),
                "signatureScheme": phoenix_tls::sig::scheme_name(c.scheme),
            })),
            "trustRoots": self.shared.tls.root_names(),
            "listeners": self.listeners.addresses().into_iter().map(|(service, listen)| {
                serde_json::json!({"service": service, "listen": listen})
            }).collect::<Vec<_>>(),
            "peers": peers,
            // Peers the pool holds state for (live, connecting, or failing
            // now): falls back to 0 once their connections close.
            "peerSlots": self.shared.pool.len() + self.shared.http_pool.len(),
            "config": config.as_ref().map(|c| &c.snapshot),
        })
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
