//! `MeshConfig`: mesh-wide settings, one cluster-scoped resource named `default`.

// printcolumn(...) entries repeat `type_ = "string"`, which clippy reads as
// a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Mesh-wide settings. Every field has a default, so an empty spec is a
/// working mesh: post-quantum only, permissive inbound, any meshed client allowed.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "phoenix.dev",
    version = "v1alpha1",
    kind = "MeshConfig",
    doc = "Mesh-wide settings of Phoenix: trust domain, key exchange, inbound mode, default policy. One per cluster, named default.",
    plural = "meshconfigs",
    shortname = "meshconf",
    status = "MeshConfigStatus",
    derive = "PartialEq",
    validation = Rule::new("self.metadata.name == 'default'")
        .message("a mesh has one MeshConfig and it is named `default`: rename this resource to default"),
    validation = Rule::new("!has(self.spec) || !has(self.spec.authPolicy) || self.spec.authPolicy != 'pq-only' || (has(self.spec.identityAlgorithm) && self.spec.identityAlgorithm == 'ml-dsa-65')")
        .message("authPolicy pq-only refuses every ECDSA certificate: set identityAlgorithm: ml-dsa-65 (and rotate the root) or use authPolicy: any"),
    printcolumn(name = "Trust Domain", type_ = "string", json_path = ".spec.trustDomain"),
    printcolumn(name = "Key Exchange", type_ = "string", json_path = ".spec.keyExchange"),
    printcolumn(name = "Identity", type_ = "string", json_path = ".spec.identityAlgorithm"),
    printcolumn(name = "Inbound", type_ = "string", json_path = ".spec.inboundMode"),
    printcolumn(name = "Accepted", type_ = "string", json_path = ".status.conditions[?(@.type==\"Accepted\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[cfg_attr(feature = "cel", kube(cel))]
#[serde(rename_all = "camelCase")]
pub struct MeshConfigSpec {
    /// SPIFFE trust domain of every workload identity
    /// (`spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>`). It cannot
    /// change once set: every issued certificate names it.
    #[serde(default = "default_trust_domain")]
    #[schemars(
        length(min = 1, max = 255),
        pattern(r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$")
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("trustDomain cannot change in place: every certificate names it; install a new mesh to change it"))]
    pub trust_domain: String,

    /// Key exchange of every tunnel and control connection: `pq-only`
    /// (X25519MLKEM768 only, classical peers refused) or `pq-preferred`
    /// (X25519 also accepted and counted in metrics).
    #[serde(default)]
    pub key_exchange: KeyExchangePolicy,

    /// The signature algorithm of the mesh root and of every workload
    /// certificate: `ecdsa-p256` (default) or `ml-dsa-65` (post-quantum,
    /// FIPS 204). It picks the algorithm of a root when one is made: at
    /// install, and at `phoenix-control-plane rotate-ca`, which is how a
    /// running mesh moves to ML-DSA without downtime (both roots trusted
    /// during the overlap, every proxy re-keyed).
    #[serde(default)]
    pub identity_algorithm: IdentityAlgorithmName,

    /// Which signatures authenticate a peer: `any` (default) or `pq-only`
    /// (ML-DSA only: a peer with a classical certificate is refused; needs
    /// `identityAlgorithm: ml-dsa-65` and a rotation completed).
    #[serde(default)]
    pub auth_policy: AuthPolicyName,

    /// TLS 1.3 cipher suites in preference order (IANA names).
    #[serde(default = "default_cipher_suites")]
    #[schemars(length(min = 1, max = 3))]
    #[x_kube(validation = Rule::new("self.all(s, self.exists_one(t, t == s))").message("cipherSuites lists a suite twice: list each once"))]
    pub cipher_suites: Vec<CipherSuiteName>,

    /// Lifetime of workload certificates, e.g. `24h`; proxies renew at two
    /// thirds of it.
    #[serde(default = "default_certificate_lifetime")]
    #[schemars(pattern(r"^([0-9]+(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('8760h')").message("certificateLifetime must be between 1m and 8760h (a year)"))]
    pub certificate_lifetime: String,

    /// Plain TCP from clients outside the mesh to a meshed pod: `permissive`
    /// passes it (counted in metrics, reported by `phoenix check`), `strict`
    /// refuses it. A TrafficPolicy can override it per Service.
    #[serde(default)]
    pub inbound_mode: InboundMode,

    /// Who may call a meshed Service that no TrafficPolicy covers.
    #[serde(default)]
    pub default_policy: DefaultPolicy,

    /// A proxy closes its QUIC connection to a peer after this long with no
    /// open stream.
    #[serde(default = "default_peer_idle_timeout")]
    #[schemars(pattern(r"^([0-9]+(ms|s|m|h))+$"))]
    pub peer_idle_timeout: String,

    /// How long a proxy may take to reach a peer (QUIC handshake) or its
    /// local app (TCP connect) before trying the next endpoint.
    #[serde(default = "default_connect_timeout")]
    #[schemars(pattern(r"^([0-9]+(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10ms') && duration(self) <= duration('5m')").message("connectTimeout must be between 10ms and 5m"))]
    pub connect_timeout: String,
}

/// Key-exchange policy.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum KeyExchangePolicy {
    /// X25519MLKEM768 only.
    #[default]
    PqOnly,
    /// X25519MLKEM768 first, X25519 accepted.
    PqPreferred,
}

/// The signature algorithm of roots and workload certificates.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum IdentityAlgorithmName {
    /// ECDSA P-256 with SHA-256.
    #[default]
    EcdsaP256,
    /// ML-DSA-65 (FIPS 204): post-quantum.
    #[serde(rename = "ml-dsa-65")]
    MlDsa65,
}

/// Which signatures authenticate a peer.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum AuthPolicyName {
    /// ECDSA P-256 or ML-DSA.
    #[default]
    Any,
    /// ML-DSA only.
    PqOnly,
}

/// A TLS 1.3 cipher suite.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum CipherSuiteName {
    /// AES-256-GCM, SHA-384.
    TLS13_AES_256_GCM_SHA384,
    /// AES-128-GCM, SHA-256.
    TLS13_AES_128_GCM_SHA256,
    /// ChaCha20-Poly1305, SHA-256.
    TLS13_CHACHA20_POLY1305_SHA256,
}

/// What a meshed pod does with plain TCP from outside the mesh.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum InboundMode {
    /// Pass it to the app, and count it (adoption: unmeshed clients keep working).
    #[default]
    Permissive,
    /// Refuse it: only mutually authenticated tunnels reach the app.
    Strict,
}

/// Who may call a Service no TrafficPolicy covers.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultPolicy {
    /// Every meshed workload of the trust domain.
    #[default]
    AllowMesh,
    /// Meshed workloads of the Service's own namespace.
    AllowNamespace,
    /// Nobody: every Service needs a TrafficPolicy.
    Deny,
}

/// What the control plane reports about the MeshConfig.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfigStatus {
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

fn default_trust_domain() -> String {
    "cluster.local".into()
}

fn default_cipher_suites() -> Vec<CipherSuiteName> {
    vec![
        CipherSuiteName::TLS13_AES_256_GCM_SHA384,
        CipherSuiteName::TLS13_AES_128_GCM_SHA256,
    ]
}

fn default_certificate_lifetime() -> String {
    "24h".into()
}

fn default_peer_idle_timeout() -> String {
    "60s".into()
}

fn default_connect_timeout() -> String {
    "5s".into()
}

impl Default for MeshConfigSpec {
    fn default() -> Self {
        Self {
            trust_domain: default_trust_domain(),
            key_exchange: KeyExchangePolicy::default(),
            identity_algorithm: IdentityAlgorithmName::default(),
            auth_policy: AuthPolicyName::default(),
            cipher_suites: default_cipher_suites(),
            certificate_lifetime: default_certificate_lifetime(),
            inbound_mode: InboundMode::default(),
            default_policy: DefaultPolicy::default(),
            peer_idle_timeout: default_peer_idle_timeout(),
            connect_timeout: default_connect_timeout(),
        }
    }
}
