//! Messages between a proxy and the control plane.
//!
//! They travel over QUIC streams (the same PQ mutual-TLS stack as the tunnel)
//! as frames ([`frame`](crate::frame): a 4-byte big-endian length, then
//! that many bytes of JSON, with a limit per direction). JSON keeps the
//! contract readable with standard tools (`/config` shows the same shapes).
//!
//! A proxy first asks for a certificate ([`Request::IssueCertificate`]) on a
//! server-authenticated connection, proving who it is with a bootstrap token;
//! with that certificate it opens a mutually authenticated connection and
//! subscribes ([`Request::Subscribe`]) to a stream of [`Response::Snapshot`]
//! and [`Response::Delta`] messages.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub use crate::frame::{Direction, FrameError, decode_body, encode_frame};
use crate::secret::Secret;
use crate::snapshot::{Delta, Snapshot};

pub use crate::compat::{MIN_WIRE_VERSION, WIRE_VERSION};
/// ALPN protocol of control-plane connections.
pub const ALPN_CONTROL: &[u8] = b"phoenix-control/1";
/// ALPN protocol of tunnel connections between proxies.
pub const ALPN_TUNNEL: &[u8] = b"phoenix-tunnel/1";
/// ALPN protocol of HTTP/3 connections between proxies (RFC 9114): each
/// request on its own stream, a standard protocol any HTTP/3 tool holding
/// a mesh certificate can speak.
pub const ALPN_HTTP3: &[u8] = b"h3";

/// What a proxy asks of the control plane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Request {
    /// Sign a certificate for the identity the token proves.
    #[serde(rename_all = "camelCase")]
    IssueCertificate {
        /// Bootstrap token: names the workload, and so its identity.
        token: Secret,
        /// PKCS#10 request; only its public key is used.
        csr_pem: String,
    },
    /// Stream config for the identity in the client certificate.
    #[serde(rename_all = "camelCase")]
    Subscribe {
        /// The wire version the proxy speaks.
        wire_version: u32,
        /// The proxy's QUIC address, published as its services' endpoint.
        inbound: SocketAddr,
    },
}

/// What the control plane answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Response {
    /// A signed certificate.
    #[serde(rename_all = "camelCase")]
    Certificate {
        /// PEM chain, leaf first.
        chain_pem: String,
        /// The identity the certificate carries.
        identity: String,
    },
    /// The whole config.
    Snapshot(Snapshot),
    /// A change to the config last sent.
    Delta(Delta),
    /// The request was refused.
    #[serde(rename_all = "camelCase")]
    Error {
        /// Machine-readable reason.
        code: ErrorCode,
        /// What went wrong and how to fix it.
        message: String,
    },
}

/// Why the control plane refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The token is unknown or expired.
    InvalidToken,
    /// The CSR cannot be parsed or its signature is wrong.
    InvalidCsr,
    /// The proxy speaks a wire version the control plane does not serve.
    UnsupportedVersion,
    /// Subscribing needs a client certificate.
    Unauthenticated,
    /// The identity names no workload the control plane knows.
    UnknownWorkload,
    /// The request could not be decoded.
    BadRequest,
    /// The control plane failed on its side.
    Internal,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameDecoder;

    #[test]
    fn a_request_round_trips_through_its_frame() {
        let req = Request::Subscribe {
            wire_version: WIRE_VERSION,
            inbound: "127.0.0.1:4143".parse().unwrap(),
        };
        let frame = encode_frame(&req, Direction::Request).unwrap();
        let mut decoder = FrameDecoder::new(Direction::Request);
        assert_eq!(decoder.feed(&frame).unwrap(), frame.len());
        let body = decoder.take().unwrap();
        assert_eq!(decode_body::<Request>(&body).unwrap(), req);
    }

    #[test]
    fn an_unknown_message_is_refused() {
        assert!(matches!(
            decode_body::<Request>(b"{\"type\":\"launchMissiles\"}"),
            Err(FrameError::Json(_))
        ));
    }
}
