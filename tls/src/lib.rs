//! TLS for Phoenix: one post-quantum rustls setup shared by proxy and control plane.
//!
//! - [`provider`]: the aws-lc-rs provider restricted to TLS 1.3, with the
//!   key-exchange groups and cipher suites in an explicit order. It is never
//!   installed as the process default (the Kubernetes client must still reach
//!   API servers that lack ML-KEM).
//! - [`kx`] and [`sig`]: record which group each handshake negotiated and
//!   which signature scheme authenticated the peer, since quinn exposes
//!   neither; [`negotiated`] holds both for one connection.
//! - [`verify`] and [`spiffe`]: certificates name workloads by SPIFFE URI SAN,
//!   not DNS, so server names are checked against the identity the control
//!   plane expects, and client identities are read from the chain.
//! - [`credentials`]: the proxy's own certificate, swapped on renewal without
//!   touching established connections.
//! - [`handshake`]: per-connection quinn client and server configs.
//! - [`tokens`]: address-validation tokens, so returning peers skip QUIC's
//!   anti-amplification wait (it costs a round trip with ML-DSA certificates).
//! - [`path_mtu`]: the ceiling of path MTU discovery toward a peer, from
//!   the route's interface MTU.
//! - [`endpoint`]: UDP sockets and QUIC transport settings tuned for throughput
//!   with bounded memory.

pub mod credentials;
pub mod endpoint;
pub mod establish;
pub mod frames;
pub mod handshake;
pub mod kx;
pub mod negotiated;
pub mod path_mtu;
pub mod provider;
pub mod sig;
pub mod spiffe;
pub mod tokens;
pub mod verify;

pub use credentials::Credentials;
pub use handshake::{HandshakeFailure, TlsContext};
pub use kx::KxLease;
pub use negotiated::Negotiation;
