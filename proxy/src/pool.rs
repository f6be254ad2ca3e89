//! One QUIC connection per peer proxy, shared by every tunnelled TCP connection.
//!
//! A connection is made on first use (concurrent first uses wait for the same
//! handshake), kept alive by QUIC keep-alives while it exists, closed after
//! the mesh's peer idle timeout with no open stream, and replaced before the
//! peer's certificate expires: a connection past 90% of its peer
//! certificate's lifetime takes no new streams and closes once its last
//! stream ends, so no stream is cut by a renewal.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use phoenix_api::SpiffeId;
use phoenix_tls::handshake::HandshakeFailure;
use tokio::sync::Notify;

use crate::balance::Failures;
use crate::config::MeshConfig;
use crate::connector::Connector;
use crate::metrics::{Direction, GaugeGuard, QuicLabels};

/// A delay that never comes in practice (ten years), safe to add to `Instant`.
const NEVER: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// QUIC application close code: the connection was idle.
const CLOSE_IDLE: quinn::VarInt = quinn::VarInt::from_u32(0);

/// Why no connection to a peer could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TLS config could not be built.
    #[error("TLS config")]
    Tls(#[from] phoenix_tls::handshake::TlsConfigError),
    /// quinn refused to start the connection.
    #[error("connect")]
    Connect(#[from] quinn::ConnectError),
    /// The handshake failed.
    #[error("handshake failed: {}", .0.as_str())]
    Handshake(HandshakeFailure),
    /// Another caller's handshake to the same peer, which this one waited
    /// for, failed (already counted against the peer once).
    #[error("handshake failed (shared): {}", .0.as_str())]
    Shared(HandshakeFailure),
    /// The handshake worked but HTTP/3 could not start on the connection.
    #[error("HTTP/3 did not start")]
    Http3(#[source] h3::error::ConnectionError),
}

impl ConnectError {
    /// Whether this caller's own attempt failed (so the peer is set aside
    /// once per failed handshake, not once per waiting caller).
    pub fn own_attempt(&self) -> bool {
        !matches!(self, Self::Shared(_))
    }
}

/// The peer connections of one proxy. Clones share the pool.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    peers: Mutex<HashMap<(SocketAddr, SpiffeId), Arc<Slot>>>,
    /// Peers whose handshakes failed recently (set aside by the balancer).
    failures: Failures,
    latency: crate::balance::latency::Latency,
    accrual: crate::balance::accrual::Accrual,
    connector: Connector,
}

#[derive(Debug, Default)]
struct Slot {
    /// Held while connecting, so concurrent callers share one handshake.
    conn: tokio::sync::Mutex<SlotState>,
    /// Callers waiting for `conn`: counted as load, so the balancer does not
    /// pile more connections onto a peer whose handshake is still running.
    waiting: AtomicUsize,
}

#[derive(Debug, Default)]
struct SlotState {
    conn: Option<PeerConn>,
    /// The last failed handshake: callers that were already waiting when it
    /// failed share its outcome instead of each paying another timeout.
    failed: Option<(std::time::Instant, HandshakeFailure)>,
}

/// Counts a caller waiting on a slot until dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Sends HTTP/3 requests on a peer connection.
pub type Http3Sender = h3::client::SendRequest<h3_quinn::OpenStreams, bytes::Bytes>;

/// A live connection to a peer and its stream accounting.
#[derive(Clone)]
pub struct PeerConn {
    /// The QUIC connection.
    pub conn: quinn::Connection,
    /// The key-exchange group it negotiated.
    pub kx_group: &'static str,
    /// Its HTTP/3 client, on connections of an HTTP/3 pool.
    pub http3: Option<Http3Sender>,
    state: Arc<ConnState>,
}

impl std::fmt::Debug for PeerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConn")
            .field("remote", &self.conn.remote_address())
            .field("kx_group", &self.kx_group)
            .field("http3", &self.http3.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct ConnState {
    open_streams: AtomicUsize,
    opened_total: AtomicU64,
    draining: AtomicBool,
    idle: Notify,
}

/// Counts one open stream on a peer connection.
#[derive(Debug)]
pub struct StreamGuard {
    state: Arc<ConnState>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.state.open_streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.state.idle.notify_one();
        }
    }
}

impl PeerConn {
    /// A connection just established, with no stream yet.
    pub fn new(conn: quinn::Connection, kx_group: &'static str) -> Self {
        Self {
            conn,
            kx_group,
            http3: None,
            state: Arc::new(ConnState::default()),
        }
    }

    /// Registers a new stream on this connection.
    pub fn stream_guard(&self) -> StreamGuard {
        self.state.open_streams.fetch_add(1, Ordering::AcqRel);
        self.state.opened_total.fetch_add(1, Ordering::Relaxed);
        StreamGuard {
            state: self.state.clone(),
        }
    }

    /// Takes no new stream from now on (the peer said GOAWAY); closes
    /// once the open ones end.
    pub fn drain(&self) {
        self.state.draining.store(true, Ordering::Release);
        self.state.idle.notify_one();
    }

    /// Whether new streams should go elsewhere: the connection closed or
    /// is draining. A UDP flow checks it to end itself, so a drain is not
    /// held up by a flow that never idles (its next datagram sets up a new
    /// flow on a fresh connection).
    pub fn retiring(&self) -> bool {
        !self.usable()
    }

    fn usable(&self) -> bool {
        self.conn.close_reason().is_none() && !self.state.draining.load(Ordering::Acquire)
    }
}

impl Pool {
    /// An empty pool that makes its connections with `connector`.
    pub fn new(connector: Connector) -> Self {
        Self {
            inner: Arc::new(Inner {
                peers: Mutex::default(),
                failures: Failures::default(),
                latency: Default::default(),
                accrual: Default::default(),
                connector,
            }),
        }
    }

    /// Peers whose handshakes failed recently.
    pub fn failures(&self) -> &Failures {
        &self.inner.failures
    }

    /// Each peer's request latency (HTTP), for the balancer.
    pub fn latency(&self) -> &crate::balance::latency::Latency {
        &self.inner.latency
    }

    /// Peers whose responses failed in a row (HTTP).
    pub fn accrual(&self) -> &crate::balance::accrual::Accrual {
        &self.inner.accrual
    }

    /// The connection to `addr`, which must present `identity`; made if needed.
    pub async fn get(
        &self,
        addr: SocketAddr,
        identity: &SpiffeId,
        mesh: &MeshConfig,
        connect_timeout: Duration,
    ) -> Result<PeerConn, ConnectError> {
        let slot = {
            let mut peers = self
                .inner
                .peers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            peers.entry((addr, identity.clone())).or_default().clone()
        };
        let asked = std::time::Instant::now();
        slot.waiting.fetch_add(1, Ordering::AcqRel);
        let waiting = Waiting(&slot.waiting);
        let mut guard = slot.conn.lock().await;
        if let Some(conn) = guard.conn.as_ref().filter(|c| c.usable()) {
            return Ok(conn.clone());
        }
        if let Some((at, reason)) = guard.failed
            && at >= asked
        {
            return Err(ConnectError::Shared(reason));
        }
        let connected = self
            .inner
            .connector
            .connect(addr, identity, &mesh.tls, connect_timeout)
            .await;
        let conn = match connected {
            Ok(conn) => conn,
            Err(e) => {
                if let ConnectError::Handshake(reason) = e {
                    guard.failed = Some((std::time::Instant::now(), reason));
                }
                drop(guard);
                drop(waiting);
                // Nobody else is waiting to share the outcome: forget the
                // peer (a pod that went away must not stay in the map).
                self.forget(addr, identity, None);
                return Err(e);
            }
        };
        guard.conn = Some(conn.clone());
        guard.failed = None;
        drop(guard);
        drop(waiting);
        tokio::spawn(watch(
            self.clone(),
            (addr, identity.clone()),
            conn.clone(),
            mesh.peer_idle_timeout,
        ));
        Ok(conn)
    }

    /// Drops the slot of `addr` as `identity` if nothing uses it: no caller
    /// waiting, and no usable connection other than `closed` (the one whose
    /// watch just ended). Without this the map would grow with every pod a
    /// proxy ever reached.
    fn forget(&self, addr: SocketAddr, identity: &SpiffeId, closed: Option<usize>) {
        let mut peers = self
            .inner
            .peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = (addr, identity.clone());
        let Some(slot) = peers.get(&key) else {
            return;
        };
        if slot.waiting.load(Ordering::Acquire) > 0 {
            return;
        }
        // Held: someone is connecting or reading it right now; they keep it.
        let Ok(state) = slot.conn.try_lock() else {
            return;
        };
        let unused = match &state.conn {
            None => true,
            Some(c) => Some(c.conn.stable_id()) == closed || !c.usable(),
        };
        drop(state);
        if unused {
            peers.remove(&key);
        }
    }

    /// Drains the connections of peers `keep` refuses (they left the
    /// config): no new stream goes to them, and each closes once its last
    /// stream ends, so none is cut. Their slots are forgotten on close.
    pub fn retain(&self, keep: impl Fn(SocketAddr, &SpiffeId) -> bool) {
        let listed = |addr: SocketAddr| {
            let peers = self
                .inner
                .peers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            peers.keys().any(|(a, id)| *a == addr && keep(*a, id))
        };
        self.inner.latency.retain(listed);
        self.inner.accrual.retain(listed);
        let leaving: Vec<Arc<Slot>> = {
            let peers = self
                .inner
                .peers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            peers
                .iter()
                .filter(|((addr, identity), _)| !keep(*addr, identity))
                .map(|(_, slot)| slot.clone())
                .collect()
        };
        for slot in leaving {
            // Held: a caller is connecting to it right now; its connection
            // goes idle and closes as any other would.
            let Ok(state) = slot.conn.try_lock() else {
                continue;
            };
            if let Some(conn) = &state.conn {
                conn.state.draining.store(true, Ordering::Release);
                conn.state.idle.notify_one();
            }
        }
    }

    /// Number of peer slots held (live, connecting or just failed).
    pub fn len(&self) -> usize {
        self.inner
            .peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no peer slot is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Streams open now to `addr` as `identity`, plus callers waiting for
    /// its connection (0 for an unknown peer): the load the balancer compares.
    pub fn load(&self, addr: SocketAddr, identity: &SpiffeId) -> usize {
        let slot = {
            let peers = self
                .inner
                .peers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            peers.get(&(addr, identity.clone())).cloned()
        };
        slot.map_or(0, |s| {
            let open = s.conn.try_lock().ok().and_then(|c| {
                c.conn
                    .as_ref()
                    .map(|c| c.state.open_streams.load(Ordering::Relaxed))
            });
            open.unwrap_or(0) + s.waiting.load(Ordering::Relaxed)
        })
    }

    /// Peers with a usable connection (for `/config`).
    pub fn peers(&self) -> Vec<PeerSummary> {
        let peers = self
            .inner
            .peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        peers
            .iter()
            .filter_map(|((addr, id), slot)| {
                // A slot being connected right now is listed without figures.
                let path = match slot.conn.try_lock() {
                    Ok(c) => {
                        let live = c.conn.as_ref().filter(|c| c.usable())?;
                        Some(live.conn.stats().path)
                    }
                    Err(_) => None,
                };
                Some(PeerSummary {
                    address: *addr,
                    identity: id.to_string(),
                    path,
                })
            })
            .collect()
    }
}

/// One peer connection as `/config` shows it.
#[derive(Clone, Debug)]
pub struct PeerSummary {
    /// The peer proxy's QUIC address.
    pub address: SocketAddr,
    /// Its SPIFFE ID.
    pub identity: String,
    /// quinn's view of the path: round-trip time, congestion window,
    /// losses, and the UDP payload path MTU discovery settled on so far.
    pub path: Option<quinn::PathStats>,
}

/// Closes `peer` when idle, drains it before its peer certificate expires,
/// and forgets its slot once it is closed (whatever closed it).
async fn watch(pool: Pool, key: (SocketAddr, SpiffeId), peer: PeerConn, idle_timeout: Duration) {
    let id = peer.conn.stable_id();
    watch_until_closed(&pool, &peer, idle_timeout).await;
    pool.forget(key.0, &key.1, Some(id));
}

async fn watch_until_closed(pool: &Pool, peer: &PeerConn, idle_timeout: Duration) {
    let _open = GaugeGuard::new(
        pool.inner
            .connector
            .metrics()
            .quic_connections_open
            .get_or_create(&QuicLabels {
                direction: Direction::outbound,
            })
            .clone(),
    );
    let drain_in = drain_delay(&peer.conn);
    let drain = tokio::time::sleep(drain_in);
    tokio::pin!(drain);
    loop {
        // Wait until no stream is open (or the connection dies).
        while peer.state.open_streams.load(Ordering::Acquire) > 0 {
            tokio::select! {
                _ = peer.state.idle.notified() => {}
                _ = peer.conn.closed() => return,
                _ = &mut drain, if !peer.state.draining.load(Ordering::Acquire) => {
                    peer.state.draining.store(true, Ordering::Release);
                }
            }
        }
        if peer.state.draining.load(Ordering::Acquire) {
            peer.conn.close(CLOSE_IDLE, b"certificate renewal");
            return;
        }
        let opened = peer.state.opened_total.load(Ordering::Relaxed);
        tokio::select! {
            _ = tokio::time::sleep(idle_timeout) => {
                if peer.state.open_streams.load(Ordering::Acquire) == 0
                    && peer.state.opened_total.load(Ordering::Relaxed) == opened
                {
                    peer.state.draining.store(true, Ordering::Release);
                    // A stream may have been registered between the check
                    // and the flag; it keeps the connection until it ends.
                    if peer.state.open_streams.load(Ordering::Acquire) == 0 {
                        peer.conn.close(CLOSE_IDLE, b"idle");
                        return;
                    }
                }
            }
            _ = peer.conn.closed() => return,
            _ = &mut drain, if !peer.state.draining.load(Ordering::Acquire) => {
                peer.state.draining.store(true, Ordering::Release);
            }
            _ = peer.state.idle.notified() => {}
        }
    }
}

/// Time until 90% of the peer certificate's lifetime has passed.
fn drain_delay(conn: &quinn::Connection) -> Duration {
    let Some(leaf) = conn
        .peer_identity()
        .and_then(|c| {
            c.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|c| c.first().cloned())
    else {
        return NEVER;
    };
    let (Ok(nb), Ok(na)) = (
        phoenix_tls::spiffe::not_before_unix(&leaf),
        phoenix_tls::spiffe::not_after_unix(&leaf),
    ) else {
        return NEVER;
    };
    let drain_at = nb + (na - nb) * 9 / 10;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Duration::from_secs(drain_at.saturating_sub(now).max(0) as u64)
}
