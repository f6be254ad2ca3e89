//! What the control-plane server asks of where the mesh comes from.
//!
//! Two sources implement it: the mesh file with bootstrap tokens
//! ([`Hub`](crate::hub::Hub)) and the cluster with ServiceAccount tokens
//! ([`KubeSource`](crate::k8s::run::KubeSource)). The server, the
//! certificate renewal and the root rotation are written once against this
//! trait; both sources send config through the same
//! [`publish`](crate::publish) side, so a subscription is the same loop in
//! either mode.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use phoenix_api::SpiffeId;
use phoenix_api::control::ErrorCode;
use phoenix_tls::handshake::TlsPolicy;
use tokio::sync::watch;

/// A boxed future borrowing the source (trait objects cannot have `async fn`).
pub type SourceFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A refused request: the metric label, the code and message the proxy is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `result` label of the counter it is counted in.
    pub label: &'static str,
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// What went wrong and how to fix it.
    pub message: String,
}

/// Where the mesh comes from.
pub trait MeshSource: Send + Sync + 'static {
    /// The TLS policy in force (control connections and our certificate).
    fn tls_policy(&self) -> TlsPolicy;

    /// How long proxy certificates live.
    fn certificate_lifetime(&self) -> Duration;

    /// The identity `token` proves, and the lifetime of its certificate.
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> SourceFuture<'a, Result<(SpiffeId, Duration), Refusal>>;

    /// Starts the subscription of the proxy with identity `client`, which
    /// accepts QUIC at `inbound` (unspecified: take `remote`, the address its
    /// connection comes from). Ending it is dropping it.
    fn subscribe(
        &self,
        client: &SpiffeId,
        inbound: SocketAddr,
        remote: SocketAddr,
    ) -> Result<Box<dyn Subscription + '_>, Refusal>;

    /// Sends the mesh roots every proxy must trust (a root rotation).
    fn set_roots(&self, roots: &crate::roots::TrustRoots);
}

/// One subscribed proxy.
pub trait Subscription: Send {
    /// Wakes on every change of the source.
    fn changes(&self) -> watch::Receiver<u64>;

    /// The next message for the proxy as a frame for `wire_version`, and
    /// whether it is a delta; `Ok(None)` when its view has not changed,
    /// `Err` when it can no longer be served (its workload is gone).
    fn next_frame(&mut self, wire_version: u32) -> Result<Option<(Vec<u8>, bool)>, Refusal>;
}
