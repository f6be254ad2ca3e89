//! Making one mutually authenticated QUIC connection to a peer proxy.
//!
//! The pool is built with a connector and knows nothing else of the proxy:
//! it asks for a connection to an address and identity and gets one, or a
//! classified failure (already counted and logged). Tests build a pool
//! around a connector of their own endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use phoenix_api::SpiffeId;
use phoenix_api::control::ALPN_TUNNEL;
use phoenix_tls::TlsContext;
use phoenix_tls::endpoint::TransportSettings;
use phoenix_tls::establish;
use phoenix_tls::handshake::TlsPolicy;

use crate::metrics::{Metrics, Side};
use crate::pool::{ConnectError, PeerConn};

/// Everything a tunnel connection needs: our TLS context, transport
/// settings, the UDP endpoint, and where handshakes are counted.
#[derive(Debug, Clone)]
pub struct Connector {
    tls: TlsContext,
    transport: TransportSettings,
    endpoint: quinn::Endpoint,
    metrics: Arc<Metrics>,
}

impl Connector {
    /// A connector dialling from `endpoint`.
    pub fn new(
        tls: TlsContext,
        transport: TransportSettings,
        endpoint: quinn::Endpoint,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            tls,
            transport,
            endpoint,
            metrics,
        }
    }

    /// Where connection gauges are kept.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Connects to the proxy at `addr`, which must present `identity`,
    /// under `policy`; the handshake may take `timeout`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        identity: &SpiffeId,
        policy: &TlsPolicy,
        timeout: Duration,
    ) -> Result<PeerConn, ConnectError> {
        let (config, lease) = self.tls.client(
            policy,
            identity.clone(),
            ALPN_TUNNEL,
            true,
            self.transport.client_transport(),
        )?;
        let connecting = self.endpoint.connect_with(config, addr, "peer.phoenix")?;
        let recorder = self.metrics.handshakes(Side::client);
        match establish::connect(connecting, lease, tokio::time::sleep(timeout), &recorder).await {
            Ok(established) => {
                tracing::debug!(peer = %addr, %identity, kx_group = established.kx_group, "tunnel connected");
                Ok(PeerConn::new(established.conn, established.kx_group))
            }
            Err(failed) => {
                tracing::debug!(peer = %addr, %identity, reason = failed.reason.as_str(), error = ?failed.error, "tunnel handshake failed");
                Err(ConnectError::Handshake(failed.reason))
            }
        }
    }
}
