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
use phoenix_api::snapshot::Snapshot;
use phoenix_tls::TlsContext;
use phoenix_tls::endpoint::TransportSettings;
use phoenix_tls::frames::ReadFrameError;
use phoenix_tls::handshake::{ClientAuth, HandshakeFailure, TlsPolicy, peer_identity};
use phoenix_tls::kx::group_name;

use crate::ca::Ca;
use crate::hub::Hub;
use crate::metrics::{IssueLabels, Metrics, PushLabels};

/// How long a client has to send its request on a new stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the mesh comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The mesh file and bootstrap tokens.
    File(Arc<Hub>),
    /// The cluster, and ServiceAccount tokens.
    #[cfg(feature = "kubernetes")]
    Kubernetes(Arc<crate::k8s::run::KubeSource>),
}

impl Source {
    fn tls_policy(&self) -> TlsPolicy {
        match self {
            Source::File(hub) => {
                let mesh = hub.mesh();
                TlsPolicy {
                    key_exchange: mesh.key_exchange,
                    cipher_suites: mesh.cipher_suites.clone(),
                }
            }
            #[cfg(feature = "kubernetes")]
            Source::Kubernetes(k) => {
                let mesh = k.live.mesh();
                TlsPolicy {
                    key_exchange: mesh.settings.key_exchange,
                    cipher_suites: mesh.settings.cipher_suites,
                }
            }
        }
    }
}

/// A refused certificate request: metric label, code, message.
struct Refusal {
    label: &'static str,
    code: ErrorCode,
    message: String,
}

/// What the server needs.
#[derive(Debug)]
pub struct Server {
    /// Where the mesh comes from.
    pub source: Source,
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
            self.transport.server_transport(),
        ) else {
            incoming.refuse();
            return;
        };
        // A peer with no group in common fails inside `accept_with`.
        let handshake = match incoming.accept_with(Arc::new(config)) {
            Ok(connecting) => connecting.await,
            Err(e) => Err(e),
        };
        let conn = match handshake {
            Ok(c) => c,
            Err(e) => {
                let reason = HandshakeFailure::classify(&e);
                self.metrics.handshake("none", "failure");
                tracing::warn!(reason = reason.as_str(), error = %e, "control handshake failed");
                return;
            }
        };
        let kx = lease.negotiated().map(group_name).unwrap_or("unknown");
        drop(lease);
        self.metrics.handshake(kx, "success");
        let client = peer_identity(&conn);
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
        let (identity, lifetime) = match self.authenticate(token).await {
            Ok(found) => found,
            Err(refusal) => {
                count(refusal.label);
                tracing::warn!(reason = refusal.label, message = %refusal.message, "certificate refused");
                return error_response(refusal.code, refusal.message);
            }
        };
        match self.ca.load().issue(csr_pem, &identity, lifetime) {
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
                    _ => "invalid_csr",
                });
                tracing::warn!(%identity, %error, "certificate refused");
                error_response(ErrorCode::InvalidCsr, format!("{error}"))
            }
        }
    }

    /// The identity `token` proves, and the lifetime of its certificate.
    async fn authenticate(&self, token: &str) -> Result<(SpiffeId, Duration), Refusal> {
        match &self.source {
            Source::File(hub) => {
                let tokens = hub.tokens();
                let mesh = hub.mesh();
                match tokens.workload(token).and_then(|w| mesh.workloads.get(w)) {
                    Some(w) => Ok((w.identity.clone(), mesh.certificate_lifetime)),
                    None => Err(Refusal {
                        label: "invalid_token",
                        code: ErrorCode::InvalidToken,
                        message: "the bootstrap token is unknown; start the proxy through `phoenix up` or pass the token written for its workload".into(),
                    }),
                }
            }
            #[cfg(feature = "kubernetes")]
            Source::Kubernetes(k) => {
                let reviewed = k.reviewer.review(token).await.map_err(|e| Refusal {
                    label: e.metric_label(),
                    code: match e {
                        crate::k8s::token_review::ReviewError::Api(_) => ErrorCode::Internal,
                        _ => ErrorCode::InvalidToken,
                    },
                    message: phoenix_runtime::process::error_chain(&e),
                })?;
                let mesh = k.live.mesh();
                let identity = SpiffeId::workload(
                    &mesh.settings.trust_domain,
                    &reviewed.namespace,
                    &reviewed.service_account,
                )
                .map_err(|e| Refusal {
                    label: "invalid_token",
                    code: ErrorCode::InvalidToken,
                    message: format!("the token's ServiceAccount is not a valid identity: {e}"),
                })?;
                Ok((identity, mesh.certificate_lifetime))
            }
        }
    }

    async fn subscription(
        &self,
        conn: quinn::Connection,
        client: SpiffeId,
        wire_version: u32,
        inbound: std::net::SocketAddr,
        send: quinn::SendStream,
    ) {
        match &self.source {
            Source::File(hub) => {
                self.file_subscription(hub, conn, client, wire_version, inbound, send)
                    .await
            }
            #[cfg(feature = "kubernetes")]
            Source::Kubernetes(k) => {
                self.kube_subscription(k, conn, client, wire_version, inbound, send)
                    .await
            }
        }
    }

    #[cfg(feature = "kubernetes")]
    async fn kube_subscription(
        &self,
        k: &crate::k8s::run::KubeSource,
        conn: quinn::Connection,
        client: SpiffeId,
        wire_version: u32,
        inbound: std::net::SocketAddr,
        mut send: quinn::SendStream,
    ) {
        let Some((namespace, service_account)) = client.namespace_and_service_account() else {
            let _ = reply(
                &mut send,
                &error_response(
                    ErrorCode::UnknownWorkload,
                    format!("{client} is not a workload identity (spiffe://<td>/ns/<ns>/sa/<sa>)"),
                ),
            )
            .await;
            return;
        };
        // The pod is found by the address the proxy reports (its pod IP;
        // a proxy bound to 0.0.0.0 is taken at the address it connects
        // from) and must run as the certificate's identity. A proxy outside
        // the cluster matches no pod: it gets the Services, no inbound.
        let ip = if inbound.ip().is_unspecified() {
            conn.remote_address().ip().to_canonical()
        } else {
            inbound.ip()
        };
        let ip = Some(ip).filter(|ip| !ip.is_loopback());
        let mut subscription = k.live.subscribe(namespace, service_account, ip);
        self.metrics.subscribers.inc();
        tracing::info!(%client, %inbound, wire_version, "proxy subscribed");
        let mut changes = k.live.changes();
        loop {
            changes.borrow_and_update();
            if let Some((frame, delta)) = k.live.next_frame(&mut subscription, wire_version)
                && self.push_frame(&mut send, &frame, delta).await.is_err()
            {
                break;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                _ = conn.closed() => break,
                _ = send.stopped() => break,
            }
        }
        k.live.unsubscribe(subscription);
        self.metrics.subscribers.dec();
        tracing::info!(%client, "proxy unsubscribed");
    }

    /// Sends one config message, shaped for the proxy's wire version, and
    /// counts it.
    async fn push(
        &self,
        send: &mut quinn::SendStream,
        message: &Response,
        wire_version: u32,
    ) -> Result<(), ()> {
        let frame = Compat::CURRENT.encode_response(message, wire_version).map_err(|error| {
            tracing::error!(error = %phoenix_runtime::process::error_chain(&error), "cannot encode a config message; the proxy resubscribes");
        })?;
        self.push_frame(send, &frame, matches!(message, Response::Delta(_)))
            .await
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

    async fn file_subscription(
        &self,
        hub: &Hub,
        conn: quinn::Connection,
        client: SpiffeId,
        wire_version: u32,
        inbound: std::net::SocketAddr,
        mut send: quinn::SendStream,
    ) {
        let Some(workload) = hub
            .mesh()
            .workload_by_identity(&client)
            .map(|w| w.name.clone())
        else {
            let _ = reply(
                &mut send,
                &error_response(
                    ErrorCode::UnknownWorkload,
                    format!("no workload has identity {client}"),
                ),
            )
            .await;
            return;
        };
        // A proxy behind NAT or on 0.0.0.0 reports an unspecified address;
        // use the address its connection comes from instead.
        let inbound = if inbound.ip().is_unspecified() {
            std::net::SocketAddr::new(conn.remote_address().ip().to_canonical(), inbound.port())
        } else {
            inbound
        };
        let registration = hub.register(&workload, inbound);
        self.metrics.subscribers.inc();
        tracing::info!(%workload, %inbound, wire_version, "proxy subscribed");
        let mut changes = hub.subscribe();
        let mut last: Option<Snapshot> = None;
        loop {
            changes.borrow_and_update();
            let Some(next) = hub.snapshot_for(&workload) else {
                let _ = reply(
                    &mut send,
                    &error_response(
                        ErrorCode::UnknownWorkload,
                        format!("workload {workload} was removed"),
                    ),
                )
                .await;
                break;
            };
            let message = match &last {
                None => Some(Response::Snapshot(next.clone())),
                Some(prev) if Compat::CURRENT.sends_deltas(wire_version) => {
                    prev.diff(&next).map(Response::Delta)
                }
                Some(prev) => {
                    (prev.resources != next.resources).then(|| Response::Snapshot(next.clone()))
                }
            };
            if let Some(message) = message {
                if self.push(&mut send, &message, wire_version).await.is_err() {
                    break;
                }
                last = Some(next);
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                _ = conn.closed() => break,
                _ = send.stopped() => break,
            }
        }
        self.metrics.subscribers.dec();
        hub.unregister(registration);
        tracing::info!(%workload, "proxy unsubscribed");
    }
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
