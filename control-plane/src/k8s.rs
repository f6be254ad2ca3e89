//! The Kubernetes source: watches the cluster and turns it into snapshots.
//!
//! [`records`] reduces Kubernetes objects to the few fields the mesh needs;
//! [`index`] is the pure, incremental index from those records to per-proxy
//! snapshots and deltas (no Kubernetes calls, unit-tested by applying objects).

pub mod ca_secret;
pub mod check;
pub mod health;
pub mod index;
pub mod install;
pub mod leader;
pub mod live;
pub mod network_policy;
pub mod policy;
pub mod rbac;
pub mod records;
pub mod routes;
pub mod run;
pub mod source;
pub mod status;
pub mod token_review;
pub mod trust_bundle;
pub mod watch;
pub mod webhook;
pub mod webhook_config;

/// Label the injector puts on meshed pods; the pod watcher selects on it.
pub const MESHED_LABEL: &str = "phoenix.dev/meshed";
/// Annotation naming a meshed pod's QUIC (UDP) port, when not the default.
pub const QUIC_PORT_ANNOTATION: &str = "phoenix.dev/quic-port";
/// Default QUIC port of an injected proxy.
pub const DEFAULT_QUIC_PORT: u16 = 4143;
/// Namespace annotation overriding MeshConfig's `defaultPolicy` there.
pub const DEFAULT_POLICY_ANNOTATION: &str = "phoenix.dev/default-policy";
/// EndpointSlice label naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
