//! HTTP to a peer from before HTTP/3, as met during a rolling upgrade.
//!
//! Such a peer offers only the tunnel ALPN, so the HTTP connector's
//! handshake lands on it (the connector offers both). Each request then
//! goes on a tunnel stream of its own, as HTTP/1.1 or HTTP/2 bytes, which
//! that peer relays to its app like any TCP connection: the request still
//! crosses under mutual TLS to the endpoint chosen for it, only the
//! per-request policy and `phoenix-client-id` of the newer peer are
//! missing until it is upgraded too.

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use phoenix_api::header::{ConnectRequest, Status};
use tracing::Instrument;

use super::app::AppProtocol;
use super::detect::Prefixed;
use crate::metrics::{Direction, Metrics};
use crate::pool::PeerConn;

/// Why a request could not be sent through a tunnel stream.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    /// The tunnel header could not be encoded (a name too long).
    #[error("cannot encode the tunnel header")]
    Header(#[source] phoenix_api::header::HeaderError),
    /// The peer's connection took no new stream.
    #[error("cannot open a stream to the peer")]
    Open(#[source] quinn::ConnectionError),
    /// The header could not be written.
    #[error("cannot write the tunnel header")]
    Write(#[source] quinn::WriteError),
    /// The peer answered without a valid connect response.
    #[error("peer sent no valid connect response")]
    Response(#[source] crate::relay::RelayError),
    /// The peer refused the stream (no route, denied, app unreachable).
    #[error("peer refused the stream: {}", .0.as_str())]
    Refused(Status),
    /// HTTP inside the stream failed.
    #[error("HTTP inside the tunnel stream failed")]
    Http(#[source] hyper::Error),
}

/// Sends `req` (already in `protocol`'s version, hop-by-hop and mesh
/// headers gone) to `peer` on a tunnel stream named by `header`.
pub async fn send(
    metrics: &Metrics,
    peer: &PeerConn,
    header: &ConnectRequest,
    req: Request<super::respond::ProxyBody>,
    protocol: AppProtocol,
) -> Result<Response<Incoming>, LegacyError> {
    let mut head = Vec::with_capacity(64);
    header.encode(&mut head).map_err(LegacyError::Header)?;
    let (mut send, mut recv) = peer.conn.open_bi().await.map_err(LegacyError::Open)?;
    send.write_all(&head).await.map_err(LegacyError::Write)?;
    let (status, rest) = crate::relay::read_response(&mut recv)
        .await
        .map_err(LegacyError::Response)?;
    metrics.stream(Direction::outbound, status);
    if status != Status::Connected {
        return Err(LegacyError::Refused(status));
    }
    let io = TokioIo::new(Prefixed::new(rest, tokio::io::join(recv, send)));
    match protocol {
        AppProtocol::Http1 => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(LegacyError::Http)?;
            // With upgrades: a request that switches protocols
            // ([`super::upgrade`]) goes on as bytes once answered.
            tokio::spawn(drive(conn.with_upgrades()).in_current_span());
            sender.send_request(req).await.map_err(LegacyError::Http)
        }
        AppProtocol::Http2 => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(LegacyError::Http)?;
            tokio::spawn(drive(conn).in_current_span());
            sender.send_request(req).await.map_err(LegacyError::Http)
        }
    }
}

/// Runs one request's connection until its response has ended (the
/// sender is dropped with the request, so the connection closes then, and
/// the tunnel stream with it).
async fn drive<C>(conn: C)
where
    C: std::future::Future<Output = Result<(), hyper::Error>>,
{
    if let Err(error) = conn.await {
        tracing::debug!(%error, "HTTP inside a tunnel stream ended with an error");
    }
}
