//! The one JSON line each binary prints on stdout once it is listening: the
//! contract between the binaries and whatever starts them (`phoenix up`,
//! tests, scripts). Both sides use these types, so a renamed field breaks
//! the build instead of a launcher at run time.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What `phoenix-proxy` announces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyBound {
    /// QUIC (UDP) address peers connect to.
    pub inbound: SocketAddr,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    /// Redirected outbound TCP (interception), when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_redirect: Option<SocketAddr>,
    /// Redirected inbound plain TCP (interception), when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_redirect: Option<SocketAddr>,
}

/// What `phoenix-control-plane` announces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneBound {
    /// QUIC address for proxies.
    pub control: SocketAddr,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    /// The control plane's SPIFFE ID.
    pub identity: String,
    /// Path of the root certificate proxies must trust.
    pub trust_anchor: PathBuf,
}
