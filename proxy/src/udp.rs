//! UDP through the mesh: each flow set up on a tunnel stream, its datagrams
//! carried as QUIC datagrams (RFC 9221) on the same PQ mutual-TLS
//! connection to the peer proxy as the TCP tunnel streams.
//!
//! Why raw QUIC datagrams and not MASQUE's CONNECT-UDP: HTTP rides its own
//! HTTP/3 connection per peer (`Shared::http_pool`), while opaque traffic
//! rides the tunnel connection with our own stream header; UDP is opaque
//! traffic, so it rides the tunnel connection, set up by the same header
//! (its service names `/udp`, a critical field: a proxy from before UDP
//! refuses the flow instead of dialling TCP) and named in each datagram by
//! the quarter stream id of that setup stream, as RFC 9297 names HTTP
//! datagrams ([`phoenix_api::datagram`]).
//!
//! Semantics stay UDP's: no retransmission, no order promised, a datagram
//! larger than the connection's datagram size is dropped and counted (never
//! fragmented, never sent in clear), every queue is bounded and a full one
//! drops and counts. A flow that carries nothing either way for its idle
//! timeout ends (60 s; 10 s for DNS, port 53), counted.
//!
//! - `demux.rs`: per peer connection, the reader of its datagrams and the
//!   table from flow id to where the payload goes.
//! - `outbound.rs`: the explicit UDP listener of an upstream, one flow per
//!   client address.
//! - `inbound.rs`: a flow's server side, one connected UDP socket toward
//!   the app per flow, so replies return to the right client.

pub mod demux;
pub mod inbound;
pub mod outbound;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// A flow's idle timeout when its service sets none.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(60);
/// A DNS flow's (port 53): a query and its answer, then nothing; a
/// resolver that waits longer has retried already.
pub const DNS_IDLE: Duration = Duration::from_secs(10);
/// The largest UDP payload (what one `recv` may return).
pub const MAX_PAYLOAD: usize = 65_535;
/// Datagrams a flow holds while its setup is under way; more are dropped
/// (counted): a client that bursts before the peer answered loses the
/// excess, as it would in a full socket buffer.
pub const PENDING_MAX: usize = 64;

/// The receive and send buffers asked of every UDP socket toward apps: at
/// 200 Mbit/s of 1200-byte datagrams the kernel's default 208 KiB is 10 ms
/// of traffic, and a proxy descheduled that long on a busy node drops
/// (measured: 1% to 7% of iperf3's datagrams with two CPU hogs on two
/// cores). The kernel caps it at `net.core.rmem_max` / `wmem_max`, and
/// only what is queued takes memory.
pub const SOCKET_BUFFER: usize = 2 << 20;

/// A UDP socket bound to `addr` with [`SOCKET_BUFFER`]-byte buffers.
/// Call it inside a tokio runtime.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}

/// The idle timeout of a flow: the service's, else by its port.
pub fn idle_timeout(configured: Option<Duration>, port: Option<u16>) -> Duration {
    configured.unwrap_or(if port == Some(53) {
        DNS_IDLE
    } else {
        DEFAULT_IDLE
    })
}

/// When a flow last carried a datagram, either way: written per datagram
/// (one relaxed store), read by the flow's expiry timer.
#[derive(Debug)]
pub struct Activity {
    base: Instant,
    last_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// A datagram went through now.
    pub fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When the flow expires if nothing more goes through.
    pub fn expires(&self, idle: Duration) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_flows_expire_sooner_unless_configured() {
        assert_eq!(idle_timeout(None, Some(53)), DNS_IDLE);
        assert_eq!(idle_timeout(None, Some(5201)), DEFAULT_IDLE);
        assert_eq!(idle_timeout(None, None), DEFAULT_IDLE);
        let set = Duration::from_secs(3);
        assert_eq!(idle_timeout(Some(set), Some(53)), set);
    }

    #[tokio::test(start_paused = true)]
    async fn activity_moves_the_expiry() {
        let a = Activity::default();
        let idle = Duration::from_secs(60);
        let first = a.expires(idle);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(a.expires(idle), first, "no traffic: the deadline stays");
        a.touch();
        assert_eq!(a.expires(idle), first + Duration::from_secs(30));
    }
}
