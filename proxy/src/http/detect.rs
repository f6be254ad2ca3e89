//! Deciding what an outbound connection speaks, from its declared protocol
//! and, on `detect` ports, its first bytes read within a bound.
//!
//! Bytes read while deciding are kept ([`Prefixed`]) and replayed to
//! whichever path takes the connection, so nothing the client sent is lost.
//!
//! The bound is [`DETECT_TIMEOUT`] (10 ms) from accept: a server-first
//! protocol (MySQL, SMTP) on a `detect` port sends nothing, so its banner
//! starts at most 10 ms (plus the timer's 1 ms granularity) later than on
//! an opaque port, where nothing is read at all. HTTP clients write their
//! request as soon as they connect, well within it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use phoenix_api::detect::{self, Detected, Detection, MAX_DETECT_LEN};
use phoenix_api::protocol::Protocol;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::metrics::http::DetectResult;

/// How long a `detect` port waits for the client's first bytes.
pub const DETECT_TIMEOUT: Duration = Duration::from_millis(10);

/// How long an HTTP/1 client has to send the rest of its first request's
/// head once its request line was seen (to see whether it upgrades); past
/// it the connection is served as HTTP and the HTTP server's own header
/// timeout applies.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// What a connection will be carried as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carry {
    /// Bytes, through the tunnel.
    Opaque,
    /// HTTP/1.x, request by request.
    Http1,
    /// HTTP/2 (h2c with prior knowledge, gRPC), request by request.
    Http2,
}

/// The decision on one connection, with the bytes read to make it.
#[derive(Debug)]
pub struct Decision {
    /// How to carry it.
    pub carry: Carry,
    /// What was read (replayed first).
    pub prefix: Bytes,
    /// The verdict to count, on ports that detect (and on upgrades).
    pub counted: Option<DetectResult>,
}

/// Decides how to carry `tcp`, whose port is declared `protocol`.
/// Declared opaque and HTTP/2 read nothing; HTTP/1 (declared or detected)
/// reads its first request's head to see whether it upgrades, since an
/// upgraded connection must go on as bytes.
pub async fn decide(tcp: &mut TcpStream, protocol: Protocol) -> Decision {
    let mut buf = BytesMut::new();
    let (carry, mut counted) = match protocol {
        Protocol::Opaque => (Carry::Opaque, None),
        Protocol::Http2 => (Carry::Http2, None),
        Protocol::Http1 => (Carry::Http1, None),
        Protocol::Detect => {
            let verdict = read_until(tcp, &mut buf, DETECT_TIMEOUT, |b| match detect::detect(b) {
                Detection::Done(d) => Some(d),
                Detection::NeedMore => None,
            })
            .await;
            match verdict {
                Some(Detected::Http1) => (Carry::Http1, Some(DetectResult::http1)),
                Some(Detected::Http2) => (Carry::Http2, Some(DetectResult::http2)),
                Some(Detected::Opaque) => (Carry::Opaque, Some(DetectResult::opaque)),
                None => (Carry::Opaque, Some(DetectResult::timeout)),
            }
        }
    };
    let carry = if carry == Carry::Http1 {
        let upgrades = read_until(
            tcp,
            &mut buf,
            HEAD_TIMEOUT,
            phoenix_api::detect::head_upgrades,
        )
        .await;
        if upgrades == Some(true) {
            counted = Some(DetectResult::upgrade);
            Carry::Opaque
        } else {
            Carry::Http1
        }
    } else {
        carry
    };
    Decision {
        carry,
        prefix: buf.freeze(),
        counted,
    }
}

/// The first read's size: what most clients send first fits.
const FIRST_READ: usize = 1024;

/// Reads into `buf` until `verdict` decides, the client stops sending or
/// fails, [`MAX_DETECT_LEN`] bytes are in, or `bound` passes; `None` if
/// undecided. A verdict on bytes already read costs no wait.
async fn read_until<T>(
    tcp: &mut TcpStream,
    buf: &mut BytesMut,
    bound: Duration,
    verdict: impl Fn(&[u8]) -> Option<T>,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if !buf.is_empty()
            && let Some(v) = verdict(buf)
        {
            return Some(v);
        }
        if buf.len() >= MAX_DETECT_LEN {
            return None;
        }
        // Room for what most clients send first (a request line and a few
        // headers, an HTTP/2 preface), doubling as needed up to the bound:
        // an 8 KiB buffer per connection would cost every idle connection.
        let room = buf.len().max(FIRST_READ).min(MAX_DETECT_LEN - buf.len());
        buf.reserve(room);
        let mut limited = (&mut *tcp).take(room as u64);
        match tokio::time::timeout_at(deadline, limited.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            // End of stream, an error, or the bound: decide on what is in.
            _ => return None,
        }
    }
}

/// A stream that yields `prefix` before its own bytes: the bytes detection
/// read, handed to the HTTP server as if unread.
#[derive(Debug)]
pub struct Prefixed<T> {
    prefix: Bytes,
    io: T,
}

impl<T> Prefixed<T> {
    /// `io`, with `prefix` read first.
    pub fn new(prefix: Bytes, io: T) -> Self {
        Self { prefix, io }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // An empty slice still holds the whole detection buffer.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, out)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn a_request_line_is_http1_and_its_bytes_are_kept() {
        let (mut c, mut s) = pair().await;
        c.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
            .await
            .unwrap();
        let d = decide(&mut s, Protocol::Detect).await;
        assert_eq!(d.carry, Carry::Http1);
        assert_eq!(d.counted, Some(DetectResult::http1));
        assert_eq!(&d.prefix[..], b"GET / HTTP/1.1\r\nHost: web\r\n\r\n");
    }

    #[tokio::test]
    async fn a_websocket_upgrade_goes_on_as_bytes() {
        let (mut c, mut s) = pair().await;
        c.write_all(
            b"GET /ws HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        )
        .await
        .unwrap();
        let d = decide(&mut s, Protocol::Http1).await;
        assert_eq!(d.carry, Carry::Opaque);
        assert_eq!(d.counted, Some(DetectResult::upgrade));
        assert!(d.prefix.starts_with(b"GET /ws"));
    }

    #[tokio::test]
    async fn the_h2_preface_is_http2() {
        let (mut c, mut s) = pair().await;
        c.write_all(detect::H2_PREFACE).await.unwrap();
        let d = decide(&mut s, Protocol::Detect).await;
        assert_eq!(d.carry, Carry::Http2);
        assert_eq!(&d.prefix[..], detect::H2_PREFACE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_opaque_after_the_bound() {
        let (_c, mut s) = pair().await;
        let started = tokio::time::Instant::now();
        let d = decide(&mut s, Protocol::Detect).await;
        assert_eq!(d.carry, Carry::Opaque);
        assert_eq!(d.counted, Some(DetectResult::timeout));
        assert!(d.prefix.is_empty());
        assert_eq!(started.elapsed(), DETECT_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn declared_ports_read_nothing() {
        let (mut c, mut s) = pair().await;
        c.write_all(b"\x16\x03\x01 tls").await.unwrap();
        let started = tokio::time::Instant::now();
        for protocol in [Protocol::Opaque, Protocol::Http2] {
            let d = decide(&mut s, protocol).await;
            assert!(d.prefix.is_empty(), "{protocol:?}");
            assert_eq!(d.counted, None);
        }
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn the_prefix_is_read_before_the_stream() {
        let (mut c, s) = pair().await;
        c.write_all(b" world").await.unwrap();
        drop(c);
        let mut p = Prefixed::new(Bytes::from_static(b"hello"), s);
        let mut all = String::new();
        p.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
