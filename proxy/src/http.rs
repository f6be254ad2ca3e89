//! The HTTP path: connections that speak HTTP/1.1 or HTTP/2 are carried
//! request by request, each request on its own HTTP/3 stream to a peer
//! proxy, so one slow or lost request never holds up another.
//!
//! The outbound proxy serves the app's connection with hyper
//! ([`outbound`]), picks an endpoint for every request (so one HTTP/2 or
//! gRPC connection is spread over every pod of the service) and sends the
//! request over an HTTP/3 connection of its own to that peer (ALPN `h3`,
//! beside the tunnel connection, which keeps carrying opaque TCP). The
//! inbound proxy serves HTTP/3 ([`inbound`]), checks the service's
//! allow-list for every request, and forwards it to the app over pooled
//! connections in the version the app speaks ([`app`]). Which connections
//! take this path is decided in [`detect`]; which service a request goes
//! to, when Gateway API routes are attached to the one called, in
//! [`route`].

pub mod app;
pub mod body;
pub mod deadline;
pub mod detect;
pub mod headers;
pub mod inbound;
pub mod legacy;
pub mod outbound;
pub mod replay;
pub mod respond;
pub mod retry;
pub mod route;
pub mod upgrade;
