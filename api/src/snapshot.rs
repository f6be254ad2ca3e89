//! Config snapshots: what the control plane tells one proxy.
//!
//! A snapshot is a versioned map of resources keyed by name (`mesh`,
//! `upstream/<service>`, `inbound/<service>`). The control plane sends the
//! whole map when a proxy subscribes and afterwards only [`Delta`]s (the
//! resources that changed, and the keys that went away), so a one-endpoint
//! change costs bytes in proportion to the change, not to the mesh.
//!
//! These are wire types: the proxy validates them into its own typed config
//! (`TryFrom`) before anything uses them. They are read tolerantly (wire
//! version 5, see [`compat`](crate::compat)): a field or a resource kind
//! this build does not know is ignored, so the next version can add one
//! without a downgrade for this one. Values are not tolerant: an unknown
//! key-exchange policy still fails, since a proxy cannot enforce it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Deserializer, Serialize};

use crate::protocol::Protocol;
use crate::service::ServiceName;
use crate::tls_policy::{AuthPolicy, CipherSuite, IdentityAlgorithm, KeyExchange};

/// Key of the mesh-wide settings resource.
pub const MESH_KEY: &str = "mesh";

/// One named piece of a proxy's config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Resource {
    /// Mesh-wide settings (one per snapshot, key [`MESH_KEY`]).
    Mesh(MeshSettings),
    /// A service this proxy's app calls, and where its endpoints are.
    Upstream(Upstream),
    /// A service this proxy's app serves, and who may call it.
    Inbound(Inbound),
}

impl Resource {
    /// The key this resource is stored under.
    pub fn key(&self) -> String {
        match self {
            Resource::Mesh(_) => MESH_KEY.to_owned(),
            Resource::Upstream(u) => format!("upstream/{}", u.service),
            Resource::Inbound(i) => format!("inbound/{}", i.service),
        }
    }
}

/// A resource as read off the wire: a kind this build does not know is
/// read as nothing, and left out (kept apart from [`Resource`] so nothing
/// else has to handle a kind it cannot use).
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
enum ReadResource {
    Mesh(MeshSettings),
    Upstream(Upstream),
    Inbound(Inbound),
    #[serde(other)]
    Unknown,
}

fn known_resources<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, Resource>, D::Error> {
    let all = BTreeMap::<String, ReadResource>::deserialize(deserializer)?;
    Ok(all
        .into_iter()
        .filter_map(|(key, read)| {
            let resource = match read {
                ReadResource::Mesh(m) => Resource::Mesh(m),
                ReadResource::Upstream(u) => Resource::Upstream(u),
                ReadResource::Inbound(i) => Resource::Inbound(i),
                ReadResource::Unknown => return None,
            };
            Some((key, resource))
        })
        .collect())
}

/// Settings that apply to every proxy in the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshSettings {
    /// The SPIFFE trust domain, e.g. `phoenix.local`.
    pub trust_domain: String,
    /// Key-exchange policy for tunnels.
    pub key_exchange: KeyExchange,
    /// Cipher suites in preference order.
    pub cipher_suites: Vec<CipherSuite>,
    /// A peer connection with no open stream for this long is closed.
    pub peer_idle_timeout_ms: u64,
    /// How long a TCP connect to the local upstream may take.
    pub connect_timeout_ms: u64,
    /// What an intercepting proxy does with plain TCP from a client outside
    /// the mesh: pass it to the app (`permissive`, counted) or refuse it.
    #[serde(default, skip_serializing_if = "InboundMode::is_permissive")]
    pub inbound_mode: InboundMode,
    /// The mesh roots to trust (PEM, one or more CA certificates). Replaces
    /// the bootstrap trust anchor, so a root rotation reaches every proxy:
    /// first old and new root, later the new one alone. Absent from control
    /// planes that predate rotation; the bootstrap anchor then stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_bundle_pem: Option<String>,
    /// The algorithm of the root that signs now: proxies generate keys of
    /// it when they next renew, and at once when theirs differs. Absent
    /// means ECDSA P-256 (control planes before wire version 8).
    #[serde(default, skip_serializing_if = "IdentityAlgorithm::is_default")]
    pub identity_algorithm: IdentityAlgorithm,
    /// Which signatures authenticate a peer. Not additive: a proxy that
    /// cannot enforce `pq-only` is refused a subscription, never sent a
    /// snapshot without it.
    #[serde(default, skip_serializing_if = "AuthPolicy::is_default")]
    pub auth_policy: AuthPolicy,
}

/// Plain TCP from clients outside the mesh, at an intercepting proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InboundMode {
    /// Passed to the app, and counted: lets a namespace join the mesh
    /// before all of its clients have.
    #[default]
    Permissive,
    /// Refused (reset): only mesh identities reach the app.
    Strict,
}

impl InboundMode {
    /// Whether this is the default (omitted on the wire).
    pub fn is_permissive(&self) -> bool {
        *self == Self::Permissive
    }

    /// The name used in config and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Permissive => "permissive",
            Self::Strict => "strict",
        }
    }
}

/// A service the app calls: through an explicit outbound listener (file
/// mode), or by its cluster addresses (Kubernetes, where interception sends
/// the app's connections to the proxy). Kubernetes services are named
/// `<name>.<namespace>:<port>`, one upstream per service port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Upstream {
    /// Service name (its text form on the wire; a snapshot naming a service
    /// that does not parse is refused whole, since the tunnel header could
    /// not carry it).
    pub service: ServiceName,
    /// Where the proxy listens for the app's connections to this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// The service's virtual addresses (ClusterIP and port): a connection
    /// to one of them is a connection to this service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<SocketAddr>,
    /// The proxies that serve it.
    pub endpoints: Vec<Endpoint>,
    /// How long reaching one endpoint may take before the next is tried
    /// (a per-service override of the mesh's `connectTimeoutMs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    /// A connection with no bytes either way for this long is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// What the service speaks, resolved by the control plane (wire
    /// version 6; absent: detected).
    #[serde(default, skip_serializing_if = "Protocol::is_detect")]
    pub protocol: Protocol,
    /// How long one HTTP request may take, from its first byte to its
    /// response's last (wire version 7; absent: no limit but the
    /// client's, e.g. gRPC's `grpc-timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    /// Which failed HTTP requests are tried again (wire version 7; absent:
    /// only requests that never left, which every service gets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// The HTTP routes attached to the service that apply to this proxy's
    /// app, in the spec's tie-break order (wire version 9; absent: every
    /// request goes to the service itself).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<crate::route::Route>,
}

/// Which failed HTTP requests of a service are retried, and how many
/// retries the service may take (wire version 7).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// HTTP statuses retried (e.g. 502, 503, 504).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status_codes: Vec<u16>,
    /// gRPC statuses retried, by number (14 is UNAVAILABLE). A gRPC call
    /// is a POST: listing a status here marks the service's calls
    /// retryable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grpc_status_codes: Vec<u8>,
    /// Retries of one request, at most.
    pub max_retries: u32,
    /// Retry requests whose method is not idempotent (POST, PATCH) too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub non_idempotent: bool,
    /// Retries add at most this share of the service's requests, in
    /// percent (Linkerd's budget shape)...
    pub budget_percent: u32,
    /// ...plus this many per second, so a quiet service can still retry.
    pub budget_min_per_second: u32,
}

/// One proxy that serves a service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// The peer proxy's QUIC (UDP) address.
    pub address: SocketAddr,
    /// The SPIFFE ID the peer must present.
    pub identity: String,
    /// The pod's addresses in its other IP families (a dual-stack pod is
    /// one endpoint, reached on `address`): an intercepted connection to
    /// one of them is to this pod too, and goes to its proxy (wire version 4).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_ips: Vec<IpAddr>,
}

/// A service this proxy's app serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Inbound {
    /// Service name, as client proxies name it in the tunnel header.
    pub service: ServiceName,
    /// Where the app listens.
    pub target: SocketAddr,
    /// The pod's addresses in its other IP families: a client that dialled
    /// one of them at the target's port reaches the app there too (wire
    /// version 4).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_ips: Vec<IpAddr>,
    /// SPIFFE IDs allowed to connect; `None` admits every identity of the
    /// trust domain. `spiffe://<td>/ns/<namespace>/sa/*` admits every
    /// service account of that namespace.
    pub allow: Option<Vec<String>>,
    /// This service's override of the mesh's inbound mode (wire version 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_mode: Option<InboundMode>,
    /// What the app speaks on its target port (wire version 6; absent:
    /// detected).
    #[serde(default, skip_serializing_if = "Protocol::is_detect")]
    pub protocol: Protocol,
}

/// A proxy's whole config at one version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Monotonic version; a proxy reports the version it runs.
    pub version: u64,
    /// Resources by key.
    #[serde(deserialize_with = "known_resources")]
    pub resources: BTreeMap<String, Resource>,
}

/// The change from one snapshot version to the next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delta {
    /// The version this delta applies to.
    pub from_version: u64,
    /// The version after applying it.
    pub version: u64,
    /// Resources added or changed.
    #[serde(deserialize_with = "known_resources")]
    pub upserts: BTreeMap<String, Resource>,
    /// Keys removed.
    pub removals: Vec<String>,
}

/// Why a delta cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// The delta starts from another version than the one held: resubscribe.
    #[error("delta from version {from} does not apply to version {held}")]
    VersionGap {
        /// Version the delta applies to.
        from: u64,
        /// Version held.
        held: u64,
    },
    /// An upsert is stored under another key than its own.
    #[error("resource stored under a key that does not match its kind and name")]
    KeyMismatch,
}

impl Snapshot {
    /// The delta that turns `self` into `next`; `None` when nothing changed.
    pub fn diff(&self, next: &Snapshot) -> Option<Delta> {
        let upserts: BTreeMap<_, _> = next
            .resources
            .iter()
            .filter(|(k, v)| self.resources.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let removals: Vec<_> = self
            .resources
            .keys()
            .filter(|k| !next.resources.contains_key(*k))
            .cloned()
            .collect();
        if upserts.is_empty() && removals.is_empty() {
            return None;
        }
        Some(Delta {
            from_version: self.version,
            version: next.version,
            upserts,
            removals,
        })
    }

    /// Applies `delta`, returning the next snapshot; `self` is unchanged on error.
    pub fn apply(&self, delta: &Delta) -> Result<Snapshot, DeltaError> {
        if delta.from_version != self.version {
            return Err(DeltaError::VersionGap {
                from: delta.from_version,
                held: self.version,
            });
        }
        let mut resources = self.resources.clone();
        for key in &delta.removals {
            resources.remove(key);
        }
        for (key, resource) in &delta.upserts {
            if *key != resource.key() {
                return Err(DeltaError::KeyMismatch);
            }
            resources.insert(key.clone(), resource.clone());
        }
        Ok(Snapshot {
            version: delta.version,
            resources,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(service: &str, port: u16) -> Resource {
        Resource::Upstream(Upstream {
            service: service.parse().unwrap(),
            listen: Some("127.0.0.1:1000".parse().unwrap()),
            addresses: vec![],
            connect_timeout_ms: None,
            idle_timeout_ms: None,
            protocol: Protocol::Detect,
            request_timeout_ms: None,
            retry: None,
            routes: Vec::new(),
            endpoints: vec![Endpoint {
                address: SocketAddr::from(([127, 0, 0, 1], port)),
                identity: "spiffe://td/ns/default/sa/db".into(),
                other_ips: vec![],
            }],
        })
    }

    fn snapshot(version: u64, resources: Vec<Resource>) -> Snapshot {
        Snapshot {
            version,
            resources: resources.into_iter().map(|r| (r.key(), r)).collect(),
        }
    }

    #[test]
    fn a_snapshot_naming_a_service_outside_the_grammar_is_refused() {
        let mut json = serde_json::to_value(snapshot(1, vec![upstream("web.shop:80", 1)])).unwrap();
        let good: Snapshot = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(good.resources.len(), 1);
        json["resources"]["upstream/web.shop:80"]["service"] = "web.shop:80:1".into();
        let error = serde_json::from_value::<Snapshot>(json).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("invalid service name `web.shop:80:1`"),
            "{error}"
        );
    }

    #[test]
    fn diff_then_apply_reaches_the_next_snapshot() {
        let a = snapshot(1, vec![upstream("db", 1), upstream("cache", 2)]);
        let b = snapshot(2, vec![upstream("db", 3), upstream("web", 4)]);
        let delta = a.diff(&b).unwrap();
        assert_eq!(delta.upserts.len(), 2);
        assert_eq!(delta.removals, vec!["upstream/cache".to_owned()]);
        assert_eq!(a.apply(&delta).unwrap(), b);
    }

    #[test]
    fn one_endpoint_change_sends_one_resource() {
        let many: Vec<_> = (0..100).map(|i| upstream(&format!("s{i}"), i)).collect();
        let a = snapshot(1, many.clone());
        let mut changed = many;
        changed[7] = upstream("s7", 9999);
        let b = snapshot(2, changed);
        let delta = a.diff(&b).unwrap();
        assert_eq!(
            delta.upserts.keys().collect::<Vec<_>>(),
            vec!["upstream/s7"]
        );
        assert!(delta.removals.is_empty());
    }

    #[test]
    fn refuses_gaps_and_mismatched_keys() {
        let a = snapshot(5, vec![upstream("db", 1)]);
        let gap = Delta {
            from_version: 4,
            version: 6,
            upserts: BTreeMap::new(),
            removals: vec![],
        };
        assert_eq!(
            a.apply(&gap),
            Err(DeltaError::VersionGap { from: 4, held: 5 })
        );
        let mut upserts = BTreeMap::new();
        upserts.insert("upstream/other".to_owned(), upstream("db", 2));
        let bad = Delta {
            from_version: 5,
            version: 6,
            upserts,
            removals: vec![],
        };
        assert_eq!(a.apply(&bad), Err(DeltaError::KeyMismatch));
    }
}
