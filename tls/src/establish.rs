//! Finishing a QUIC handshake, once for every component: the outcome is
//! classified ([`HandshakeFailure`]), the negotiated key-exchange group and
//! the peer's signature scheme read from the live handshake
//! ([`Negotiation`]), and all of it recorded where the
//! caller counts them ([`Record`]). The tunnel's server and client and the
//! control plane's server all go through here, so each counts the same
//! reasons under the same names.
//!
//! The crate has no async runtime: a client's deadline is a future the
//! caller makes with its own timer.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use phoenix_api::SpiffeId;

use crate::Negotiation;
use crate::handshake::{ClientAuth, HandshakeFailure, peer_identity};
use crate::kx::group_name;
use crate::sig::scheme_name;

/// Where handshake outcomes are counted.
pub trait Record {
    /// A handshake succeeded with `kx_group` (its IANA name), the peer
    /// authenticated with `sig_scheme` (`none` for an anonymous client).
    fn success(&self, kx_group: &'static str, sig_scheme: &'static str);
    /// A handshake failed for `reason`.
    fn failure(&self, reason: HandshakeFailure);
}

/// An established connection.
#[derive(Debug)]
pub struct Established {
    /// The connection.
    pub conn: quinn::Connection,
    /// The key-exchange group its handshake negotiated.
    pub kx_group: &'static str,
    /// The scheme of the peer's handshake signature (`none`: no certificate).
    pub sig_scheme: &'static str,
    /// The peer's SPIFFE ID; always present when it was required.
    pub peer: Option<SpiffeId>,
}

/// A handshake that failed: why (the metric label), and quinn's error.
#[derive(Debug, thiserror::Error)]
#[error("handshake failed: {}", .reason.as_str())]
pub struct Failed {
    /// The class of failure.
    pub reason: HandshakeFailure,
    /// What quinn reported (none for an identity refused after the handshake).
    #[source]
    pub error: Option<quinn::ConnectionError>,
}

impl Failed {
    fn from_quinn(error: quinn::ConnectionError) -> Self {
        Self {
            reason: HandshakeFailure::classify(&error),
            error: Some(error),
        }
    }
}

/// QUIC application close code: the peer has no SPIFFE identity.
const CLOSE_NO_IDENTITY: quinn::VarInt = quinn::VarInt::from_u32(2);

/// Accepts `incoming` with `config` and its `lease` (both from one
/// `TlsContext::server` call). With `client_auth` required, a client whose
/// certificate carries no SPIFFE ID is closed and counted as `bad_identity`.
pub async fn accept(
    incoming: quinn::Incoming,
    config: quinn::ServerConfig,
    lease: Negotiation,
    client_auth: ClientAuth,
    record: &(dyn Record + Sync),
) -> Result<Established, Failed> {
    // quinn processes the ClientHello inside `accept_with`, so a peer with
    // no group in common fails there; the rest fails in the handshake.
    let handshake = match incoming.accept_with(Arc::new(config)) {
        Ok(connecting) => connecting.await,
        Err(e) => Err(e),
    };
    let established = finish(handshake, lease, record)?;
    if matches!(client_auth, ClientAuth::Required) && established.peer.is_none() {
        // The verifier required a chain to our root; a leaf without a
        // SPIFFE ID is still not a mesh workload.
        established
            .conn
            .close(CLOSE_NO_IDENTITY, b"no SPIFFE identity");
        let failed = Failed {
            reason: HandshakeFailure::BadIdentity,
            error: None,
        };
        record.failure(failed.reason);
        return Err(failed);
    }
    record.success(established.kx_group, established.sig_scheme);
    Ok(established)
}

/// Completes a client handshake begun with `Endpoint::connect_with`, with
/// the `lease` of its config. If `deadline` completes first, the handshake
/// is abandoned as timed out (an unreachable peer must not hold the caller
/// for QUIC's whole idle timeout).
pub async fn connect(
    connecting: quinn::Connecting,
    lease: Negotiation,
    deadline: impl Future<Output = ()>,
    record: &(dyn Record + Sync),
) -> Result<Established, Failed> {
    let mut connecting = pin!(connecting);
    let mut deadline = pin!(deadline);
    let handshake = poll_fn(|cx| {
        if let Poll::Ready(outcome) = connecting.as_mut().poll(cx) {
            return Poll::Ready(outcome);
        }
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(quinn::ConnectionError::TimedOut));
        }
        Poll::Pending
    })
    .await;
    let established = finish(handshake, lease, record)?;
    record.success(established.kx_group, established.sig_scheme);
    Ok(established)
}

fn finish(
    handshake: Result<quinn::Connection, quinn::ConnectionError>,
    lease: Negotiation,
    record: &(dyn Record + Sync),
) -> Result<Established, Failed> {
    let conn = handshake.map_err(|error| {
        let failed = Failed::from_quinn(error);
        record.failure(failed.reason);
        failed
    })?;
    let kx_group = lease.group().map(group_name).unwrap_or("unknown");
    let sig_scheme = lease.peer_signature().map(scheme_name).unwrap_or("none");
    drop(lease);
    let peer = peer_identity(&conn);
    Ok(Established {
        conn,
        kx_group,
        sig_scheme,
        peer,
    })
}
