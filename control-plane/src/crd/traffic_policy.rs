//! `TrafficPolicy`: who may call one Service, and how its connections behave.

// printcolumn(...) entries repeat `type_ = "string"`, which clippy reads as
// a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::mesh_config::InboundMode;

/// Policy for one Service in the TrafficPolicy's namespace. With several
/// policies on one Service, the oldest wins and the others report
/// `Accepted=False` (Gateway API's conflict rule).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "phoenix.dev",
    version = "v1alpha1",
    kind = "TrafficPolicy",
    doc = "Who may call one Service through the Phoenix mesh, and how its connections behave.",
    plural = "trafficpolicies",
    shortname = "tp",
    namespaced,
    status = "TrafficPolicyStatus",
    derive = "PartialEq",
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetRef.name"),
    printcolumn(name = "Protocol", type_ = "string", json_path = ".spec.protocol"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[cfg_attr(feature = "cel", kube(cel))]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    /// The Service this policy applies to (same namespace).
    pub target_ref: TargetRef,

    /// Clients allowed to call the Service. Absent: MeshConfig's
    /// `defaultPolicy` applies. Empty: nobody may call it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub allow: Option<Vec<ClientSelector>>,

    /// How long a client proxy may take to reach one endpoint before it
    /// tries the next (default: MeshConfig's `connectTimeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^([0-9]+(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10ms') && duration(self) <= duration('5m')").message("connectTimeout must be between 10ms and 5m"))]
    pub connect_timeout: Option<String>,

    /// A connection to the Service with no bytes either way for this long is
    /// closed (default: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^([0-9]+(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("idleTimeout must be at least 1s"))]
    pub idle_timeout: Option<String>,

    /// What the Service speaks: `opaque` (bytes as they come, never a
    /// detection delay), `http1`, `http2` (h2c, gRPC), `detect` (from the
    /// client's first bytes), or `http` (either HTTP version, detected).
    /// Overrides the Service port's `appProtocol`. Absent: the port's
    /// `appProtocol`, else `opaque` on the default opaque ports (25, 587,
    /// 3306, 4444, 5432, 6379, 9300, 11211), else `detect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,

    /// Overrides MeshConfig's `inboundMode` for this Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_mode: Option<InboundMode>,

    /// How long one HTTP request to the Service may take, from its first
    /// byte to its response's last: 504 (gRPC: DEADLINE_EXCEEDED) after
    /// it. A gRPC client's shorter `grpc-timeout` wins. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^([0-9]+(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1ms')").message("requestTimeout must be at least 1ms"))]
    pub request_timeout: Option<String>,

    /// Which failed HTTP requests to the Service are retried, within a
    /// budget. Default: only requests that never reached an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<crate::retry::RetrySpec>,
}

/// A Service in the policy's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// API group of the target: the core group, written `""`.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == ''").message("targetRef.group must be \"\" (the core group of Service)"))]
    pub group: String,
    /// Kind of the target.
    pub kind: TargetKind,
    /// Name of the Service.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
}

/// Kinds a policy can target.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum TargetKind {
    /// A core/v1 Service.
    Service,
}

/// Clients matched by ServiceAccount, by namespace, or both.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.__namespace__) || has(self.serviceAccount)").message("an allow entry names a serviceAccount, a namespace, or both"))]
pub struct ClientSelector {
    /// The client's namespace (default: the policy's namespace when a
    /// serviceAccount is given). Alone, it admits every workload there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: Option<String>,
    /// The client's ServiceAccount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub service_account: Option<String>,
}

/// What the Service speaks: `opaque` (bytes as they come, never a
/// detection delay), `http1`, `http2` (h2c, gRPC), `detect` (from the
/// client's first bytes) or `http` (either HTTP version, detected). Overrides
/// the Service port's `appProtocol`; absent: the `appProtocol`, else `opaque`
/// on the default opaque ports (25, 587, 3306, 4444, 5432, 6379, 9300,
/// 11211), else `detect`.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Bytes, relayed as they come.
    #[default]
    Opaque,
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 with prior knowledge (h2c, gRPC).
    Http2,
    /// Decided per connection from the client's first bytes.
    Detect,
    /// HTTP/1 or HTTP/2, whichever the client speaks (detected).
    Http,
}

impl Protocol {
    /// The protocol proxies are sent.
    pub fn wire(self) -> phoenix_api::protocol::Protocol {
        use phoenix_api::protocol::Protocol as P;
        match self {
            Self::Opaque => P::Opaque,
            Self::Http1 => P::Http1,
            Self::Http2 => P::Http2,
            Self::Detect | Self::Http => P::Detect,
        }
    }
}

/// What the control plane reports about a TrafficPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicyStatus {
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` and `ResolvedRefs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
