//! Outbound: the app connects to a local listener per upstream service; each
//! TCP connection becomes one stream on the QUIC connection to a peer proxy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use phoenix_api::ServiceName;
use phoenix_api::header::{ConnectRequest, Status};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::balance;
use crate::config::{EndpointConfig, ProxyConfig, UpstreamConfig};
use crate::http::detect::{self, Carry, Prefixed};
use crate::metrics::{Direction, GaugeGuard, QuicLabels, StreamFailure};
use crate::relay::{self, Start};
use crate::state::Shared;

/// The outbound listeners currently bound, by service.
#[derive(Debug, Default)]
pub struct Listeners {
    bound: Mutex<BTreeMap<ServiceName, Bound>>,
    /// The UDP upstreams' listeners (their services end in `/udp`).
    udp: crate::udp::outbound::Listeners,
}

/// Closes the listeners in `bound` no longer `wanted` (or wanted at another
/// address) and returns those to bind: one reconcile step for TCP and UDP.
pub(crate) fn plan(
    bound: &Mutex<BTreeMap<ServiceName, Bound>>,
    wanted: &BTreeMap<&ServiceName, SocketAddr>,
) -> Vec<(ServiceName, SocketAddr)> {
    let mut bound = bound.lock().unwrap_or_else(PoisonError::into_inner);
    bound.retain(|service, b| wanted.get(service) == Some(&b.configured));
    wanted
        .iter()
        .filter(|(s, _)| !bound.contains_key(s.as_str()))
        .map(|(s, a)| ((*s).clone(), *a))
        .collect()
}

/// One bound listener (TCP here, UDP in `udp::outbound`): the address
/// configured, the one bound, and its task, aborted when it goes.
#[derive(Debug)]
pub(crate) struct Bound {
    pub(crate) configured: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) task: JoinHandle<()>,
}

impl Drop for Bound {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listeners {
    /// Binds listeners for new upstreams and closes those of removed ones.
    /// Connections already accepted are not touched.
    pub async fn reconcile(&self, shared: &Arc<Shared>, config: &ProxyConfig) {
        self.udp.reconcile(shared, config).await;
        let wanted: BTreeMap<&ServiceName, SocketAddr> = config
            .upstreams
            .iter()
            .filter(|(s, _)| s.transport() == phoenix_api::service::Transport::Tcp)
            .filter_map(|(s, u)| u.listen.map(|l| (s, l)))
            .collect();
        let to_bind = plan(&self.bound, &wanted);
        for (service, addr) in to_bind {
            match crate::listen::bind(addr) {
                Ok(listener) => {
                    let local = listener.local_addr().unwrap_or(addr);
                    tracing::info!(%service, listen = %local, "outbound listener bound");
                    let task = tokio::spawn(accept_loop(shared.clone(), service.clone(), listener));
                    self.bound
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(
                            service,
                            Bound {
                                configured: addr,
                                local,
                                task,
                            },
                        );
                }
                Err(error) => {
                    tracing::error!(%service, listen = %addr, %error, "cannot bind outbound listener");
                }
            }
        }
    }

    /// `(service, bound address)` of every listener, TCP and UDP.
    pub fn addresses(&self) -> Vec<(ServiceName, SocketAddr)> {
        let mut all: Vec<(ServiceName, SocketAddr)> = self
            .bound
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(s, b)| (s.clone(), b.local))
            .collect();
        all.extend(self.udp.local_addrs());
        all
    }

    /// Stops accepting (shutdown); open connections go on.
    pub fn close_all(&self) {
        self.bound
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.udp.close_all();
    }
}

async fn accept_loop(shared: Arc<Shared>, service: ServiceName, listener: TcpListener) {
    loop {
        let (tcp, client) = phoenix_runtime::accept::accept(&listener, service.as_str()).await;
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let service = service.clone();
        let id = shared.connection_id();
        let span = tracing::info_span!("outbound", connection = id, %service, %client);
        tokio::spawn(
            async move {
                let _active = shared.track();
                handle(&shared, &service, tcp, id).await;
            }
            .instrument(span),
        );
    }
}

async fn handle(shared: &Arc<Shared>, service: &ServiceName, tcp: TcpStream, id: u64) {
    let Some(config) = shared.config.load_full() else {
        return reset(tcp);
    };
    let Some(upstream) = config.upstreams.get(service) else {
        return reset(tcp);
    };
    let route = Route {
        name: service,
        upstream,
        endpoints: &upstream.endpoints,
        original_dst: None,
    };
    carry(shared, &config, route, tcp, id).await;
}

/// Carries `tcp` as its port's protocol says: detected or declared HTTP
/// request by request ([`crate::http`]), anything else as bytes through
/// the tunnel. The bytes read to decide go first either way.
pub(crate) async fn carry(
    shared: &Arc<Shared>,
    config: &ProxyConfig,
    route: Route<'_>,
    mut tcp: TcpStream,
    id: u64,
) {
    let decision = detect::decide(&mut tcp, route.upstream.protocol).await;
    if let Some(result) = decision.counted {
        shared.metrics.http.detected(result);
    }
    let carry = decision.carry;
    tracing::debug!(?carry, "protocol decided");
    match carry {
        Carry::Opaque => tunnel(shared, config, route, tcp, id, decision.prefix).await,
        carry @ (Carry::Http1 | Carry::Http2) => {
            let target = crate::http::outbound::Target {
                service: route.name.clone(),
                pod: route
                    .original_dst
                    .and_then(|dst| Some((route.endpoints.first()?.clone(), dst))),
            };
            let io = Prefixed::new(decision.prefix, tcp);
            // Boxed: hyper's connection state is several KiB, and inline it
            // would be reserved in every connection's task, opaque ones too.
            Box::pin(crate::http::outbound::serve(
                shared.clone(),
                target,
                io,
                carry,
            ))
            .await;
        }
    }
}

/// Where one outbound connection goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Route<'a> {
    /// The service (for logs, and named in the header unless `original_dst` is set).
    pub name: &'a ServiceName,
    /// Its settings (timeouts).
    pub upstream: &'a UpstreamConfig,
    /// The peers that may take it.
    pub endpoints: &'a [EndpointConfig],
    /// The address the app dialled, when it was a pod's and not a service's:
    /// the peer then connects to that port of its pod.
    pub original_dst: Option<SocketAddr>,
}

/// Carries `tcp` (connection `id`, named in the tunnel header) to one of
/// `route`'s endpoints over the peer's QUIC connection, `prefix` (bytes
/// already read from it) first. Runs in the connection's span, which
/// names the id and the client.
pub(crate) async fn tunnel(
    shared: &Arc<Shared>,
    config: &ProxyConfig,
    route: Route<'_>,
    tcp: TcpStream,
    id: u64,
    prefix: bytes::Bytes,
) {
    let Route {
        name: service,
        upstream,
        endpoints,
        original_dst,
    } = route;
    if endpoints.is_empty() {
        tracing::info!(%service, "no endpoint for service; resetting");
        shared.metrics.stream(Direction::outbound, Status::NoRoute);
        return reset(tcp);
    }
    // The header first: a request that cannot be encoded is refused before
    // a peer is dialled, logged and counted, never a silent reset.
    let mut request = Vec::with_capacity(64);
    let header = ConnectRequest {
        service: original_dst.is_none().then(|| service.clone()),
        original_dst,
        connection_id: id,
    };
    if let Err(error) = header.encode(&mut request) {
        tracing::warn!(%service, %error, "cannot encode the tunnel header; resetting");
        shared
            .metrics
            .stream_failed(Direction::outbound, StreamFailure::bad_request);
        return reset(tcp);
    }
    let timeout = upstream
        .connect_timeout
        .unwrap_or(config.mesh.connect_timeout);
    let Some((peer, endpoint)) =
        balance::connect(&shared.pool, endpoints, &config.mesh, timeout).await
    else {
        shared
            .metrics
            .stream(Direction::outbound, Status::UpstreamRefused);
        return reset(tcp);
    };
    let _stream = peer.stream_guard();
    let (mut send, recv) = match peer.conn.open_bi().await {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(%service, %error, "cannot open stream");
            return reset(tcp);
        }
    };
    let _streams = GaugeGuard::new(
        shared
            .metrics
            .quic_streams_open
            .get_or_create(&QuicLabels {
                direction: Direction::outbound,
            })
            .clone(),
    );
    request.extend_from_slice(&prefix);
    let prefix_len = prefix.len() as u64;
    // Freed before the relay: the detection buffer (8 KiB reserved) would
    // otherwise stay with every idle connection for its whole life.
    drop(prefix);
    if let Err(error) = send.write_all(&request).await {
        tracing::debug!(%service, %error, "peer stream closed before the header was sent");
        return reset(tcp);
    }
    drop(request);
    let identity = endpoint.identity.to_string();
    let counters = shared.metrics.tcp(Direction::outbound, &identity);
    counters.read.inc_by(prefix_len);
    let report = |status: Status| {
        shared.metrics.stream(Direction::outbound, status);
        if status != Status::Connected {
            tracing::debug!(%service, status = status.as_str(), "peer refused the connection");
        }
    };
    tracing::debug!(%service, peer = %endpoint.address, kx_group = peer.kx_group, "stream opened");
    let idle = upstream.idle_timeout;
    match relay::relay(tcp, send, recv, Start::Response(&report), &counters, idle).await {
        Ok(()) => {}
        Err(relay::RelayError::Idle(after)) => {
            shared.metrics.idle_timeouts.inc();
            tracing::info!(%service, ?after, "closed: idle timeout");
        }
        Err(error) => tracing::debug!(%error, "connection ended abnormally"),
    }
}

/// Closes `tcp` with a reset, so the app sees the failure at once.
pub(crate) fn reset(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
    drop(tcp);
}
