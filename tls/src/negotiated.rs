//! What one handshake negotiated: its key-exchange group and the signature
//! scheme that authenticated the peer, read from the live handshake.
//!
//! A [`Negotiation`] is made with each connection's config
//! ([`TlsContext::client`](crate::TlsContext::client) and
//! [`server`](crate::TlsContext::server)) and read once the handshake is
//! done; [`establish`](crate::establish) does both for every component.

use std::sync::Arc;

use rustls::{NamedGroup, SignatureScheme};

use crate::KxLease;
use crate::sig;

/// The recorders of one handshake.
#[derive(Debug)]
pub struct Negotiation {
    kx: KxLease,
    signature: Arc<sig::Slot>,
}

impl Negotiation {
    /// Fresh recorders for one handshake.
    pub fn new() -> Self {
        Self {
            kx: KxLease::acquire(),
            signature: Arc::default(),
        }
    }

    /// The key-exchange recorders, for the connection's provider.
    pub fn kx(&self) -> &KxLease {
        &self.kx
    }

    /// Where the connection's certificate verifier records.
    pub fn signature_slot(&self) -> Arc<sig::Slot> {
        self.signature.clone()
    }

    /// The group the handshake completed with.
    pub fn group(&self) -> Option<NamedGroup> {
        self.kx.negotiated()
    }

    /// The scheme of the peer's handshake signature. `None` when the peer
    /// presented no certificate (a bootstrapping proxy at the control plane).
    pub fn peer_signature(&self) -> Option<SignatureScheme> {
        self.signature.verified()
    }
}

impl Default for Negotiation {
    fn default() -> Self {
        Self::new()
    }
}
