//! The control server: certificates and config over PQ TLS on QUIC.
//!
//! QUIC rather than gRPC over HTTP/2: proxies already carry a tuned quinn
//! stack with the PQ provider and SPIFFE verification, so the control
//! channel reuses it whole (no second TLS stack, no HTTP/2 or protobuf
//! dependencies in the proxy), and one QUIC stream per request gives the
//! same multiplexing.
//!
//! Client certificates are optional at the TLS layer because a proxy asks
//! for its first certificate before it has one; subscribing requires one.

use std::sync::Arc;
use std::time::Duration;

use phoenix_api::SpiffeId;
use phoenix_api::compat::Compat;
use phoenix_api::control::{
    self, ALPN_CONTROL, ErrorCode, MIN_WIRE_VERSION, Request, Response, WIRE_VERSION,
};
use phoenix_api::frame::{Direction, FrameDecoder};
use phoenix_api::tls_policy::AuthPolicy;
use phoenix_tls::TlsContext;
use phoenix_tls::endpoint::TransportSettings;
use phoenix_tls::establish;
use phoenix_tls::frames::ReadFrameError;
use phoenix_tls::handshake::ClientAuth;

use crate::ca::Ca;
use crate::metrics::{IssueLabels, Metrics, PushLabels};
use crate::source::MeshSource;

/// The first wire version whose proxies enforce `authPolicy: pq-only`.
pub const PQ_AUTH_WIRE_VERSION: u32 = 8;

/// How long a client has to send its request on a new stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server needs.
pub struct Server {
    /// Where the mesh comes from.
    pub source: Arc<dyn MeshSource>,
    /// The CA.
    /// The root that signs now (swapped when a rotation activates).
    pub ca: Arc<arc_swap::ArcSwap<Ca>>,
    /// Our TLS context (root + our serving certificate).
    pub tls: TlsContext,
    /// Transport settings.
    pub transport: TransportSettings,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

impl Server {
    /// Accepts connections on `endpoint` until it closes.
    pub async fn serve(self: Arc<Self>, endpoint: quinn::Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            let server = self.clone();
            tokio::spawn(async move { server.connection(incoming).await });
        }
    }

    async fn connection(self: Arc<Self>, incoming: quinn::Incoming) {
        let policy = self.source.tls_policy();
        let Ok((config, lease)) = self.tls.server(
            &policy,
            ClientAuth::Optional,
            &[ALPN_CONTROL],
            self.transport
                .server_transport_for(Some(incoming.remote_address().ip())),
        ) else {
            incoming.refuse();
            return;
        };
        let established = match establish::accept(
            incoming,
            config,
            lease,
            ClientAuth::Optional,
            &*self.metrics,
        )
        .await
        {
            Ok(established) => established,
            Err(failed) => {
                // Counted by reason; a client that cannot handshake must not
                // be able to fill the log.
                tracing::debug!(reason = failed.reason.as_str(), error = ?failed.error, "control handshake failed");
                return;
            }
        };
        let conn = established.conn;
        let client = established.peer;
        while let Ok((send, recv)) = conn.accept_bi().await {
            let server = self.clone();
            let client = client.clone();
            let conn = conn.clone();
            tokio::spawn(async move { server.stream(conn, client, send, recv).await });
        }
    }

    async fn stream(
        &self,
        conn: quinn::Connection,
        client: Option<SpiffeId>,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let request = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut recv)).await {
            Ok(Ok(Some(r))) => r,
            Ok(Err(error)) => {
                let _ = reply(
                    &mut send,
                    &error_response(
                        ErrorCode::BadRequest,
                        format!("cannot read request: {error}"),
                    ),
                )
                .await;
                return;
            }
            _ => return,
        };
        match request {
            Request::IssueCertificate { token, csr_pem } => {
                let answer = self.issue(token.expose(), &csr_pem).await;
                let _ = reply(&mut send, &answer).await;
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
            }
            Request::Subscribe {
                wire_version,
                inbound,
            } => {
                let Some(client) = client else {
                    let _ = reply(
                        &mut send,
                        &error_response(
                            ErrorCode::Unauthenticated,
                            "subscribing needs a client certificate; obtain one with issueCertificate first".into(),
                        ),
                    )
                    .await;
                    return;
                };
                let auth = self.source.tls_policy().auth_policy;
                if auth == AuthPolicy::PqOnly && wire_version < PQ_AUTH_WIRE_VERSION {
                    // Not additive: a proxy that ignores `authPolicy` would
                    // accept classical peers, so it gets no config at all.
                    let _ = reply(&mut send, &pq_only_refusal(wire_version)).await;
                    return;
                }
                if !Compat::CURRENT.serves(wire_version) {
                    let _ = reply(
                        &mut send,
                        &error_response(
                            ErrorCode::UnsupportedVersion,
                            format!(
                                "wire version {wire_version} is not served; this control plane serves {MIN_WIRE_VERSION} to {WIRE_VERSION}: upgrade the proxy"
                            ),
                        ),
                    )
                    .await;
                    return;
                }
                self.subscription(conn, client, wire_version, inbound, send)
                    .await;
            }
        }
    }

    async fn issue(&self, token: &str, csr_pem: &str) -> Response {
        let count = |result: &str| {
            self.metrics
                .certificates
                .get_or_create(&IssueLabels {
                    result: result.into(),
                })
                .inc();
        };
        let (identity, lifetime) = match self.source.authenticate(token).await {
            Ok(found) => found,
            Err(refusal) => {
                count(refusal.label);
                tracing::debug!(reason = refusal.label, message = %refusal.message, "certificate refused");
                return error_response(refusal.code, refusal.message);
            }
        };
        let auth = self.source.tls_policy().auth_policy;
        match self.ca.load().issue(csr_pem, &identity, lifetime, auth) {
            Ok(chain_pem) => {
                count("issued");
                tracing::info!(%identity, "certificate issued");
                Response::Certificate {
                    chain_pem,
                    identity: identity.to_string(),
                }
            }
            Err(error) => {
                count(match error {
                    crate::ca::CaError::IdentityMismatch { .. } => "identity_mismatch",
                    crate::ca::CaError::ClassicalKey { .. } => "classical_key",
                    _ => "invalid_csr",
                });
                tracing::debug!(%identity, %error, "certificate refused");
                error_response(ErrorCode::InvalidCsr, format!("{error}"))
            }
        }
    }

    /// Serves one subscription: the first message, then one per change
    /// that touches the proxy's view, until the proxy goes away.
    async fn subscription(
        &self,
        conn: quinn::Connection,
        client: SpiffeId,
        wire_version: u32,
        inbound: std::net::SocketAddr,
        mut send: quinn::SendStream,
    ) {
        let mut subscription = match self
            .source
            .subscribe(&client, inbound, conn.remote_address())
        {
            Ok(s) => s,
            Err(refusal) => {
                tracing::debug!(%client, reason = refusal.label, message = %refusal.message, "subscription refused");
                let _ = reply(&mut send, &error_response(refusal.code, refusal.message)).await;
                return;
            }
        };
        self.metrics.subscribers.inc();
        tracing::info!(%client, %inbound, wire_version, "proxy subscribed");
        let mut changes = subscription.changes();
        loop {
            changes.borrow_and_update();
            if wire_version < PQ_AUTH_WIRE_VERSION
                && self.source.tls_policy().auth_policy == AuthPolicy::PqOnly
            {
                // pq-only came into force while this proxy was subscribed:
                // it could not enforce it, so it gets nothing more.
                let _ = reply(&mut send, &pq_only_refusal(wire_version)).await;
                break;
            }
            match subscription.next_frame(wire_version) {
                Ok(Some((frame, delta))) => {
                    if self.push_frame(&mut send, &frame, delta).await.is_err() {
                        break;
                    }
                }
                Ok(None) => {}
                Err(refusal) => {
                    let _ = reply(&mut send, &error_response(refusal.code, refusal.message)).await;
                    break;
                }
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                _ = conn.closed() => break,
                _ = send.stopped() => break,
            }
        }
        drop(subscription);
        self.metrics.subscribers.dec();
        tracing::info!(%client, "proxy unsubscribed");
    }

    /// Sends one encoded config frame and counts it.
    async fn push_frame(
        &self,
        send: &mut quinn::SendStream,
        frame: &[u8],
        delta: bool,
    ) -> Result<(), ()> {
        send.write_all(frame).await.map_err(|_| ())?;
        let kind = if delta { "delta" } else { "snapshot" };
        self.metrics
            .config_pushes
            .get_or_create(&PushLabels { kind: kind.into() })
            .inc();
        self.metrics.config_push_bytes.inc_by(frame.len() as u64);
        Ok(())
    }
}

/// The answer to a proxy that cannot enforce `authPolicy: pq-only`.
fn pq_only_refusal(wire_version: u32) -> Response {
    error_response(
        ErrorCode::UnsupportedVersion,
        format!(
            "the mesh's authPolicy is pq-only, which proxies of wire version {wire_version} cannot enforce: upgrade the proxy (wire version {PQ_AUTH_WIRE_VERSION} or later)"
        ),
    )
}

fn error_response(code: ErrorCode, message: String) -> Response {
    Response::Error { code, message }
}

/// Reads a stream's request: `None` if the client finished the stream
/// without sending one. The request limit is small (the client may not be
/// authenticated yet) and checked from the length prefix; the body is held
/// only as it arrives.
async fn read_request(recv: &mut quinn::RecvStream) -> Result<Option<Request>, ReadFrameError> {
    let mut frames = FrameDecoder::new(Direction::Request);
    match phoenix_tls::frames::read_body(recv, &mut frames).await? {
        Some(body) => Ok(Some(control::decode_body(&body)?)),
        None => Ok(None),
    }
}

/// Writes one frame; returns its size.
async fn reply(send: &mut quinn::SendStream, msg: &Response) -> Result<usize, ()> {
    let frame = control::encode_frame(msg, Direction::Response).map_err(|_| ())?;
    send.write_all(&frame).await.map_err(|_| ())?;
    Ok(frame.len())
}
