//! UDP flow metrics: flows open and set up, datagrams by what became of
//! them, bytes.
//!
//! `direction` is the proxy's side of the flow (`outbound`: its app is the
//! client; `inbound`: its app serves), `peer_identity` the identity at the
//! other end (the server's for outbound, the client's for inbound), as on
//! the TCP metrics. Every datagram is counted once, by its fate, so the
//! `result` series of one flow add up to the datagrams it saw: nothing is
//! dropped without a count, and nothing ever leaves in clear.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Direction;

/// What became of one datagram.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DatagramResult {
    /// Delivered: sent to the peer proxy, or to the app or client.
    forwarded,
    /// Larger than the peer connection's datagram size (UDP is never
    /// fragmented by the mesh, and never sent in clear instead).
    too_large,
    /// A flow id the connection does not know (the flow ended, or the peer
    /// is confused), or no flow could be set up for it.
    no_flow,
    /// The flow was refused: the client identity is not allowed.
    denied,
    /// A queue was full: the flow's backlog while it was being set up,
    /// the socket toward the app, or quinn's receive buffer.
    dropped_overflow,
    /// Not a datagram of ours: no flow id.
    malformed,
}

/// Labels of the flow and byte series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    /// `outbound` or `inbound`.
    pub direction: Direction,
    /// The identity at the other end.
    pub peer_identity: String,
}

/// Labels of `udp_datagrams_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DatagramLabels {
    /// `outbound` or `inbound`.
    pub direction: Direction,
    /// The identity at the other end (empty before a peer is chosen).
    pub peer_identity: String,
    /// What became of the datagram.
    pub result: DatagramResult,
}

/// The UDP series of one proxy.
#[derive(Debug, Default)]
pub struct UdpMetrics {
    /// Flows open now.
    pub flows_open: Family<FlowLabels, Gauge>,
    /// Flows set up (the peer answered `connected`).
    pub flows: Family<FlowLabels, Counter>,
    /// Flows closed because no datagram went either way for their idle
    /// timeout.
    pub flows_expired: Family<FlowLabels, Counter>,
    /// Datagrams by fate.
    pub datagrams: Family<DatagramLabels, Counter>,
    /// Payload bytes forwarded.
    pub bytes: Family<FlowLabels, Counter>,
}

impl UdpMetrics {
    /// Registers every series in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "udp_flows_open",
            "UDP flows open now",
            self.flows_open.clone(),
        );
        registry.register(
            "udp_flows",
            "UDP flows set up with the peer proxy",
            self.flows.clone(),
        );
        registry.register(
            "udp_flows_expired",
            "UDP flows closed by their idle timeout",
            self.flows_expired.clone(),
        );
        registry.register(
            "udp_datagrams",
            "UDP datagrams, by what became of them",
            self.datagrams.clone(),
        );
        registry.register(
            "udp_bytes",
            "UDP payload bytes forwarded",
            self.bytes.clone(),
        );
    }

    /// Counts `n` datagrams of one fate.
    pub fn datagrams(
        &self,
        direction: Direction,
        peer_identity: &str,
        result: DatagramResult,
        n: u64,
    ) {
        if n > 0 {
            self.datagram_counter(direction, peer_identity, result)
                .inc_by(n);
        }
    }

    /// The counter of one fate, to fetch once where datagrams keep coming.
    pub fn datagram_counter(
        &self,
        direction: Direction,
        peer_identity: &str,
        result: DatagramResult,
    ) -> Counter {
        self.datagrams
            .get_or_create(&DatagramLabels {
                direction,
                peer_identity: peer_identity.to_owned(),
                result,
            })
            .clone()
    }

    /// The handles one flow updates per datagram, fetched once.
    pub fn flow(&self, direction: Direction, peer_identity: &str) -> FlowHandles {
        let labels = FlowLabels {
            direction,
            peer_identity: peer_identity.to_owned(),
        };
        let result = |result| self.datagram_counter(direction, peer_identity, result);
        FlowHandles {
            forwarded: result(DatagramResult::forwarded),
            too_large: result(DatagramResult::too_large),
            overflow: result(DatagramResult::dropped_overflow),
            no_flow: result(DatagramResult::no_flow),
            bytes: self.bytes.get_or_create(&labels).clone(),
            open: self.flows_open.get_or_create(&labels).clone(),
            opened: self.flows.get_or_create(&labels).clone(),
            expired: self.flows_expired.get_or_create(&labels).clone(),
        }
    }
}

/// One flow's counters.
#[derive(Clone, Debug)]
pub struct FlowHandles {
    /// Datagrams delivered.
    pub forwarded: Counter,
    /// Datagrams too large for the peer connection.
    pub too_large: Counter,
    /// Datagrams dropped on a full queue.
    pub overflow: Counter,
    /// Datagrams whose flow's connection was gone.
    pub no_flow: Counter,
    /// Payload bytes delivered.
    pub bytes: Counter,
    /// `udp_flows_open` of the flow's labels.
    pub open: Gauge,
    /// `udp_flows_total` of the flow's labels.
    pub opened: Counter,
    /// `udp_flows_expired_total` of the flow's labels.
    pub expired: Counter,
}

impl FlowHandles {
    /// Counts one datagram delivered.
    pub fn forwarded(&self, len: usize) {
        self.forwarded.inc();
        self.bytes.inc_by(len as u64);
    }
}
