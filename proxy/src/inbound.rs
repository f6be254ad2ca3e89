//! Inbound: peers' QUIC connections arrive on the proxy's UDP endpoint; each
//! stream names a service, is checked against that service's allow-list
//! (per stream, so a policy change applies to the next stream), and is
//! connected to the local app.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use phoenix_api::SpiffeId;
use phoenix_api::control::ALPN_HTTP3;
use phoenix_api::header::{self, ConnectResponse, Status};
use phoenix_api::service::Transport;
use phoenix_tls::establish::{self, Established};
use phoenix_tls::handshake::ClientAuth;
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::config::{InboundConfig, ProxyConfig};
use crate::metrics::{Direction, GaugeGuard, QuicLabels, Side, StreamFailure};
use crate::relay::{self, Start};
use crate::state::Shared;

/// What an inbound stream gets.
#[derive(Debug, PartialEq, Eq)]
pub enum InboundRoute<'a> {
    /// Connect to the app at `target` for `service`.
    Connect {
        /// The service.
        service: &'a str,
        /// Where the app listens.
        target: SocketAddr,
    },
    /// This pod serves nothing there.
    NoRoute,
    /// `service`'s allow-list does not name the client.
    Denied {
        /// The first service that refuses.
        service: &'a str,
    },
}

/// The route of a stream from `client` (pure: tested without sockets).
///
/// By name (the client knew the service), under that service's allow-list.
/// Or by the pod address and port the client's app dialled (intercepted):
/// a port some services serve admits the client when one of them does
/// (the client could name that one: Kubernetes policies are per Service,
/// and a port two Services expose is as open as the more open one); a port
/// no service lists (an app's metrics port, the proxy's own admin port, a
/// headless StatefulSet peer port) is reached at one of the pod's own
/// addresses (`pod_ips`) by any identity of the trust domain, as it is
/// reachable in plain TCP without a mesh. Never anything else: not
/// loopback, not another host.
pub fn route<'a>(
    config: &'a ProxyConfig,
    service: Option<&str>,
    original_dst: Option<SocketAddr>,
    client: &SpiffeId,
    pod_ips: &[IpAddr],
) -> InboundRoute<'a> {
    let reached: Vec<(&'a str, &'a InboundConfig, SocketAddr)> = match (service, original_dst) {
        (Some(name), _) => config
            .inbound
            .get_key_value(name)
            .map(|(s, i)| (s.as_str(), i, i.target))
            .into_iter()
            .collect(),
        // Intercepted streams are TCP: a UDP service on the same port is
        // another service.
        (None, Some(dst)) => config
            .inbound
            .iter()
            .filter(|(s, _)| s.transport() == Transport::Tcp)
            .filter_map(|(s, i)| Some((s.as_str(), i, i.reached_at(dst)?)))
            .collect(),
        (None, None) => Vec::new(),
    };
    let admits = |i: &InboundConfig| match &i.allow {
        Some(allow) => allow.admits(client),
        None => client.trust_domain() == config.mesh.trust_domain,
    };
    let in_mesh = client.trust_domain() == config.mesh.trust_domain;
    match (reached.iter().find(|(_, i, _)| admits(i)), reached.first()) {
        (Some(&(service, _, target)), _) => InboundRoute::Connect { service, target },
        (None, Some(&(service, ..))) => InboundRoute::Denied { service },
        (None, None) => match original_dst {
            Some(dst) if service.is_none() && pod_ips.contains(&dst.ip().to_canonical()) => {
                if in_mesh {
                    InboundRoute::Connect {
                        service: UNLISTED,
                        target: dst,
                    }
                } else {
                    InboundRoute::Denied { service: UNLISTED }
                }
            }
            _ => InboundRoute::NoRoute,
        },
    }
}

/// The `service` label of streams to a port of this pod no service lists.
pub const UNLISTED: &str = "unlisted";

/// How long a peer has to send a complete header on a new stream.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts peer connections until the endpoint closes.
pub async fn serve(shared: Arc<Shared>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        let shared = shared.clone();
        let span = tracing::info_span!(
            "peer",
            remote = %incoming.remote_address(),
            client = tracing::field::Empty
        );
        tokio::spawn(accept(shared, incoming).instrument(span));
    }
}

async fn accept(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let policy = shared
        .config
        .load()
        .as_ref()
        .map(|c| c.mesh.tls.clone())
        .unwrap_or_default();
    let (config, lease) = match shared.tls.server(
        &policy,
        ClientAuth::Required,
        shared.inbound_alpn,
        shared.transport.server_transport_for(Some(remote.ip())),
    ) {
        Ok(c) => c,
        Err(error) => {
            tracing::error!(%error, "cannot build tunnel TLS config");
            incoming.refuse();
            return;
        }
    };
    let recorder = shared.metrics.handshakes(Side::server);
    let established = match establish::accept(
        incoming,
        config,
        lease,
        ClientAuth::Required,
        &recorder,
    )
    .await
    {
        Ok(established) => established,
        Err(failed) => {
            // Counted by reason; a client that cannot handshake must
            // not be able to fill the log.
            tracing::debug!(%remote, reason = failed.reason.as_str(), error = ?failed.error, "inbound handshake failed");
            return;
        }
    };
    let Established {
        conn,
        kx_group,
        sig_scheme,
        peer,
    } = established;
    let Some(client) = peer else {
        return;
    };
    tracing::Span::current().record("client", tracing::field::display(&client));
    tracing::debug!(%remote, client = %client, kx_group, sig_scheme, "peer connected");
    let _open = GaugeGuard::new(
        shared
            .metrics
            .quic_connections_open
            .get_or_create(&QuicLabels {
                direction: Direction::inbound,
            })
            .clone(),
    );
    let client = Arc::new(client);
    if crate::connector::alpn(&conn).as_deref() == Some(ALPN_HTTP3) {
        return crate::http::inbound::serve(shared, conn, client).await;
    }
    // Every tunnel connection's datagrams are read from the start, so a
    // peer's datagram for no flow of this connection is counted, never left
    // in quinn's buffer unseen.
    let _demux = shared.udp_demuxes.of(
        &conn,
        &shared.metrics,
        Direction::inbound,
        &client.to_string(),
    );
    let open = Arc::new(AtomicU64::new(0));
    let mut limit = u64::from(shared.transport.initial_streams);
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let now_open = open.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(next) = shared.transport.next_stream_limit(now_open, limit) {
                    limit = next;
                    conn.set_max_concurrent_bi_streams(
                        quinn::VarInt::from_u64(limit).unwrap_or(quinn::VarInt::MAX),
                    );
                    tracing::debug!(%remote, limit, "raised the peer's stream limit");
                }
                let shared = shared.clone();
                let client = client.clone();
                let open = open.clone();
                let conn = conn.clone();
                tokio::spawn(
                    async move {
                        let _active = shared.track();
                        stream(&shared, &conn, &client, send, recv).await;
                        open.fetch_sub(1, Ordering::Relaxed);
                    }
                    .in_current_span(),
                );
            }
            Err(error) => {
                tracing::debug!(%remote, %error, "peer connection ended");
                return;
            }
        }
    }
}

/// The pod's addresses: given (`--pod-ips`), and those its services are
/// served at.
pub(crate) fn pod_ips(shared: &Shared, config: &ProxyConfig) -> Vec<IpAddr> {
    let mut pod_ips = shared.pod_ips.clone();
    for i in config.inbound.values() {
        pod_ips.extend(i.other_ips.iter().copied());
        let ip = i.target.ip();
        if !ip.is_unspecified() && !ip.is_loopback() {
            pod_ips.push(ip);
        }
    }
    pod_ips
}

async fn stream(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    client: &SpiffeId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let _streams = GaugeGuard::new(
        shared
            .metrics
            .quic_streams_open
            .get_or_create(&QuicLabels {
                direction: Direction::inbound,
            })
            .clone(),
    );
    let (request, initial) = match read_request(&mut recv).await {
        Ok(r) => r,
        Err(error) => {
            if matches!(error, RequestError::Header(_)) {
                shared
                    .metrics
                    .stream_failed(Direction::inbound, StreamFailure::bad_request);
                tracing::debug!(%client, error = %phoenix_runtime::process::error_chain(&error), "bad tunnel header; resetting stream");
            } else {
                tracing::debug!(%client, %error, "stream ended before its tunnel header; resetting");
            }
            let _ = send.reset(relay::RESET_CODE);
            let _ = recv.stop(relay::RESET_CODE);
            return;
        }
    };
    let id = request.connection_id;
    let Some(config) = shared.config.load_full() else {
        return respond_and_close(shared, send, recv, Status::NoRoute).await;
    };
    let pod_ips = pod_ips(shared, &config);
    let (service, target) = match route(
        &config,
        request
            .service
            .as_ref()
            .map(phoenix_api::ServiceName::as_str),
        request.original_dst,
        client,
        &pod_ips,
    ) {
        InboundRoute::Connect { service, target } => (service, target),
        InboundRoute::NoRoute => {
            let asked = request
                .service
                .as_ref()
                .map(phoenix_api::ServiceName::as_str)
                .unwrap_or_default();
            tracing::info!(%client, service = asked, original_dst = ?request.original_dst, connection = id, "no such service here");
            return respond_and_close(shared, send, recv, Status::NoRoute).await;
        }
        InboundRoute::Denied { service } => {
            tracing::debug!(%client, service, connection = id, "denied by the service's allow-list");
            shared.metrics.denied(service, client);
            return respond_and_close(shared, send, recv, Status::Denied).await;
        }
    };
    if let Some(udp) = request
        .service
        .as_ref()
        .filter(|s| s.transport() == Transport::Udp)
    {
        let flow = crate::udp::inbound::Accepted {
            service,
            port: udp.port(),
            target,
            id,
        };
        return crate::udp::inbound::serve(shared, conn, client, flow, send, recv).await;
    }
    let tcp =
        match tokio::time::timeout(config.mesh.connect_timeout, TcpStream::connect(target)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(error)) => {
                tracing::debug!(service, %target, connection = id, %error, "upstream refused");
                return respond_and_close(shared, send, recv, Status::UpstreamRefused).await;
            }
            Err(_) => {
                tracing::info!(service, %target, connection = id, "upstream connect timed out");
                return respond_and_close(shared, send, recv, Status::UpstreamRefused).await;
            }
        };
    let _ = tcp.set_nodelay(true);
    let mut response = Vec::with_capacity(16);
    ConnectResponse {
        status: Status::Connected,
    }
    .encode(&mut response);
    if send.write_all(&response).await.is_err() {
        relay::abort(&tcp, &mut send, &mut recv);
        return;
    }
    shared.metrics.stream(Direction::inbound, Status::Connected);
    let counters = shared.metrics.tcp(Direction::inbound, &client.to_string());
    tracing::debug!(%client, service, connection = id, "stream connected");
    if let Err(error) =
        relay::relay(tcp, send, recv, Start::Payload(initial), &counters, None).await
    {
        tracing::debug!(connection = id, %error, "connection ended abnormally");
    }
}

/// Why a stream's header could not be read.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("malformed header")]
    Header(#[from] header::HeaderError),
    #[error("stream ended or failed before a complete header")]
    Stream,
    #[error("no complete header within {HEADER_TIMEOUT:?}")]
    Timeout,
}

async fn read_request(
    recv: &mut quinn::RecvStream,
) -> Result<(header::ConnectRequest, Bytes), RequestError> {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + HEADER_TIMEOUT;
    loop {
        if let Some((req, used)) = header::decode_request(&buf)? {
            return Ok((req, Bytes::copy_from_slice(&buf[used..])));
        }
        let chunk = tokio::time::timeout_at(deadline, recv.read_chunk(header::MAX_BODY_LEN, true))
            .await
            .map_err(|_| RequestError::Timeout)?
            .map_err(|_| RequestError::Stream)?
            .ok_or(RequestError::Stream)?;
        buf.extend_from_slice(&chunk.bytes);
    }
}

pub(crate) async fn respond_and_close(
    shared: &Shared,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    status: Status,
) {
    shared.metrics.stream(Direction::inbound, status);
    let mut response = Vec::with_capacity(16);
    ConnectResponse { status }.encode(&mut response);
    let _ = send.write_all(&response).await;
    let _ = send.finish();
    let _ = recv.stop(relay::RESET_CODE);
    // Let the response reach the peer before the stream state goes away.
    let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
}
