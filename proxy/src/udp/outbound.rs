//! The client side of UDP: an upstream's explicit UDP listener, one flow
//! per client address.
//!
//! The first datagram from a new client address starts the flow's setup
//! (an endpoint chosen by the balancer, a tunnel stream, the header, the
//! peer's status); datagrams that arrive meanwhile wait in a bounded queue.
//! A refused flow stays, refusing (counted), until its idle timeout, so a
//! denied client retrying every second does not cost a stream per datagram.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use phoenix_api::ServiceName;
use phoenix_api::header::{self, ConnectRequest, Status};
use prometheus_client::metrics::counter::Counter;
use tokio::net::UdpSocket;
use tracing::Instrument;

use super::demux::{self, Flow as DemuxFlow, Sink};
use super::{Activity, MAX_PAYLOAD, PENDING_MAX};
use crate::balance;
use crate::config::ProxyConfig;
use crate::metrics::udp::{DatagramResult, FlowHandles};
use crate::metrics::{Direction, GaugeGuard, QuicLabels};
use crate::outbound::Bound;
use crate::state::Shared;

/// How long a flow's setup may take, from choosing an endpoint to the
/// peer's answer.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The UDP listeners bound now, by service.
#[derive(Debug, Default)]
pub struct Listeners {
    bound: Mutex<BTreeMap<ServiceName, Bound>>,
}

impl Listeners {
    /// Binds a listener per UDP upstream with a `listen` address and
    /// closes those of upstreams gone: their flows end with them (the
    /// listener's task owns them), so the address is free to bind again.
    pub async fn reconcile(&self, shared: &Arc<Shared>, config: &ProxyConfig) {
        let wanted: BTreeMap<&ServiceName, SocketAddr> = config
            .upstreams
            .iter()
            .filter(|(s, _)| s.transport() == phoenix_api::service::Transport::Udp)
            .filter_map(|(s, u)| u.listen.map(|l| (s, l)))
            .collect();
        let to_bind = crate::outbound::plan(&self.bound, &wanted);
        for (service, addr) in to_bind {
            match super::bind(addr) {
                Ok(socket) => {
                    let local = socket.local_addr().unwrap_or(addr);
                    tracing::info!(%service, listen = %local, "outbound UDP listener bound");
                    let span = tracing::info_span!("udp_outbound", %service);
                    let task = tokio::spawn(
                        serve(shared.clone(), service.clone(), Arc::new(socket)).instrument(span),
                    );
                    self.lock().insert(
                        service,
                        Bound {
                            configured: addr,
                            local,
                            task,
                        },
                    );
                }
                Err(error) => {
                    tracing::error!(%service, %addr, %error, "cannot bind outbound UDP listener");
                }
            }
        }
    }

    /// Where each UDP upstream listens now (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<(ServiceName, SocketAddr)> {
        self.lock()
            .iter()
            .map(|(s, b)| (s.clone(), b.local))
            .collect()
    }

    /// Closes every listener.
    pub fn close_all(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ServiceName, Bound>> {
        self.bound.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A client's flow as the listener sees it.
#[derive(Debug)]
struct Flow {
    state: Mutex<State>,
    activity: Arc<Activity>,
    /// Set with [`State::Closed`]: the listener's lookup reads it without
    /// taking the state's lock a second time per datagram.
    closed: AtomicBool,
}

#[derive(Debug)]
enum State {
    /// Being set up: datagrams wait (at most [`PENDING_MAX`], and
    /// [`PENDING_BYTES`] in all).
    Pending {
        queue: VecDeque<Bytes>,
        bytes: usize,
    },
    /// Set up: datagrams go to the peer at once.
    Ready {
        conn: quinn::Connection,
        prefix: Vec<u8>,
        handles: FlowHandles,
    },
    /// Refused or failed: datagrams are dropped, counted by why (the
    /// counter fetched once), until [`REFUSED_HOLD`] has passed, however
    /// much the client sends.
    Refused(Counter),
    /// Ended: the listener starts a new flow for the next datagram.
    Closed,
}

/// How long a refused flow refuses before the next datagram tries again:
/// long enough that a denied client sending every millisecond costs one
/// setup per second, short enough that a passing failure (no endpoint yet,
/// a peer restarting, an allow-list being fixed) heals by itself.
const REFUSED_HOLD: Duration = Duration::from_secs(1);
/// Bytes a flow holds while it is set up.
const PENDING_BYTES: usize = 64 * 1024;
/// Flows one listener keeps (conntrack's default table is 65,536 for a
/// whole node); datagrams from further client addresses are dropped and
/// counted until some expire.
pub const MAX_FLOWS: usize = 16_384;

type Flows = Arc<Mutex<HashMap<SocketAddr, Arc<Flow>>>>;

/// Receives from the app's clients until the listener is closed; the flows
/// run in a `JoinSet` owned here, so closing the listener ends them all.
async fn serve(shared: Arc<Shared>, service: ServiceName, socket: Arc<UdpSocket>) {
    let flows: Flows = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; MAX_PAYLOAD];
    loop {
        while tasks.try_join_next().is_some() {}
        let (len, client) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(error) => {
                // ICMP errors surface here on some kernels; the socket
                // itself is fine.
                tracing::debug!(%error, "UDP receive failed");
                continue;
            }
        };
        let payload = &buf[..len];
        let mut all = flows.lock().unwrap_or_else(PoisonError::into_inner);
        let flow = match all.get(&client) {
            Some(flow) if !flow.closed.load(Ordering::Acquire) => flow.clone(),
            _ if all.len() >= MAX_FLOWS && !all.contains_key(&client) => {
                drop(all);
                shared.metrics.udp.datagrams(
                    Direction::outbound,
                    "",
                    DatagramResult::dropped_overflow,
                    1,
                );
                continue;
            }
            _ => {
                let flow = Arc::new(Flow {
                    state: Mutex::new(State::Pending {
                        queue: VecDeque::new(),
                        bytes: 0,
                    }),
                    activity: Arc::default(),
                    closed: AtomicBool::new(false),
                });
                all.insert(client, flow.clone());
                let id = shared.connection_id();
                let span = tracing::info_span!("flow", connection = id, %client);
                tasks.spawn(
                    run(
                        shared.clone(),
                        service.clone(),
                        socket.clone(),
                        client,
                        flow.clone(),
                        flows.clone(),
                        id,
                    )
                    .instrument(span),
                );
                flow
            }
        };
        drop(all);
        let mut state = lock(&flow);
        match &mut *state {
            State::Pending { queue, bytes }
                if queue.len() < PENDING_MAX && *bytes + len <= PENDING_BYTES =>
            {
                flow.activity.touch();
                *bytes += len;
                queue.push_back(Bytes::copy_from_slice(payload));
            }
            State::Pending { .. } => shared.metrics.udp.datagrams(
                Direction::outbound,
                "",
                DatagramResult::dropped_overflow,
                1,
            ),
            State::Ready {
                conn,
                prefix,
                handles,
            } => {
                flow.activity.touch();
                demux::send(conn, prefix, payload, handles);
            }
            // Not touched: a refused flow ends at its hold, whatever comes.
            State::Refused(counter) => {
                counter.inc();
            }
            // Ended between the lookup and now: this one datagram is lost,
            // as on any UDP path that changes; the next starts a new flow.
            State::Closed => {
                shared
                    .metrics
                    .udp
                    .datagrams(Direction::outbound, "", DatagramResult::no_flow, 1)
            }
        }
    }
}

fn lock(flow: &Flow) -> std::sync::MutexGuard<'_, State> {
    flow.state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Undoes a set-up flow's registrations however its task ends (its end,
/// or the listener closing and aborting it).
struct Registered {
    demux: Arc<super::demux::Demux>,
    flow_id: phoenix_api::datagram::FlowId,
    open: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.demux.remove(self.flow_id);
        self.open.dec();
    }
}

/// One flow from setup to end; it leaves `flows` when it ends, so the next
/// datagram from the client starts a new one.
async fn run(
    shared: Arc<Shared>,
    service: ServiceName,
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    flow: Arc<Flow>,
    flows: Flows,
    id: u64,
) {
    // The service's port, else the one the app sends to (a local DNS
    // forwarder on port 53 is DNS whatever the service is called).
    let (idle, port) = shared
        .config
        .load()
        .as_ref()
        .and_then(|c| c.upstreams.get(&service))
        .map(|u| (u.idle_timeout, u.listen.map(|l| l.port())))
        .unwrap_or_default();
    let idle = super::idle_timeout(idle, service.port().or(port));
    match tokio::time::timeout(SETUP_TIMEOUT, setup(&shared, &service, id))
        .await
        .unwrap_or_else(|_| {
            tracing::debug!(%service, "UDP flow setup timed out");
            Err(Refusal::no_flow(String::new()))
        }) {
        Err(Refusal {
            result,
            peer_identity,
        }) => {
            {
                let counter = shared.metrics.udp.datagram_counter(
                    Direction::outbound,
                    &peer_identity,
                    result,
                );
                let mut state = lock(&flow);
                if let State::Pending { queue, .. } = &*state {
                    counter.inc_by(queue.len() as u64);
                }
                *state = State::Refused(counter);
            }
            tokio::time::sleep(REFUSED_HOLD.min(idle)).await;
        }
        Ok(Setup {
            peer,
            guard,
            peer_identity,
            mut send,
            mut recv,
        }) => {
            let _guard = guard;
            let _streams = GaugeGuard::new(
                shared
                    .metrics
                    .quic_streams_open
                    .get_or_create(&QuicLabels {
                        direction: Direction::outbound,
                    })
                    .clone(),
            );
            let conn = peer.conn.clone();
            let handles = shared.metrics.udp.flow(Direction::outbound, &peer_identity);
            handles.opened.inc();
            handles.open.inc();
            let (flow_id, prefix) = demux::prefix_of(send.id());
            let demux =
                shared
                    .udp_demuxes
                    .of(&conn, &shared.metrics, Direction::outbound, &peer_identity);
            demux.insert(
                flow_id,
                Arc::new(DemuxFlow {
                    sink: Sink::Client {
                        socket: socket.clone(),
                        client,
                    },
                    handles: handles.clone(),
                    activity: flow.activity.clone(),
                }),
            );
            let _registered = Registered {
                demux,
                flow_id,
                open: handles.open.clone(),
            };
            {
                let mut state = lock(&flow);
                if let State::Pending { queue, .. } = &*state {
                    for payload in queue {
                        demux::send(&conn, &prefix, payload, &handles);
                    }
                }
                *state = State::Ready {
                    conn,
                    prefix,
                    handles: handles.clone(),
                };
                // The idle clock starts now: a slow setup is not idleness.
                flow.activity.touch();
            }
            tracing::debug!(%service, flow = %flow_id, "UDP flow set up");
            let ended = tokio::select! {
                () = expire(&flow, idle) => {
                    handles.expired.inc();
                    "idle"
                }
                // The stream carries nothing after the header: its end (or
                // reset) is the peer ending the flow.
                _ = recv.read_chunk(1, true) => "ended by the peer",
                () = retiring(&peer) => "the peer connection is draining",
            };
            tracing::debug!(%service, flow = %flow_id, ?idle, ended, "UDP flow closed");
            let _ = send.finish();
        }
    }
    *lock(&flow) = State::Closed;
    flow.closed.store(true, Ordering::Release);
    let mut all = flows.lock().unwrap_or_else(PoisonError::into_inner);
    if all.get(&client).is_some_and(|f| Arc::ptr_eq(f, &flow)) {
        all.remove(&client);
    }
}

/// Returns once `flow` carried nothing for `idle`.
async fn expire(flow: &Flow, idle: Duration) {
    loop {
        let at = flow.activity.expires(idle);
        if at <= tokio::time::Instant::now() {
            return;
        }
        tokio::time::sleep_until(at).await;
    }
}

/// Returns once the flow's connection closes or drains.
async fn retiring(peer: &crate::pool::PeerConn) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if peer.retiring() {
            return;
        }
    }
}

struct Setup {
    peer: crate::pool::PeerConn,
    /// Taken as soon as the connection is chosen, so neither the pool's
    /// idle close nor its accounting misses the flow during setup.
    guard: crate::pool::StreamGuard,
    peer_identity: String,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

struct Refusal {
    result: DatagramResult,
    peer_identity: String,
}

impl Refusal {
    fn no_flow(peer_identity: String) -> Self {
        Self {
            result: DatagramResult::no_flow,
            peer_identity,
        }
    }
}

/// Chooses an endpoint, opens the flow's stream and has the peer accept
/// the flow.
async fn setup(shared: &Shared, service: &ServiceName, id: u64) -> Result<Setup, Refusal> {
    let config = shared
        .config
        .load_full()
        .ok_or_else(|| Refusal::no_flow(String::new()))?;
    let upstream = config
        .upstreams
        .get(service)
        .ok_or_else(|| Refusal::no_flow(String::new()))?;
    if upstream.endpoints.is_empty() {
        tracing::info!(%service, "no endpoint for the UDP service");
        shared.metrics.stream(Direction::outbound, Status::NoRoute);
        return Err(Refusal::no_flow(String::new()));
    }
    let mut request = Vec::with_capacity(64);
    ConnectRequest {
        service: Some(service.clone()),
        original_dst: None,
        connection_id: id,
    }
    .encode(&mut request)
    .map_err(|error| {
        tracing::warn!(%service, %error, "cannot encode the tunnel header");
        Refusal::no_flow(String::new())
    })?;
    let timeout = upstream
        .connect_timeout
        .unwrap_or(config.mesh.connect_timeout);
    let Some((peer, endpoint)) =
        balance::connect(&shared.pool, &upstream.endpoints, &config.mesh, timeout).await
    else {
        shared
            .metrics
            .stream(Direction::outbound, Status::UpstreamRefused);
        return Err(Refusal::no_flow(String::new()));
    };
    let guard = peer.stream_guard();
    let peer_identity = endpoint.identity.to_string();
    let failed = |what: &str, error: &dyn std::fmt::Display| {
        tracing::debug!(%service, %error, "UDP flow setup failed: {what}");
        Refusal::no_flow(peer_identity.clone())
    };
    let (mut send, mut recv) = peer
        .conn
        .open_bi()
        .await
        .map_err(|e| failed("cannot open a stream", &e))?;
    send.write_all(&request)
        .await
        .map_err(|e| failed("cannot send the header", &e))?;
    let status = read_status(&mut recv)
        .await
        .map_err(|e| failed("bad answer", &e))?;
    shared.metrics.stream(Direction::outbound, status);
    match status {
        Status::Connected => Ok(Setup {
            peer,
            guard,
            peer_identity,
            send,
            recv,
        }),
        Status::Denied => {
            tracing::info!(%service, peer = %endpoint.address, "UDP flow denied by the service's allow-list");
            Err(Refusal {
                result: DatagramResult::denied,
                peer_identity,
            })
        }
        other => {
            tracing::info!(%service, status = other.as_str(), "UDP flow refused");
            Err(Refusal::no_flow(peer_identity))
        }
    }
}

/// Why a setup answer could not be read.
#[derive(Debug, thiserror::Error)]
enum AnswerError {
    #[error("malformed answer")]
    Header(#[from] header::HeaderError),
    #[error("the stream ended before an answer")]
    Ended,
}

async fn read_status(recv: &mut quinn::RecvStream) -> Result<Status, AnswerError> {
    let mut buf = Vec::new();
    loop {
        if let Some((response, _)) = header::decode_response(&buf)? {
            return Ok(response.status);
        }
        let chunk = recv
            .read_chunk(header::MAX_BODY_LEN, true)
            .await
            .map_err(|_| AnswerError::Ended)?
            .ok_or(AnswerError::Ended)?;
        buf.extend_from_slice(&chunk.bytes);
    }
}
