//! One reader per peer connection for its QUIC datagrams, and the table
//! from flow id to where each payload goes.
//!
//! Flows of both sides register here: a client proxy's flows on the
//! connection it dialled, a server proxy's on the one it accepted. Flow ids
//! are the setup streams' quarter stream ids, and only the dialling side
//! opens flows, so one table per connection never sees a clash.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use phoenix_api::datagram::{self, FlowId};
use tokio::net::UdpSocket;

use super::Activity;
use crate::metrics::Direction;
use crate::metrics::udp::{DatagramResult, FlowHandles, UdpMetrics};

/// Where a flow's received payloads go.
#[derive(Debug)]
pub enum Sink {
    /// Back to the app that is the client, from the upstream's listener.
    Client {
        /// The upstream's UDP listener.
        socket: Arc<UdpSocket>,
        /// The client's address.
        client: SocketAddr,
    },
    /// To the app that serves: the flow's own socket, connected to it.
    Upstream(Arc<UdpSocket>),
}

/// One flow as the connection's reader sees it.
#[derive(Debug)]
pub struct Flow {
    /// Where its payloads go.
    pub sink: Sink,
    /// Its counters.
    pub handles: FlowHandles,
    /// Touched per datagram, for the idle timeout.
    pub activity: Arc<Activity>,
}

impl Flow {
    /// Hands one payload to the app without waiting: a socket whose buffer
    /// is full drops it (counted), as the kernel would.
    fn deliver(&self, payload: &[u8]) {
        let sent = match &self.sink {
            Sink::Client { socket, client } => socket.try_send_to(payload, *client),
            Sink::Upstream(socket) => socket.try_send(payload),
        };
        match sent {
            Ok(_) => {
                self.activity.touch();
                self.handles.forwarded(payload.len());
            }
            Err(error) => {
                tracing::trace!(%error, "datagram not delivered");
                self.handles.overflow.inc();
            }
        }
    }
}

/// The flows of one peer connection.
#[derive(Debug)]
pub struct Demux {
    flows: Mutex<HashMap<FlowId, Arc<Flow>>>,
}

impl Demux {
    /// Adds a flow; its datagrams are delivered from now on.
    pub fn insert(&self, id: FlowId, flow: Arc<Flow>) {
        self.lock().insert(id, flow);
    }

    /// Adds a flow unless `max` are registered already (checked and added
    /// under one lock, so concurrent setups cannot pass the limit).
    pub fn try_insert(&self, id: FlowId, flow: Arc<Flow>, max: usize) -> bool {
        let mut flows = self.lock();
        if flows.len() >= max {
            return false;
        }
        flows.insert(id, flow);
        true
    }

    /// How many flows are registered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no flow is registered.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Removes a flow: later datagrams for it count as `no_flow`.
    pub fn remove(&self, id: FlowId) {
        self.lock().remove(&id);
    }

    fn get(&self, id: FlowId) -> Option<Arc<Flow>> {
        self.lock().get(&id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FlowId, Arc<Flow>>> {
        self.flows.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Every connection's [`Demux`], by the connection's stable id.
#[derive(Debug, Default)]
pub struct Demuxes {
    by_connection: Arc<Mutex<HashMap<usize, Arc<Demux>>>>,
}

impl Demuxes {
    /// The demux of `conn`, its reader started on first use; it ends, and
    /// the entry goes, when the connection closes.
    pub fn of(
        &self,
        conn: &quinn::Connection,
        metrics: &Arc<crate::metrics::Metrics>,
        direction: Direction,
        peer_identity: &str,
    ) -> Arc<Demux> {
        let mut all = self
            .by_connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(demux) = all.get(&conn.stable_id()) {
            return demux.clone();
        }
        let demux = Arc::new(Demux {
            flows: Mutex::new(HashMap::new()),
        });
        all.insert(conn.stable_id(), demux.clone());
        let reader = Reader {
            conn: conn.clone(),
            demux: demux.clone(),
            metrics: metrics.clone(),
            direction,
            peer_identity: peer_identity.to_owned(),
            read: 0,
            reported_drops: 0,
        };
        let by_connection = self.by_connection.clone();
        tokio::spawn(async move {
            // quinn's stable id is the connection's address in memory: it
            // is held until the entry is gone, so no new connection can
            // take the id of this one in between.
            let conn = reader.conn.clone();
            let demux = reader.demux.clone();
            reader.run().await;
            let mut all = by_connection.lock().unwrap_or_else(PoisonError::into_inner);
            if all
                .get(&conn.stable_id())
                .is_some_and(|d| Arc::ptr_eq(d, &demux))
            {
                all.remove(&conn.stable_id());
            }
            drop(all);
            drop(conn);
        });
        demux
    }
}

struct Reader {
    conn: quinn::Connection,
    demux: Arc<Demux>,
    metrics: Arc<crate::metrics::Metrics>,
    direction: Direction,
    peer_identity: String,
    /// Datagrams read from quinn.
    read: u64,
    /// quinn's drops already counted.
    reported_drops: u64,
}

impl Reader {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                // Reading first: the tick runs only when quinn's queue is
                // empty, so what it received and was not read was dropped.
                biased;
                received = self.conn.read_datagram() => match received {
                    Ok(datagram) => self.dispatch(&datagram),
                    Err(_) => break,
                },
                _ = tick.tick() => self.count_drops(),
            }
        }
        self.count_drops();
    }

    fn dispatch(&mut self, datagram: &Bytes) {
        self.read += 1;
        let result = match datagram::decode(datagram) {
            Ok((id, payload)) => match self.demux.get(id) {
                Some(flow) => return flow.deliver(payload),
                None => DatagramResult::no_flow,
            },
            Err(_) => DatagramResult::malformed,
        };
        self.udp()
            .datagrams(self.direction, &self.peer_identity, result, 1);
    }

    /// quinn drops received datagrams silently when its receive buffer is
    /// full: what it received minus what was read is that count, read each
    /// second when the queue is empty and when the connection ends (a
    /// datagram arriving between the empty poll and the statistics would
    /// count once too many: a rare overstatement, never a silent loss).
    fn count_drops(&mut self) {
        let received = self.conn.stats().frame_rx.datagram;
        let dropped = received.saturating_sub(self.read);
        if dropped > self.reported_drops {
            let new = dropped - self.reported_drops;
            self.reported_drops = dropped;
            tracing::debug!(dropped = new, "quinn's datagram receive buffer overflowed");
            self.udp().datagrams(
                self.direction,
                &self.peer_identity,
                DatagramResult::dropped_overflow,
                new,
            );
        }
    }

    fn udp(&self) -> &UdpMetrics {
        &self.metrics.udp
    }
}

/// Sends one payload of flow `prefix` (its encoded id) on `conn`, counted
/// by fate. `false` when the connection is gone and the flow with it.
pub fn send(
    conn: &quinn::Connection,
    prefix: &[u8],
    payload: &[u8],
    handles: &FlowHandles,
) -> bool {
    let len = prefix.len() + payload.len();
    if conn.max_datagram_size().is_none_or(|max| len > max) {
        handles.too_large.inc();
        return true;
    }
    // A full send buffer makes quinn drop its oldest queued datagram for
    // this one: UDP's semantics (the newest is the most useful), counted.
    if conn.datagram_send_buffer_space() < len {
        handles.overflow.inc();
    }
    let mut datagram = Vec::with_capacity(len);
    datagram.extend_from_slice(prefix);
    datagram.extend_from_slice(payload);
    match conn.send_datagram(datagram.into()) {
        Ok(()) => {
            handles.forwarded(payload.len());
            true
        }
        Err(quinn::SendDatagramError::TooLarge) => {
            handles.too_large.inc();
            true
        }
        Err(error) => {
            tracing::debug!(%error, "datagram not sent; the flow ends");
            handles.no_flow.inc();
            false
        }
    }
}

/// The encoded prefix of the flow set up on `stream`.
pub fn prefix_of(stream: quinn::StreamId) -> (FlowId, Vec<u8>) {
    let id = FlowId::of_stream(quinn::VarInt::from(stream).into_inner());
    let mut prefix = Vec::with_capacity(id.encoded_len());
    id.encode(&mut prefix);
    (id, prefix)
}
