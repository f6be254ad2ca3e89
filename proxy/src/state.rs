//! What every part of a running proxy shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use phoenix_tls::TlsContext;
use phoenix_tls::endpoint::TransportSettings;
use tokio::sync::watch;

use crate::config::ProxyConfig;
use crate::connector::{Connector, PeerProtocol};
use crate::http::app::AppClients;
use crate::metrics::Metrics;
use crate::pool::Pool;

/// Shared state of one proxy.
#[derive(Debug)]
pub struct Shared {
    /// Config in force; `None` until the first snapshot. Loaded once per
    /// connection or stream, never per packet.
    pub config: ArcSwapOption<ProxyConfig>,
    /// Tells listeners and readiness that the config changed.
    pub config_changed: watch::Sender<u64>,
    /// Mesh root and our credentials.
    pub tls: TlsContext,
    /// QUIC transport settings.
    pub transport: TransportSettings,
    /// The one UDP endpoint: accepts peers and connects to them.
    pub endpoint: quinn::Endpoint,
    /// Peer connections carrying opaque TCP (tunnel streams).
    pub pool: Pool,
    /// Peer connections carrying HTTP (HTTP/3 request streams).
    pub http_pool: Pool,
    /// Pooled HTTP connections to the local app.
    pub app_clients: AppClients,
    /// Each service's retry budget.
    pub retry_budgets: crate::http::retry::Budgets,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Source of connection ids for logs and headers.
    next_connection_id: AtomicU64,
    /// Tunnelled connections in progress, for draining on shutdown.
    pub active: watch::Sender<usize>,
    /// Set when the proxy starts draining: HTTP connections then say
    /// GOAWAY (HTTP/2 to apps, HTTP/3 to peers) and end once their
    /// requests in flight have.
    pub draining: watch::Sender<bool>,
    /// The pod's own addresses (`--pod-ips`): where a meshed client may
    /// reach a port no service lists.
    pub pod_ips: Vec<std::net::IpAddr>,
    /// What peers may speak to this proxy ([`INBOUND_ALPN`] unless
    /// `--inbound-http3 false` makes it answer as an earlier version).
    pub inbound_alpn: &'static [&'static [u8]],
    /// The largest request head an app may send (`--max-header-bytes`).
    pub max_header_bytes: usize,
    /// The UDP flows of every peer connection, by connection.
    pub udp_demuxes: crate::udp::demux::Demuxes,
    /// UDP flows one peer connection may hold open here
    /// (`--max-udp-flows-per-peer`).
    pub max_udp_flows_per_peer: usize,
}

/// The ALPN protocols the inbound endpoint offers: HTTP/3 and the tunnel
/// (opaque TCP), each on a connection of its own. rustls picks the first
/// of these the client offers, so HTTP/3 comes first: an HTTP connection
/// offers both (the tunnel for peers from before HTTP/3), a tunnel
/// connection only the tunnel.
pub const INBOUND_ALPN: &[&[u8]] = &[
    phoenix_api::control::ALPN_HTTP3,
    phoenix_api::control::ALPN_TUNNEL,
];
/// The ALPN protocols of a proxy from before HTTP/3.
pub const TUNNEL_ONLY_ALPN: &[&[u8]] = &[phoenix_api::control::ALPN_TUNNEL];

impl Shared {
    /// Builds the shared state around a bound endpoint.
    pub fn new(
        tls: TlsContext,
        transport: TransportSettings,
        endpoint: quinn::Endpoint,
        metrics: Arc<Metrics>,
    ) -> Self {
        let connector = |protocol| {
            Connector::new(
                tls.clone(),
                transport.clone(),
                endpoint.clone(),
                metrics.clone(),
                protocol,
            )
        };
        let pool = Pool::new(connector(PeerProtocol::Tunnel));
        let http_pool = Pool::new(connector(PeerProtocol::Http3));
        Self {
            config: ArcSwapOption::empty(),
            config_changed: watch::channel(0).0,
            tls,
            transport,
            endpoint,
            pool,
            http_pool,
            app_clients: AppClients::default(),
            retry_budgets: Default::default(),
            metrics,
            next_connection_id: AtomicU64::new(rand_seed()),
            active: watch::channel(0).0,
            draining: watch::channel(false).0,
            pod_ips: Vec::new(),
            inbound_alpn: INBOUND_ALPN,
            max_header_bytes: crate::connector::MAX_APP_HEADER_BYTES,
            udp_demuxes: Default::default(),
            max_udp_flows_per_peer: 4096,
        }
    }

    /// A fresh connection id.
    pub fn connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Installs a validated config for every later connection.
    pub fn install(&self, config: ProxyConfig) {
        let version = config.version;
        if let Some(pem) = &config.mesh.trust_bundle {
            // Validated with the config; a failure here would leave the
            // previous roots, which is the safe side.
            match self.tls.set_roots(pem) {
                Ok(true) => {
                    let roots = pem.matches("-----BEGIN CERTIFICATE-----").count();
                    tracing::info!(roots, "trust bundle updated");
                    self.metrics.trust_roots.set(roots as i64);
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::error!(%error, "trust bundle refused; keeping the previous roots")
                }
            }
        }
        self.metrics.config_version.set(version as i64);
        // Peers no upstream lists any more take no new stream and close
        // once their last one ends (their slots are then forgotten).
        let listed: std::collections::HashSet<(std::net::SocketAddr, &phoenix_api::SpiffeId)> =
            config
                .upstreams
                .values()
                .flat_map(|u| u.endpoints.iter().map(|e| (e.address, &e.identity)))
                .collect();
        for pool in [&self.pool, &self.http_pool] {
            pool.retain(|addr, identity| listed.contains(&(addr, identity)));
        }
        self.retry_budgets.retain(|service| {
            config
                .upstreams
                .get(service)
                .is_some_and(|u| u.retry.is_some())
        });
        self.config.store(Some(Arc::new(config)));
        self.config_changed.send_replace(version);
    }

    /// Resolves once the proxy is draining.
    pub async fn drained(&self) {
        let mut draining = self.draining.subscribe();
        let _ = draining.wait_for(|d| *d).await;
    }

    /// Counts a tunnelled connection in progress until the guard drops.
    pub fn track(self: &Arc<Self>) -> ActiveGuard {
        self.active.send_modify(|n| *n += 1);
        ActiveGuard {
            shared: self.clone(),
        }
    }
}

/// Marks one tunnelled connection in progress.
#[derive(Debug)]
pub struct ActiveGuard {
    shared: Arc<Shared>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.shared.active.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Connection ids start at a random point so two proxies' logs do not share ids.
fn rand_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (t ^ u64::from(std::process::id()).rotate_left(32)) & 0x0000_ffff_ffff_0000
}
