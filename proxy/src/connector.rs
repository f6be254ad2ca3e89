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
use phoenix_api::control::{ALPN_HTTP3, ALPN_TUNNEL};
use phoenix_tls::TlsContext;
use phoenix_tls::endpoint::TransportSettings;
use phoenix_tls::establish;
use phoenix_tls::handshake::TlsPolicy;

use crate::metrics::{Metrics, Side};
use crate::pool::{ConnectError, PeerConn};

/// What a pool's connections carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerProtocol {
    /// Opaque TCP connections, one tunnel stream each (`phoenix-tunnel/1`).
    Tunnel,
    /// HTTP requests, one HTTP/3 request stream each (`h3`). A connection
    /// of its own beside the tunnel's: h3 takes every bidirectional stream
    /// of its connection for a request.
    Http3,
}

/// The largest header section an HTTP/3 peer may send us (request or
/// response head, QPACK-decoded): the largest an app may send
/// (`--max-header-bytes` is at most [`MAX_APP_HEADER_BYTES`]) and room for
/// the headers the mesh adds.
pub const MAX_HEADER_BYTES: u64 = MAX_APP_HEADER_BYTES as u64 + 8 * 1024;

/// The most `--max-header-bytes` may allow.
pub const MAX_APP_HEADER_BYTES: usize = 64 * 1024;

/// Everything a peer connection needs: our TLS context, transport
/// settings, the UDP endpoint, what it carries, and where handshakes are
/// counted.
#[derive(Debug, Clone)]
pub struct Connector {
    tls: TlsContext,
    transport: TransportSettings,
    endpoint: quinn::Endpoint,
    metrics: Arc<Metrics>,
    protocol: PeerProtocol,
}

impl Connector {
    /// A connector dialling from `endpoint` for `protocol`.
    pub fn new(
        tls: TlsContext,
        transport: TransportSettings,
        endpoint: quinn::Endpoint,
        metrics: Arc<Metrics>,
        protocol: PeerProtocol,
    ) -> Self {
        Self {
            tls,
            transport,
            endpoint,
            metrics,
            protocol,
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
        // An HTTP connection offers the tunnel too: a peer from before
        // HTTP/3 (a rolling upgrade) picks it, and requests then go to it
        // as HTTP/1.1 or HTTP/2 inside tunnel streams.
        let (offered, transport): (&[&[u8]], _) = match self.protocol {
            PeerProtocol::Tunnel => (
                &[ALPN_TUNNEL],
                self.transport.client_transport_to(Some(addr.ip())),
            ),
            PeerProtocol::Http3 => (
                &[ALPN_HTTP3, ALPN_TUNNEL],
                self.transport.http3_client_transport_to(Some(addr.ip())),
            ),
        };
        let (config, lease) =
            self.tls
                .client(policy, identity.clone(), offered, true, transport)?;
        // A name per peer: the client keeps each peer's address-validation
        // tokens under it (the verifier checks the SPIFFE ID, not names).
        let connecting = self.endpoint.connect_with(
            config,
            addr,
            &phoenix_tls::tokens::peer_server_name(addr),
        )?;
        let recorder = self.metrics.handshakes(Side::client);
        match establish::connect(connecting, lease, tokio::time::sleep(timeout), &recorder).await {
            Ok(established) => {
                tracing::debug!(peer = %addr, %identity, kx_group = established.kx_group, protocol = ?self.protocol, "peer connected");
                let mut peer = PeerConn::new(established.conn, established.kx_group);
                if self.protocol == PeerProtocol::Http3 {
                    if alpn(&peer.conn).as_deref() == Some(ALPN_HTTP3) {
                        peer.http3 = Some(http3_client(&peer.conn).await?);
                    } else {
                        tracing::info!(peer = %addr, %identity, "peer speaks no HTTP/3 (an earlier version): HTTP goes to it inside tunnel streams");
                    }
                }
                Ok(peer)
            }
            Err(failed) => {
                tracing::debug!(peer = %addr, %identity, reason = failed.reason.as_str(), error = ?failed.error, "tunnel handshake failed");
                Err(ConnectError::Handshake(failed.reason))
            }
        }
    }
}

/// The ALPN protocol the handshake agreed on.
pub(crate) fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// Starts HTTP/3 on `conn` and drives it in a task of its own (SETTINGS,
/// QPACK streams, GOAWAY) until the connection closes.
async fn http3_client(conn: &quinn::Connection) -> Result<crate::pool::Http3Sender, ConnectError> {
    let (mut driver, sender) = h3::client::builder()
        .max_field_section_size(MAX_HEADER_BYTES)
        .build(h3_quinn::Connection::new(conn.clone()))
        .await
        .map_err(ConnectError::Http3)?;
    tokio::spawn(async move {
        let error = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        if !error.is_h3_no_error() {
            tracing::debug!(%error, "HTTP/3 peer connection ended");
        }
    });
    Ok(sender)
}
