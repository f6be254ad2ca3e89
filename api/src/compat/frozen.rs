//! The snapshot types of every served wire version, frozen as those proxies
//! read them: strict (`deny_unknown_fields`, a closed set of kinds) up to
//! version 4, tolerant from version 5 (version 6 adds a service's
//! `protocol`, version 9 its `routes`). Never edit a version's copy once it
//! ships; a new version gets a new copy.
//!
//! They exist so a test can decode what the control plane sends a proxy of
//! version `v` exactly as that proxy would ([`read`]), which the current
//! types cannot do: they know every field, so a field added without its row
//! in [`CHANGES`](super::CHANGES) would still decode.

use serde_json::Value;

/// Why a frozen reader refused a message.
#[derive(Debug, thiserror::Error)]
pub enum FrozenError {
    /// No copy of this version is kept: it is not served.
    #[error("no frozen copy of wire version {0}")]
    NotServed(u32),
    /// A proxy of that version could not read the message.
    #[error("a wire version {version} proxy cannot read this message")]
    Unreadable {
        /// The version read with.
        version: u32,
        /// What that version's decoder said.
        #[source]
        source: serde_json::Error,
    },
}

/// Decodes a control-plane response body as a proxy speaking `version`
/// reads it, and gives back what that proxy understood (the message
/// re-encoded from its types: what it ignored is gone).
pub fn read(version: u32, body: &[u8]) -> Result<Value, FrozenError> {
    fn via<T: serde::de::DeserializeOwned + serde::Serialize>(
        version: u32,
        body: &[u8],
    ) -> Result<Value, FrozenError> {
        let unreadable = |source| FrozenError::Unreadable { version, source };
        let message: T = serde_json::from_slice(body).map_err(unreadable)?;
        serde_json::to_value(message).map_err(unreadable)
    }
    match version {
        1 => via::<v1::Response>(version, body),
        2 => via::<v2::Response>(version, body),
        3 => via::<v3::Response>(version, body),
        4 => via::<v4::Response>(version, body),
        5 => via::<v5::Response>(version, body),
        6 => via::<v6::Response>(version, body),
        7 => via::<v7::Response>(version, body),
        8 => via::<v8::Response>(version, body),
        9 => via::<v9::Response>(version, body),
        10 => via::<v10::Response>(version, body),
        other => Err(FrozenError::NotServed(other)),
    }
}

/// Policy enums, unchanged since version 1 (a new value would be a break:
/// a proxy cannot enforce a policy it does not know).
pub mod policy {
    use serde::{Deserialize, Serialize};

    #[allow(missing_docs)]
    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    pub enum KeyExchange {
        PqOnly,
        PqPreferred,
    }

    #[allow(missing_docs, non_camel_case_types, clippy::upper_case_acronyms)]
    #[derive(Debug, Serialize, Deserialize)]
    pub enum CipherSuite {
        TLS13_AES_256_GCM_SHA384,
        TLS13_AES_128_GCM_SHA256,
        TLS13_CHACHA20_POLY1305_SHA256,
    }

    #[allow(missing_docs)]
    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum InboundMode {
        Permissive,
        Strict,
    }
}

/// Version 1: version 2's resources, and full snapshots only.
#[allow(missing_docs)]
pub mod v1 {
    use serde::{Deserialize, Serialize};

    pub use super::v2::Snapshot;

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "camelCase")]
    pub enum Response {
        Snapshot(Snapshot),
        Error { code: String, message: String },
    }
}

/// Version 2: deltas.
#[allow(missing_docs)]
pub mod v2 {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    use serde::{Deserialize, Serialize};

    use super::policy::{CipherSuite, KeyExchange};

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct MeshSettings {
        pub trust_domain: String,
        pub key_exchange: KeyExchange,
        pub cipher_suites: Vec<CipherSuite>,
        pub peer_idle_timeout_ms: u64,
        pub connect_timeout_ms: u64,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Upstream {
        pub service: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub listen: Option<SocketAddr>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub addresses: Vec<SocketAddr>,
        pub endpoints: Vec<Endpoint>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub connect_timeout_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub idle_timeout_ms: Option<u64>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Endpoint {
        pub address: SocketAddr,
        pub identity: String,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Inbound {
        pub service: String,
        pub target: SocketAddr,
        pub allow: Option<Vec<String>>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "kind", rename_all = "camelCase")]
    pub enum Resource {
        Mesh(MeshSettings),
        Upstream(Upstream),
        Inbound(Inbound),
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Snapshot {
        pub version: u64,
        pub resources: BTreeMap<String, Resource>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Delta {
        pub from_version: u64,
        pub version: u64,
        pub upserts: BTreeMap<String, Resource>,
        pub removals: Vec<String>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "camelCase")]
    pub enum Response {
        Snapshot(Snapshot),
        Delta(Delta),
        Error { code: String, message: String },
    }
}

/// Version 3: the mesh's `inboundMode` and `trustBundlePem`, a service's
/// `inboundMode`.
#[allow(missing_docs)]
pub mod v3 {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    use serde::{Deserialize, Serialize};

    use super::policy::{CipherSuite, InboundMode, KeyExchange};
    pub use super::v2::{Endpoint, Upstream};

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct MeshSettings {
        pub trust_domain: String,
        pub key_exchange: KeyExchange,
        pub cipher_suites: Vec<CipherSuite>,
        pub peer_idle_timeout_ms: u64,
        pub connect_timeout_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub inbound_mode: Option<InboundMode>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub trust_bundle_pem: Option<String>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Inbound {
        pub service: String,
        pub target: SocketAddr,
        pub allow: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub inbound_mode: Option<InboundMode>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "kind", rename_all = "camelCase")]
    pub enum Resource {
        Mesh(MeshSettings),
        Upstream(Upstream),
        Inbound(Inbound),
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Snapshot {
        pub version: u64,
        pub resources: BTreeMap<String, Resource>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Delta {
        pub from_version: u64,
        pub version: u64,
        pub upserts: BTreeMap<String, Resource>,
        pub removals: Vec<String>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "camelCase")]
    pub enum Response {
        Snapshot(Snapshot),
        Delta(Delta),
        Error { code: String, message: String },
    }
}

/// Version 4: a dual-stack pod's `otherIps`, on endpoints and inbound
/// services.
#[allow(missing_docs)]
pub mod v4 {
    use std::collections::BTreeMap;
    use std::net::{IpAddr, SocketAddr};

    use serde::{Deserialize, Serialize};

    use super::policy::InboundMode;
    pub use super::v3::MeshSettings;

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Upstream {
        pub service: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub listen: Option<SocketAddr>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub addresses: Vec<SocketAddr>,
        pub endpoints: Vec<Endpoint>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub connect_timeout_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub idle_timeout_ms: Option<u64>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Endpoint {
        pub address: SocketAddr,
        pub identity: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub other_ips: Vec<IpAddr>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Inbound {
        pub service: String,
        pub target: SocketAddr,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub other_ips: Vec<IpAddr>,
        pub allow: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub inbound_mode: Option<InboundMode>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "kind", rename_all = "camelCase")]
    pub enum Resource {
        Mesh(MeshSettings),
        Upstream(Upstream),
        Inbound(Inbound),
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Snapshot {
        pub version: u64,
        pub resources: BTreeMap<String, Resource>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Delta {
        pub from_version: u64,
        pub version: u64,
        pub upserts: BTreeMap<String, Resource>,
        pub removals: Vec<String>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "camelCase")]
    pub enum Response {
        Snapshot(Snapshot),
        Delta(Delta),
        Error { code: String, message: String },
    }
}

/// Version 5: version 4's fields, read tolerantly: unknown fields and
/// resource kinds are ignored.
#[allow(missing_docs)]
pub mod v5 {
    use std::collections::BTreeMap;
    use std::net::{IpAddr, SocketAddr};

    use serde::{Deserialize, Deserializer, Serialize};

    use super::policy::{CipherSuite, InboundMode, KeyExchange};

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct MeshSettings {
        pub trust_domain: String,
        pub key_exchange: KeyExchange,
        pub cipher_suites: Vec<CipherSuite>,
        pub peer_idle_timeout_ms: u64,
        pub connect_timeout_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub inbound_mode: Option<InboundMode>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub trust_bundle_pem: Option<String>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Upstream {
        pub service: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub listen: Option<SocketAddr>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub addresses: Vec<SocketAddr>,
        pub endpoints: Vec<Endpoint>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub connect_timeout_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub idle_timeout_ms: Option<u64>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Endpoint {
        pub address: SocketAddr,
        pub identity: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub other_ips: Vec<IpAddr>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Inbound {
        pub service: String,
        pub target: SocketAddr,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub other_ips: Vec<IpAddr>,
        pub allow: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub inbound_mode: Option<InboundMode>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "kind", rename_all = "camelCase")]
    pub enum Resource {
        Mesh(MeshSettings),
        Upstream(Upstream),
        Inbound(Inbound),
    }

    /// A resource as read: an unknown kind is kept as nothing.
    #[derive(Deserialize)]
    #[serde(tag = "kind", rename_all = "camelCase")]
    enum Read {
        Mesh(MeshSettings),
        Upstream(Upstream),
        Inbound(Inbound),
        #[serde(other)]
        Unknown,
    }

    fn known<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Resource>, D::Error> {
        let all = BTreeMap::<String, Read>::deserialize(d)?;
        Ok(all
            .into_iter()
            .filter_map(|(key, read)| {
                let resource = match read {
                    Read::Mesh(m) => Resource::Mesh(m),
                    Read::Upstream(u) => Resource::Upstream(u),
                    Read::Inbound(i) => Resource::Inbound(i),
                    Read::Unknown => return None,
                };
                Some((key, resource))
            })
            .collect())
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Snapshot {
        pub version: u64,
        #[serde(deserialize_with = "known")]
        pub resources: BTreeMap<String, Resource>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Delta {
        pub from_version: u64,
        pub version: u64,
        #[serde(deserialize_with = "known")]
        pub upserts: BTreeMap<String, Resource>,
        pub removals: Vec<String>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "camelCase")]
    pub enum Response {
        Snapshot(Snapshot),
        Delta(Delta),
        Error { code: String, message: String },
    }
}

/// Version 6: version 5 and a service's `protocol`, on upstreams and
/// inbound services (an unknown value reads as opaque).
#[allow(missing_docs)]
pub mod v6 {
    use std::collections::BTreeMap;
    use std::net::{IpAddr, SocketAddr};

    use serde::{Deserialize, Deserializer, Serialize};

    use super::policy::InboundMode;
    pub use super::v5::{Endpoint, MeshSettings};

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Upstream {
        pub service: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub listen: Option<SocketAddr>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub addresses: Vec<SocketAddr>,
        pub endpoints: Vec<Endpoint>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub connect_timeout_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub idle_timeout_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub protocol: Option<String>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Inbound {
        pub service: String,
        pub target: SocketAddr,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub other_ips: Vec<IpAddr>,
        pub allow: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub inbound_mode: Option<InboundMode>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub protocol: Option<String>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "kind", rename_all = "camelCase")]
    pub enum Resource {
        Mesh(MeshSettings),
        Upstream(Upstream),
        Inbound(Inbound),
    }

    /// A resource as read: an unknown kind is kept as nothing.
    #[derive(Deserialize)]
    #[serde(tag = "kind", rename_all = "camelCase")]
    enum Read {
        Mesh(MeshSettings),
        Upstream(Upstream),
        Inbound(Inbound),
        #[serde(other)]
        Unknown,
    }

    fn known<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Resource>, D::Error> {
        let all = BTreeMap::<String, Read>::deserialize(d)?;
        Ok(all
            .into_iter()
            .filter_map(|(key, read)| {
                let resource = match read {
                    Read::Mesh(m) => Resource::Mesh(m),
                    Read::Upstream(u) => Resource::Upstream(u),
                    Read::Inbound(i) => Resource::Inbound(i),
                    Read::Unknown => return None,
                };
                Some((key, resource))
            })
            .collect())
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Snapshot {
        pub version: u64,
        #[serde(deserialize_with = "known")]
        pub resources: BTreeMap<String, Resource>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Delta {
        pub from_version: u64,
        pub version: u64,
        #[serde(deserialize_with = "known")]
        pub upserts: BTreeMap<String, Resource>,
        pub removals: Vec<String>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "camelCase")]
    pub enum Response {
        Snapshot(Snapshot),
        Delta(Delta),
        Error { code: String, message: String },
    }
}

/// Version 7: version 6 and an upstream's HTTP `requestTimeoutMs` and
/// `retry` policy.
#[allow(missing_docs)]
pub mod v7 {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serialize};

    pub use super::v5::{Endpoint, MeshSettings};
    pub use super::v6::Inbound;

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Upstream {
        pub service: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub listen: Option<SocketAddr>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub addresses: Vec<SocketAddr>,
        pub endpoints: Vec<Endpoint>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub connect_timeout_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub idle_timeout_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub protocol: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub request_timeout_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub retry: Option<RetryPolicy>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct RetryPolicy {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub status_codes: Vec<u16>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub grpc_status_codes: Vec<u8>,
        pub max_retries: u32,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pub non_idempotent: bool,
        pub budget_percent: u32,
        pub budget_min_per_second: u32,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "kind", rename_all = "camelCase")]
    pub enum Resource {
        Mesh(MeshSettings),
        Upstream(Upstream),
        Inbound(Inbound),
    }

    /// A resource as read: an unknown kind is kept as nothing.
    #[derive(Deserialize)]
    #[serde(tag = "kind", rename_all = "camelCase")]
    enum Read {
        Mesh(MeshSettings),
        Upstream(Upstream),
        Inbound(Inbound),
        #[serde(other)]
        Unknown,
    }

    fn known<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Resource>, D::Error> {
        let all = BTreeMap::<String, Read>::deserialize(d)?;
        Ok(all
            .into_iter()
            .filter_map(|(key, read)| {
                let resource = match read {
                    Read::Mesh(m) => Resource::Mesh(m),
                    Read::Upstream(u) => Resource::Upstream(u),
                    Read::Inbound(i) => Resource::Inbound(i),
                    Read::Unknown => return None,
                };
                Some((key, resource))
            })
            .collect())
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Snapshot {
        pub version: u64,
        #[serde(deserialize_with = "known")]
        pub resources: BTreeMap<String, Resource>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Delta {
        pub from_version: u64,
        pub version: u64,
        #[serde(deserialize_with = "known")]
        pub upserts: BTreeMap<String, Resource>,
        pub removals: Vec<String>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "camelCase")]
    pub enum Response {
        Snapshot(Snapshot),
        Delta(Delta),
        Error { code: String, message: String },
    }
}

#[allow(missing_docs)]
pub mod v8 {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize};

    use super::policy::{CipherSuite, InboundMode, KeyExchange};
    pub use super::v6::Inbound;
    pub use super::v7::{RetryPolicy, Upstream};

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct MeshSettings {
        pub trust_domain: String,
        pub key_exchange: KeyExchange,
        pub cipher_suites: Vec<CipherSuite>,
        pub peer_idle_timeout_ms: u64,
        pub connect_timeout_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub inbound_mode: Option<InboundMode>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub trust_bundle_pem: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub identity_algorithm: Option<IdentityAlgorithm>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub auth_policy: Option<AuthPolicy>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    pub enum IdentityAlgorithm {
        EcdsaP256,
        #[serde(rename = "ml-dsa-65")]
        MlDsa65,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    pub enum AuthPolicy {
        Any,
        PqOnly,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "kind", rename_all = "camelCase")]
    pub enum Resource {
        Mesh(MeshSettings),
        Upstream(Upstream),
        Inbound(Inbound),
    }

    /// A resource as read: an unknown kind is kept as nothing.
    #[derive(Deserialize)]
    #[serde(tag = "kind", rename_all = "camelCase")]
    enum Read {
        Mesh(MeshSettings),
        Upstream(Upstream),
        Inbound(Inbound),
        #[serde(other)]
        Unknown,
    }

    fn known<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Resource>, D::Error> {
        let all = BTreeMap::<String, Read>::deserialize(d)?;
        Ok(all
            .into_iter()
            .filter_map(|(key, read)| {
                let resource = match read {
                    Read::Mesh(m) => Resource::Mesh(m),
                    Read::Upstream(u) => Resource::Upstream(u),
                    Read::Inbound(i) => Resource::Inbound(i),
                    Read::Unknown => return None,
                };
                Some((key, resource))
            })
            .collect())
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Snapshot {
        pub version: u64,
        #[serde(deserialize_with = "known")]
        pub resources: BTreeMap<String, Resource>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Delta {
        pub from_version: u64,
        pub version: u64,
        #[serde(deserialize_with = "known")]
        pub upserts: BTreeMap<String, Resource>,
        pub removals: Vec<String>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "camelCase")]
    pub enum Response {
        Snapshot(Snapshot),
        Delta(Delta),
        Error { code: String, message: String },
    }
}

#[allow(missing_docs)]
pub mod v9 {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serialize};

    pub use super::v5::Endpoint;
    pub use super::v6::Inbound;
    pub use super::v7::RetryPolicy;
    pub use super::v8::MeshSettings;

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Upstream {
        pub service: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub listen: Option<SocketAddr>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub addresses: Vec<SocketAddr>,
        pub endpoints: Vec<Endpoint>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub connect_timeout_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub idle_timeout_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub protocol: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub request_timeout_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub retry: Option<RetryPolicy>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub routes: Vec<Route>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    pub enum RouteKind {
        #[serde(rename = "HTTPRoute")]
        Http,
        #[serde(rename = "GRPCRoute")]
        Grpc,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Route {
        pub name: String,
        pub namespace: String,
        pub kind: RouteKind,
        pub rules: Vec<RouteRule>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct RouteRule {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub matches: Vec<RouteMatch>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub backends: Vec<Backend>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub filters: Vec<Filter>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub request_timeout_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub backend_request_timeout_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub retry: Option<RetryPolicy>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct RouteMatch {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub path: Option<PathMatch>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub method: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub headers: Vec<NameValue>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub query_params: Vec<NameValue>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub grpc_service: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub grpc_method: Option<String>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "type", content = "value")]
    pub enum PathMatch {
        Exact(String),
        PathPrefix(String),
    }

    #[derive(Debug, Serialize, Deserialize)]
    pub struct NameValue {
        pub name: String,
        pub value: String,
    }

    #[derive(Debug, Serialize, Deserialize)]
    pub struct Backend {
        pub service: String,
        pub weight: u32,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "type")]
    pub enum Filter {
        RequestHeaderModifier(HeaderModifier),
        ResponseHeaderModifier(HeaderModifier),
        RequestRedirect(Redirect),
    }

    #[derive(Debug, Serialize, Deserialize)]
    pub struct HeaderModifier {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub set: Vec<NameValue>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub add: Vec<NameValue>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub remove: Vec<String>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Redirect {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub scheme: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub hostname: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub port: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub path: Option<PathRewrite>,
        pub status_code: u16,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "type", content = "value")]
    pub enum PathRewrite {
        ReplaceFullPath(String),
        ReplacePrefixMatch(String),
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "kind", rename_all = "camelCase")]
    pub enum Resource {
        Mesh(MeshSettings),
        Upstream(Upstream),
        Inbound(Inbound),
    }

    /// A resource as read: an unknown kind is kept as nothing.
    #[derive(Deserialize)]
    #[serde(tag = "kind", rename_all = "camelCase")]
    enum Read {
        Mesh(MeshSettings),
        Upstream(Upstream),
        Inbound(Inbound),
        #[serde(other)]
        Unknown,
    }

    fn known<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Resource>, D::Error> {
        let all = BTreeMap::<String, Read>::deserialize(d)?;
        Ok(all
            .into_iter()
            .filter_map(|(key, read)| {
                let resource = match read {
                    Read::Mesh(m) => Resource::Mesh(m),
                    Read::Upstream(u) => Resource::Upstream(u),
                    Read::Inbound(i) => Resource::Inbound(i),
                    Read::Unknown => return None,
                };
                Some((key, resource))
            })
            .collect())
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Snapshot {
        pub version: u64,
        #[serde(deserialize_with = "known")]
        pub resources: BTreeMap<String, Resource>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Delta {
        pub from_version: u64,
        pub version: u64,
        #[serde(deserialize_with = "known")]
        pub upserts: BTreeMap<String, Resource>,
        pub removals: Vec<String>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "camelCase")]
    pub enum Response {
        Snapshot(Snapshot),
        Delta(Delta),
        Error { code: String, message: String },
    }
}

/// Version 10 adds UDP services, a value (a `service` ending in `/udp`)
/// and not a field: its types are version 9's.
pub mod v10 {
    pub use super::v9::*;
}
