//! The wire contract between Phoenix proxies and the Phoenix control plane.
//!
//! Everything that crosses a process boundary and must stay compatible across
//! versions lives here, and nothing else: the tunnel header that starts every
//! proxied stream ([`header`]), the control-plane messages ([`control`]) and
//! their framing ([`frame`]), the config snapshots they carry
//! ([`snapshot`]) and what each wire version added ([`compat`]),
//! the HTTP routes of a service ([`route`]), the classification of a client's first bytes ([`detect`], pure, so the
//! proxy's protocol detection is fuzzed without sockets), workload identities ([`identity`]) and service names
//! ([`service`]). The crate does no I/O:
//! the codecs are pure functions over bytes, so they are fuzzed and tested
//! without sockets.

pub mod compat;
pub mod control;
pub mod datagram;
pub mod detect;
pub mod duration;
pub mod frame;
pub mod grpc_timeout;
pub mod header;
pub mod identity;
pub mod protocol;
pub mod route;
pub mod secret;
pub mod service;
pub mod snapshot;
pub mod tls_policy;

pub use identity::SpiffeId;
pub use service::ServiceName;
