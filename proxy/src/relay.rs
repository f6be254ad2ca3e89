//! Relaying bytes between a TCP socket and a QUIC stream.
//!
//! Both directions run together and each carries end-of-stream faithfully:
//! a TCP FIN becomes a QUIC FIN and back (half-close works), a TCP reset
//! becomes a QUIC stream reset and back. Nothing is buffered beyond one read:
//! when the far side is slow, QUIC flow control stops our writes, so we stop
//! reading, and TCP flow control slows the sender.
//!
//! Buffers exist only while data moves: an idle connection holds none. A read
//! starts with a small buffer and grows to [`MAX_CHUNK`] when reads fill it;
//! the filled part is handed to quinn without a copy.

use std::io::{self, IoSlice};
use std::net::Shutdown;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use phoenix_api::header::{self, Status};
use quinn::{RecvStream, SendStream, VarInt};
use socket2::SockRef;
use tokio::net::TcpStream;

use crate::metrics::TcpHandles;

/// Largest chunk read or written at once.
pub const MAX_CHUNK: usize = 64 * 1024;
const MIN_CHUNK: usize = 4 * 1024;
/// QUIC frames gathered into one `writev`.
const WRITE_BATCH: usize = 16;

/// QUIC application error code of a stream reset mirroring a TCP reset.
pub const RESET_CODE: VarInt = VarInt::from_u32(1);

/// How long the peer has to answer a connect request.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What comes first from the QUIC side.
pub enum Start<'a> {
    /// Payload that arrived with the request header (inbound side).
    Payload(Bytes),
    /// The peer's connect response (outbound side); its status is reported
    /// to the callback. App bytes flow to the peer meanwhile, so a
    /// client-first protocol spends no extra round trip.
    Response(&'a (dyn Fn(Status) + Sync)),
}

/// How a relay ended when it did not end cleanly.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The peer answered the connect request with a refusal.
    #[error("peer refused the connection: {}", .0.as_str())]
    Refused(Status),
    /// The peer's answer was missing, late or malformed.
    #[error("peer sent no valid connect response")]
    BadResponse,
    /// The local socket failed (often: reset by the app).
    #[error("local socket failed")]
    Local(#[source] io::Error),
    /// The peer reset or stopped the stream, or the connection died.
    #[error("peer stream failed")]
    Peer,
    /// No bytes moved either way for the service's idle timeout.
    #[error("idle for {0:?}")]
    Idle(Duration),
}

/// When bytes last moved, for idle timeouts.
struct Activity {
    start: tokio::time::Instant,
    /// Milliseconds after `start` of the last read on either side.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Returns once nothing has moved for `limit`.
    async fn idle(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = self.start + last + limit;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Relays until both directions have finished or one has failed, or, with
/// `idle`, until no bytes have moved either way for that long.
///
/// On failure or idleness the TCP socket is reset (linger 0) and the stream
/// reset, so both apps see an abort rather than a clean close.
pub async fn relay(
    tcp: TcpStream,
    mut send: SendStream,
    mut recv: RecvStream,
    start: Start<'_>,
    counters: &TcpHandles,
    idle: Option<Duration>,
) -> Result<(), RelayError> {
    let activity = idle.map(|_| Activity::new());
    let both = async {
        tokio::try_join!(
            tcp_to_quic(&tcp, &mut send, counters, activity.as_ref()),
            quic_to_tcp(&mut recv, &tcp, start, counters, activity.as_ref())
        )
        .map(|_| ())
    };
    let result = match (idle, &activity) {
        (Some(limit), Some(a)) => tokio::select! {
            r = both => r,
            () = a.idle(limit) => Err(RelayError::Idle(limit)),
        },
        _ => both.await,
    };
    if result.is_err() {
        abort(&tcp, &mut send, &mut recv);
    }
    result
}

/// Resets both sides: the app sees a TCP RST, the peer a stream reset.
pub fn abort(tcp: &TcpStream, send: &mut SendStream, recv: &mut RecvStream) {
    let _ = tcp.set_zero_linger();
    let _ = send.reset(RESET_CODE);
    let _ = recv.stop(RESET_CODE);
}

async fn tcp_to_quic(
    tcp: &TcpStream,
    send: &mut SendStream,
    counters: &TcpHandles,
    activity: Option<&Activity>,
) -> Result<(), RelayError> {
    let mut chunk = MIN_CHUNK;
    loop {
        tcp.readable().await.map_err(RelayError::Local)?;
        let mut buf = BytesMut::with_capacity(chunk);
        // Drain what is readable into this buffer, then hand it over.
        match tcp.try_read_buf(&mut buf) {
            Ok(0) => {
                // The app half-closed: pass the FIN on. A stream the peer
                // already stopped is not an error for us here.
                let _ = send.finish();
                return Ok(());
            }
            Ok(n) => {
                counters.read.inc_by(n as u64);
                if let Some(a) = activity {
                    a.touch();
                }
                chunk = if n == chunk {
                    (chunk * 2).min(MAX_CHUNK)
                } else {
                    chunk.max(MIN_CHUNK)
                };
                send.write_chunk(buf.freeze())
                    .await
                    .map_err(|_| RelayError::Peer)?;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(RelayError::Local(e)),
        }
    }
}

async fn quic_to_tcp(
    recv: &mut RecvStream,
    tcp: &TcpStream,
    start: Start<'_>,
    counters: &TcpHandles,
    activity: Option<&Activity>,
) -> Result<(), RelayError> {
    let initial = match start {
        Start::Payload(bytes) => bytes,
        Start::Response(report) => {
            let (status, rest) = read_response(recv).await?;
            report(status);
            if status != Status::Connected {
                return Err(RelayError::Refused(status));
            }
            rest
        }
    };
    if !initial.is_empty() {
        write_all(tcp, &mut [initial], counters).await?;
    }
    // Several QUIC frames per `writev`: one TCP send per ~1.3 KB frame would
    // cost a syscall per packet.
    let mut chunks: [Bytes; WRITE_BATCH] = Default::default();
    loop {
        match recv.read_chunks(&mut chunks).await {
            Ok(Some(n)) => {
                if let Some(a) = activity {
                    a.touch();
                }
                write_all(tcp, &mut chunks[..n], counters).await?
            }
            Ok(None) => {
                // The peer half-closed: FIN our write side, keep reading.
                let _ = SockRef::from(tcp).shutdown(Shutdown::Write);
                return Ok(());
            }
            Err(_) => return Err(RelayError::Peer),
        }
    }
}

/// Writes every chunk, in order, with vectored writes; consumed chunks are
/// released as they go.
async fn write_all(
    tcp: &TcpStream,
    chunks: &mut [Bytes],
    counters: &TcpHandles,
) -> Result<(), RelayError> {
    let mut first = 0;
    while first < chunks.len() {
        tcp.writable().await.map_err(RelayError::Local)?;
        let mut slices = [IoSlice::new(&[]); WRITE_BATCH];
        let pending = &chunks[first..];
        for (slot, chunk) in slices.iter_mut().zip(pending) {
            *slot = IoSlice::new(chunk);
        }
        match tcp.try_write_vectored(&slices[..pending.len().min(WRITE_BATCH)]) {
            Ok(mut n) => {
                counters.write.inc_by(n as u64);
                while n > 0 {
                    let chunk = &mut chunks[first];
                    if n >= chunk.len() {
                        n -= chunk.len();
                        *chunk = Bytes::new();
                        first += 1;
                    } else {
                        chunk.advance(n);
                        n = 0;
                    }
                }
                // Skip chunks that were empty to begin with.
                while first < chunks.len() && chunks[first].is_empty() {
                    first += 1;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(RelayError::Local(e)),
        }
    }
    Ok(())
}

/// Reads the peer's connect response, returning any payload that followed it.
pub(crate) async fn read_response(recv: &mut RecvStream) -> Result<(Status, Bytes), RelayError> {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + RESPONSE_TIMEOUT;
    loop {
        match header::decode_response(&buf) {
            Ok(Some((resp, used))) => {
                return Ok((resp.status, Bytes::copy_from_slice(&buf[used..])));
            }
            Ok(None) => {}
            Err(_) => return Err(RelayError::BadResponse),
        }
        let chunk = tokio::time::timeout_at(deadline, recv.read_chunk(header::MAX_BODY_LEN, true))
            .await
            .map_err(|_| RelayError::BadResponse)?
            .map_err(|_| RelayError::Peer)?
            .ok_or(RelayError::BadResponse)?;
        buf.extend_from_slice(&chunk.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The idle timer on tokio's paused clock: activity pushes the deadline
    /// out, and the timer fires `limit` after the last touch, not after the
    /// first or on a fixed period.
    #[tokio::test(start_paused = true)]
    async fn the_idle_timer_fires_a_limit_after_the_last_activity() {
        let limit = Duration::from_secs(60);
        let activity = Activity::new();
        let start = tokio::time::Instant::now();
        // Bytes every 50 s for 5 minutes: never idle that long.
        let busy = async {
            for _ in 0..6 {
                tokio::time::sleep(Duration::from_secs(50)).await;
                activity.touch();
            }
        };
        tokio::select! {
            () = activity.idle(limit) => panic!("idle while bytes moved every 50 s"),
            () = busy => {}
        }
        assert_eq!(start.elapsed(), Duration::from_secs(300));
        // Then silence: it fires 60 s after the last touch.
        activity.idle(limit).await;
        assert_eq!(start.elapsed(), Duration::from_secs(360));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_with_no_activity_is_idle_after_the_limit() {
        let activity = Activity::new();
        let start = tokio::time::Instant::now();
        activity.idle(Duration::from_secs(5)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
