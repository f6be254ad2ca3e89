//! UDP sockets and QUIC transport settings.
//!
//! Defaults are chosen for several Gbit/s per peer with bounded memory:
//! quinn's own defaults leave the connection receive window unbounded, cap a
//! connection at 100 concurrent streams (one per tunnelled TCP connection)
//! and use the kernel's 208 KiB socket buffers, which drop packets at speed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use quinn::congestion::CubicConfig;
use quinn::{EndpointConfig, MtuDiscoveryConfig, TransportConfig, VarInt};
use socket2::{Domain, Protocol, Socket, Type};

use crate::path_mtu;

/// Unidirectional streams an HTTP/3 peer may open: its control stream, the
/// two QPACK streams, and room for the greasing streams RFC 9114 §6.2.3
/// tells peers to send. Tunnel peers open none; the accepting side cannot
/// know which ALPN a connection will pick before the handshake, so it
/// grants these to every connection.
const HTTP3_UNI_STREAMS: u32 = 8;

/// Packets acknowledged after one that count it lost (quinn's default is
/// 3, TCP's old dupthresh). At 3, reordering on the path reads as loss and
/// halves the congestion window each time: measured by tests/faults.rs on
/// a 100 ms round trip, 0.1% of packets reordered by 5 ms cut a transfer
/// from 9.6 to 0.75–1.25 MiB/s, 1% to 0.26. At 1,000 the count never
/// decides in practice and loss is found by time alone (9/8 of the round
/// trip, RFC 9002 §6.1.2; the reordering window TCP's RACK keeps too):
/// the same 1% reordering then costs nothing (8.6 MiB/s), and random loss
/// on loopback recovers faster too (1%: 26 → 36 MiB/s, 5%: 4.2 → 8.3).
const REORDERING_PACKETS: u32 = 1000;

/// Transport knobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportSettings {
    /// Largest UDP payload. `None` (the default) discovers it per peer:
    /// packets start at 1200 bytes and quinn's path MTU discovery probes
    /// up to the route's interface MTU minus headers
    /// ([`Self::payload_bounds`]).
    /// `Some(n)` sends `n`-byte packets from the start and never probes
    /// (for paths that drop probes, or to pin a size in a benchmark).
    pub max_udp_payload: Option<u16>,
    /// The largest path MTU discovery probes for (capped at 9001):
    /// [`path_mtu::DEFAULT_MAX_PATH_MTU`] unless a jumbo network opts in.
    pub max_path_mtu: u32,
    /// Bytes one stream may have in flight: bounds one TCP connection's buffer.
    pub stream_window: u32,
    /// Bytes one peer connection may have in flight in each direction: the
    /// per-peer memory budget.
    pub connection_window: u32,
    /// Concurrent streams a peer may open at first (tunnelled connections).
    /// The inbound side raises the limit as streams fill it, up to
    /// [`Self::max_streams`]: quinn keeps bookkeeping for every allowed
    /// stream from the start (two map entries each), and a limit of 16,384
    /// up front tripled the handshake's CPU and cost ~3 MB per connection.
    pub initial_streams: u32,
    /// The most concurrent streams one peer connection may carry.
    pub max_streams: u32,
    /// Keep-alive period while a connection exists.
    pub keep_alive: Duration,
    /// A connection silent for this long (no keep-alive either) is dead.
    pub idle_timeout: Duration,
    /// UDP socket buffer size asked of the kernel.
    pub socket_buffer: usize,
}

impl Default for TransportSettings {
    fn default() -> Self {
        Self {
            max_udp_payload: None,
            max_path_mtu: path_mtu::DEFAULT_MAX_PATH_MTU,
            stream_window: 8 * 1024 * 1024,
            connection_window: 32 * 1024 * 1024,
            initial_streams: 256,
            max_streams: 64 * 1024,
            // A dead peer is noticed within ten seconds; three keep-alives
            // fit in that window, so one lost packet does not kill a peer.
            keep_alive: Duration::from_millis(3333),
            idle_timeout: Duration::from_secs(10),
            socket_buffer: 8 * 1024 * 1024,
        }
    }
}

/// quinn's buffer of UDP datagrams (RFC 9221) each way, per connection:
/// past it the oldest are dropped (counted by the proxy). quinn's default
/// is 1.25 MB, but each received datagram keeps its whole receive batch
/// alive (up to 64 KiB), so a backlog of small datagrams pinned 150 MB in
/// a flood (benches/udp.rs, unlimited rate); 256 KiB is 12 ms at
/// 200 Mbit/s, ample for a reader that keeps up.
pub const DATAGRAM_BUFFER: usize = 256 * 1024;

impl TransportSettings {
    /// Transport config for connections we accept (the peer opens
    /// streams), when the peer's address is not known.
    pub fn server_transport(&self) -> Arc<TransportConfig> {
        self.server_transport_for(None)
    }

    /// Transport config for a connection accepted from `peer`: path MTU
    /// discovery is bounded by the route toward it.
    pub fn server_transport_for(&self, peer: Option<IpAddr>) -> Arc<TransportConfig> {
        Arc::new(self.transport(
            self.initial_streams.min(self.max_streams),
            HTTP3_UNI_STREAMS,
            peer,
        ))
    }

    /// The stream limit to grant a connection that has `open` streams under
    /// `limit`: doubled once three quarters are in use, so the peer's next
    /// streams are granted before it runs out.
    pub fn next_stream_limit(&self, open: u64, limit: u64) -> Option<u64> {
        let max = u64::from(self.max_streams);
        (open * 4 >= limit * 3 && limit < max).then(|| (limit * 2).min(max))
    }

    /// Transport config for connections we open (the peer never opens
    /// streams), when the peer's address is not known.
    pub fn client_transport(&self) -> Arc<TransportConfig> {
        self.client_transport_to(None)
    }

    /// Transport config for a connection we open to `peer`.
    pub fn client_transport_to(&self, peer: Option<IpAddr>) -> Arc<TransportConfig> {
        Arc::new(self.transport(0, 0, peer))
    }

    /// Transport config for HTTP/3 connections we open: the server opens
    /// no request stream, only its control and QPACK streams.
    pub fn http3_client_transport_to(&self, peer: Option<IpAddr>) -> Arc<TransportConfig> {
        Arc::new(self.transport(0, HTTP3_UNI_STREAMS, peer))
    }

    /// Path MTU discovery's bounds toward `peer`: (first packets'
    /// payload, the least quinn falls back to, the ceiling of its probes).
    ///
    /// - A routed peer starts at QUIC's 1200, which every path carries
    ///   (a handshake whose packets a smaller hop further on drops never
    ///   completes, and black-hole detection does not run before it is
    ///   done), and probes up to its interface's payload; quinn falls back
    ///   to 1200 when losses look like a smaller hop (a tunnel, IPsec).
    /// - A loopback peer keeps 1452 and is not probed (see
    ///   [`path_mtu::LARGEST_MTU`]).
    /// - A peer with no known route starts at 1200, all that is safe.
    /// - A fixed `max_udp_payload` is used from the start and never left.
    pub fn payload_bounds(&self, peer: Option<IpAddr>) -> PayloadBounds {
        use path_mtu::{FALLBACK_PAYLOAD, MIN_PAYLOAD};
        let fixed = |n: u16| PayloadBounds {
            initial: n,
            min: n,
            ceiling: n,
        };
        if let Some(n) = self.max_udp_payload {
            return fixed(n.clamp(MIN_PAYLOAD, path_mtu::MAX_PAYLOAD));
        }
        match peer.map(|p| path_mtu::path_to(p, self.max_path_mtu)) {
            Some(path_mtu::PathKind::Loopback) => fixed(FALLBACK_PAYLOAD),
            Some(path_mtu::PathKind::Routed(ceiling)) => PayloadBounds {
                initial: MIN_PAYLOAD,
                min: MIN_PAYLOAD,
                ceiling,
            },
            Some(path_mtu::PathKind::Unknown) | None => PayloadBounds {
                initial: MIN_PAYLOAD,
                min: MIN_PAYLOAD,
                ceiling: FALLBACK_PAYLOAD,
            },
        }
    }

    fn transport(
        &self,
        remote_bidi: u32,
        remote_uni: u32,
        peer: Option<IpAddr>,
    ) -> TransportConfig {
        let mut t = TransportConfig::default();
        let PayloadBounds {
            initial,
            min,
            ceiling,
        } = self.payload_bounds(peer);
        t.max_concurrent_bidi_streams(VarInt::from_u32(remote_bidi))
            .max_concurrent_uni_streams(VarInt::from_u32(remote_uni))
            .stream_receive_window(VarInt::from_u32(self.stream_window))
            .receive_window(VarInt::from_u32(self.connection_window))
            .send_window(u64::from(self.connection_window))
            .keep_alive_interval(Some(self.keep_alive))
            .initial_mtu(initial)
            .min_mtu(min)
            .packet_threshold(REORDERING_PACKETS)
            .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER))
            .datagram_send_buffer_size(DATAGRAM_BUFFER);
        // Idle timeouts above 2^62 ms are impossible; ours are seconds.
        if let Ok(idle) = quinn::IdleTimeout::try_from(self.idle_timeout) {
            t.max_idle_timeout(Some(idle));
        }
        if ceiling > initial {
            let mut discovery = MtuDiscoveryConfig::default();
            discovery
                .upper_bound(ceiling)
                // A path's MTU changes when routes do; a lost size is
                // retried sooner than quinn's minute.
                .black_hole_cooldown(Duration::from_secs(10));
            t.mtu_discovery_config(Some(discovery));
        } else {
            t.mtu_discovery_config(None);
        }
        // The initial window must cover at least ten full packets, or a
        // connection with a large fixed payload stalls without an error;
        // RFC 9002's 14,720 bytes otherwise.
        let mut cubic = CubicConfig::default();
        cubic.initial_window((u64::from(initial) * 10).max(14_720));
        t.congestion_controller_factory(Arc::new(cubic));
        t
    }

    /// Endpoint config: the largest UDP payload we accept (advertised to
    /// peers, so it also caps what their discovery probes). Discovering,
    /// that is the largest any interface here carries: quinn sizes its
    /// receive buffers from it, but they are zeroed lazily by the kernel
    /// and only the bytes received touch memory.
    pub fn endpoint_config(&self) -> EndpointConfig {
        let mut c = EndpointConfig::default();
        let largest = match self.max_udp_payload {
            Some(fixed) => fixed,
            None => path_mtu::largest_payload(self.max_path_mtu),
        };
        // Values below 1200 are refused by quinn; ours are clamped above.
        let _ = c.max_udp_payload_size(largest.clamp(path_mtu::MIN_PAYLOAD, path_mtu::MAX_PAYLOAD));
        c
    }
}

/// UDP payload sizes of one peer connection, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadBounds {
    /// The first packets' size.
    pub initial: u16,
    /// What quinn falls back to when it judges the path a black hole.
    pub min: u16,
    /// The largest size probed (probing is off when it is `initial`).
    pub ceiling: u16,
}

/// Binds a UDP socket with large buffers and wraps it in a quinn endpoint.
pub fn bind(
    addr: SocketAddr,
    settings: &TransportSettings,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // `[::]` serves IPv4 peers too, whatever the host's bindv6only.
        socket.set_only_v6(false)?;
    }
    set_buffers(&socket, settings.socket_buffer);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    quinn::Endpoint::new(
        settings.endpoint_config(),
        server,
        socket.into(),
        Arc::new(quinn::TokioRuntime),
    )
}

/// Asks for `size`-byte buffers; warns once per process when the kernel caps
/// them (`net.core.rmem_max` / `wmem_max`), since throughput suffers then.
fn set_buffers(socket: &Socket, size: usize) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let _ = socket.set_recv_buffer_size(size);
    let _ = socket.set_send_buffer_size(size);
    // Linux reports twice the usable size it granted.
    let got_recv = socket.recv_buffer_size().unwrap_or(0) / 2;
    let got_send = socket.send_buffer_size().unwrap_or(0) / 2;
    if (got_recv < size || got_send < size) && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            wanted = size,
            recv = got_recv,
            send = got_send,
            "the kernel capped UDP socket buffers; raise net.core.rmem_max and net.core.wmem_max for full throughput"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_limits_grow_before_they_run_out_and_stop_at_the_cap() {
        let t = TransportSettings::default();
        assert_eq!(t.next_stream_limit(100, 256), None);
        assert_eq!(t.next_stream_limit(192, 256), Some(512));
        assert_eq!(t.next_stream_limit(60_000, 65_536), None);
        assert_eq!(t.next_stream_limit(40_000, 40_000), Some(65_536));
    }
}
