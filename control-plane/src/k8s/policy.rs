//! Phoenix's resources validated into what the index uses: the mesh
//! settings from MeshConfig, per-Service policies from TrafficPolicy, and
//! the audience of a Service (who may call it: the allow-list its serving
//! proxies enforce).

use std::time::Duration;

use phoenix_api::duration::{self, DurationError};
use phoenix_api::snapshot::MeshSettings;
use phoenix_api::tls_policy::{AuthPolicy, CipherSuite, IdentityAlgorithm, KeyExchange};

use super::records::ObjectKey;
use crate::crd::mesh_config::{
    AuthPolicyName, CipherSuiteName, DefaultPolicy, IdentityAlgorithmName, KeyExchangePolicy,
    MeshConfigSpec,
};
use crate::crd::traffic_policy::{ClientSelector, TrafficPolicySpec};

/// Name of the one MeshConfig Phoenix reads.
pub const MESH_CONFIG_NAME: &str = "default";

/// The validated mesh-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshRecord {
    /// Sent to every proxy.
    pub settings: MeshSettings,
    /// The algorithm of a root made from now on (install, `rotate-ca`).
    pub identity_algorithm: IdentityAlgorithm,
    /// Lifetime of issued certificates.
    pub certificate_lifetime: Duration,
    /// Who may call a Service no policy covers.
    pub default_policy: DefaultPolicy,
}

/// Why a MeshConfig is not used (the previous settings stay in force).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshConfigError {
    /// Only `default` is read.
    #[error("only the MeshConfig named `default` is read; rename this one or delete it")]
    NotDefault,
    /// The trust domain differs from the control plane's.
    #[error(
        "trustDomain {requested:?} differs from the control plane's {running:?}: every certificate names it, so it is fixed at install (helm value trustDomain)"
    )]
    TrustDomain {
        /// What the MeshConfig asks for.
        requested: String,
        /// What the control plane runs with.
        running: String,
    },
    /// A duration field does not parse.
    #[error("{field}: {source}")]
    Duration {
        /// The field.
        field: &'static str,
        /// Why.
        #[source]
        source: DurationError,
    },
    /// A duration is outside its range.
    #[error("{field} must be between {min} and {max}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// Lowest value.
        min: &'static str,
        /// Highest value.
        max: &'static str,
    },
    /// `pq-only` authentication with classical identities.
    #[error(
        "authPolicy pq-only refuses every ECDSA certificate, and identityAlgorithm is ecdsa-p256: set identityAlgorithm: ml-dsa-65 (and rotate the root) or use authPolicy: any"
    )]
    PqOnlyWithClassicalIdentities,
}

impl MeshRecord {
    /// The settings of a mesh with no MeshConfig.
    pub fn defaults(trust_domain: &str) -> Self {
        let spec = MeshConfigSpec {
            trust_domain: trust_domain.to_owned(),
            ..MeshConfigSpec::default()
        };
        // The defaults are valid by construction; the fallback keeps this
        // total should a default ever stop parsing.
        Self::validate(MESH_CONFIG_NAME, &spec, trust_domain).unwrap_or(Self {
            settings: MeshSettings {
                trust_domain: trust_domain.to_owned(),
                key_exchange: KeyExchange::PqOnly,
                cipher_suites: CipherSuite::DEFAULT.to_vec(),
                peer_idle_timeout_ms: 60_000,
                connect_timeout_ms: 5_000,
                // Set by the index from the root schedule.
                inbound_mode: Default::default(),
                trust_bundle_pem: None,
                identity_algorithm: Default::default(),
                auth_policy: Default::default(),
            },
            identity_algorithm: Default::default(),
            certificate_lifetime: Duration::from_secs(24 * 3600),
            default_policy: DefaultPolicy::AllowMesh,
        })
    }

    /// Validates the MeshConfig `name` with `spec` for a control plane of `trust_domain`.
    pub fn validate(
        name: &str,
        spec: &MeshConfigSpec,
        trust_domain: &str,
    ) -> Result<Self, MeshConfigError> {
        let MeshConfigSpec {
            trust_domain: requested,
            key_exchange,
            identity_algorithm,
            auth_policy,
            cipher_suites,
            certificate_lifetime,
            inbound_mode,
            default_policy,
            peer_idle_timeout,
            connect_timeout,
        } = spec;
        if name != MESH_CONFIG_NAME {
            return Err(MeshConfigError::NotDefault);
        }
        if requested != trust_domain {
            return Err(MeshConfigError::TrustDomain {
                requested: requested.clone(),
                running: trust_domain.to_owned(),
            });
        }
        let lifetime = parse("certificateLifetime", certificate_lifetime)?;
        if !(Duration::from_secs(60)..=Duration::from_secs(8760 * 3600)).contains(&lifetime) {
            return Err(MeshConfigError::OutOfRange {
                field: "certificateLifetime",
                min: "1m",
                max: "8760h",
            });
        }
        let connect = parse("connectTimeout", connect_timeout)?;
        if !(Duration::from_millis(10)..=Duration::from_secs(300)).contains(&connect) {
            return Err(MeshConfigError::OutOfRange {
                field: "connectTimeout",
                min: "10ms",
                max: "5m",
            });
        }
        let idle = parse("peerIdleTimeout", peer_idle_timeout)?;
        if idle.is_zero() {
            return Err(MeshConfigError::OutOfRange {
                field: "peerIdleTimeout",
                min: "1ms",
                max: "any",
            });
        }
        let identity_algorithm = match identity_algorithm {
            IdentityAlgorithmName::EcdsaP256 => IdentityAlgorithm::EcdsaP256,
            IdentityAlgorithmName::MlDsa65 => IdentityAlgorithm::MlDsa65,
        };
        let auth_policy = match auth_policy {
            AuthPolicyName::Any => AuthPolicy::Any,
            AuthPolicyName::PqOnly => AuthPolicy::PqOnly,
        };
        if auth_policy == AuthPolicy::PqOnly && !identity_algorithm.is_post_quantum() {
            return Err(MeshConfigError::PqOnlyWithClassicalIdentities);
        }
        let mut suites = Vec::new();
        for s in cipher_suites {
            let suite = match s {
                CipherSuiteName::TLS13_AES_256_GCM_SHA384 => CipherSuite::TLS13_AES_256_GCM_SHA384,
                CipherSuiteName::TLS13_AES_128_GCM_SHA256 => CipherSuite::TLS13_AES_128_GCM_SHA256,
                CipherSuiteName::TLS13_CHACHA20_POLY1305_SHA256 => {
                    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
                }
            };
            if !suites.contains(&suite) {
                suites.push(suite);
            }
        }
        if suites.is_empty() {
            suites = CipherSuite::DEFAULT.to_vec();
        }
        Ok(Self {
            settings: MeshSettings {
                trust_domain: trust_domain.to_owned(),
                key_exchange: match key_exchange {
                    KeyExchangePolicy::PqOnly => KeyExchange::PqOnly,
                    KeyExchangePolicy::PqPreferred => KeyExchange::PqPreferred,
                },
                cipher_suites: suites,
                peer_idle_timeout_ms: idle.as_millis() as u64,
                connect_timeout_ms: connect.as_millis() as u64,
                inbound_mode: wire_inbound_mode(*inbound_mode),
                trust_bundle_pem: None,
                // Set by the index from the root schedule (the signing
                // root's algorithm), not from the spec.
                identity_algorithm: Default::default(),
                auth_policy,
            },
            identity_algorithm,
            certificate_lifetime: lifetime,
            default_policy: *default_policy,
        })
    }
}

fn parse(field: &'static str, value: &str) -> Result<Duration, MeshConfigError> {
    duration::parse(value).map_err(|source| MeshConfigError::Duration { field, source })
}

/// Who may call a Service (and so which proxies are sent it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// Every meshed workload of the trust domain.
    Mesh,
    /// Workloads of one namespace.
    Namespace(String),
    /// Workloads matched by any of these `(namespace, service account)`
    /// selectors; `None` as the account matches the whole namespace. Empty:
    /// nobody.
    Selected(Vec<(String, Option<String>)>),
}

impl Audience {
    /// The audience a default policy gives a Service in `namespace`.
    pub fn from_default(policy: DefaultPolicy, namespace: &str) -> Self {
        match policy {
            DefaultPolicy::AllowMesh => Audience::Mesh,
            DefaultPolicy::AllowNamespace => Audience::Namespace(namespace.to_owned()),
            DefaultPolicy::Deny => Audience::Selected(vec![]),
        }
    }

    /// Whether the workload `(namespace, service_account)` may call.
    pub fn admits(&self, namespace: &str, service_account: &str) -> bool {
        match self {
            Audience::Mesh => true,
            Audience::Namespace(ns) => ns == namespace,
            Audience::Selected(selectors) => selectors.iter().any(|(ns, sa)| {
                ns == namespace && sa.as_deref().is_none_or(|sa| sa == service_account)
            }),
        }
    }

    /// The proxy's allow-list for this audience (see `Inbound::allow`).
    pub fn allow_list(&self, trust_domain: &str) -> Option<Vec<String>> {
        let id = |ns: &str, sa: Option<&str>| {
            format!("spiffe://{trust_domain}/ns/{ns}/sa/{}", sa.unwrap_or("*"))
        };
        match self {
            Audience::Mesh => None,
            Audience::Namespace(ns) => Some(vec![id(ns, None)]),
            Audience::Selected(selectors) => Some(
                selectors
                    .iter()
                    .map(|(ns, sa)| id(ns, sa.as_deref()))
                    .collect(),
            ),
        }
    }
}

/// A TrafficPolicy as the index uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRecord {
    /// The Service it targets.
    pub target: ObjectKey,
    /// Creation time (seconds) and name: the oldest policy on a Service wins.
    pub age: (i64, String),
    /// Who may call; `None`: the default policy applies.
    pub audience: Option<Audience>,
    /// Why the spec cannot be used, if it cannot.
    pub invalid: Option<PolicyError>,
    /// `metadata.generation`, for `status.observedGeneration`.
    pub generation: Option<i64>,
    /// Per-Service connect timeout.
    pub connect_timeout: Option<Duration>,
    /// Idle timeout of the Service's connections.
    pub idle_timeout: Option<Duration>,
    /// The Service's override of the mesh's inbound mode.
    pub inbound_mode: Option<phoenix_api::snapshot::InboundMode>,
    /// What the Service speaks, when the policy says (it overrides the
    /// port's `appProtocol`).
    pub protocol: Option<phoenix_api::protocol::Protocol>,
    /// How long one HTTP request to the Service may take.
    pub request_timeout: Option<Duration>,
    /// Which failed HTTP requests to the Service are retried.
    pub retry: Option<phoenix_api::snapshot::RetryPolicy>,
}

/// The wire form of a CRD inbound mode.
pub fn wire_inbound_mode(
    mode: crate::crd::mesh_config::InboundMode,
) -> phoenix_api::snapshot::InboundMode {
    match mode {
        crate::crd::mesh_config::InboundMode::Permissive => {
            phoenix_api::snapshot::InboundMode::Permissive
        }
        crate::crd::mesh_config::InboundMode::Strict => phoenix_api::snapshot::InboundMode::Strict,
    }
}

/// Why a TrafficPolicy's spec is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A duration field does not parse.
    #[error("{field}: {source}")]
    Duration {
        /// The field.
        field: &'static str,
        /// Why.
        #[source]
        source: DurationError,
    },
    /// An allow entry names neither a namespace nor a service account.
    #[error("allow[{0}] names neither a serviceAccount nor a namespace; name one or both")]
    EmptySelector(usize),
    /// The retry policy cannot be used.
    #[error("retry.{0}")]
    Retry(#[source] crate::retry::RetryError),
}

impl PolicyRecord {
    /// The record of the policy `key` with `spec`, created at `created` (Unix seconds).
    pub fn new(key: &ObjectKey, spec: &TrafficPolicySpec, created: i64) -> Self {
        let TrafficPolicySpec {
            target_ref,
            allow,
            connect_timeout,
            idle_timeout,
            protocol,
            inbound_mode,
            request_timeout,
            retry,
        } = spec;
        let mut invalid = None;
        let mut parse = |field: &'static str, value: &Option<String>| match value
            .as_deref()
            .map(duration::parse)
        {
            Some(Ok(d)) => Some(d),
            Some(Err(source)) => {
                invalid.get_or_insert(PolicyError::Duration { field, source });
                None
            }
            None => None,
        };
        let connect_timeout = parse("connectTimeout", connect_timeout);
        let idle_timeout = parse("idleTimeout", idle_timeout);
        let request_timeout = parse("requestTimeout", request_timeout);
        let retry = match retry.as_ref().map(crate::retry::RetrySpec::to_wire) {
            Some(Ok(policy)) => Some(policy),
            Some(Err(error)) => {
                invalid.get_or_insert(PolicyError::Retry(error));
                None
            }
            None => None,
        };
        let audience = allow.as_ref().map(|entries| {
            let mut selectors = vec![];
            for (
                i,
                ClientSelector {
                    namespace,
                    service_account,
                },
            ) in entries.iter().enumerate()
            {
                if namespace.is_none() && service_account.is_none() {
                    invalid.get_or_insert(PolicyError::EmptySelector(i));
                    continue;
                }
                selectors.push((
                    namespace.clone().unwrap_or_else(|| key.namespace.clone()),
                    service_account.clone(),
                ));
            }
            Audience::Selected(selectors)
        });
        Self {
            target: ObjectKey::new(&key.namespace, &target_ref.name),
            age: (created, key.name.clone()),
            audience,
            invalid,
            generation: None,
            connect_timeout,
            idle_timeout,
            inbound_mode: inbound_mode.map(wire_inbound_mode),
            protocol: protocol.map(|p| p.wire()),
            request_timeout,
            retry,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_mesh_config_is_post_quantum_only() {
        let m = MeshRecord::defaults("cluster.local");
        assert_eq!(m.settings.key_exchange, KeyExchange::PqOnly);
        assert_eq!(m.settings.connect_timeout_ms, 5_000);
        assert_eq!(m.default_policy, DefaultPolicy::AllowMesh);
    }

    #[test]
    fn mesh_config_errors_name_the_field() {
        let spec = |f: fn(&mut MeshConfigSpec)| {
            let mut s = MeshConfigSpec::default();
            f(&mut s);
            s
        };
        let td = "cluster.local";
        assert_eq!(
            MeshRecord::validate("prod", &MeshConfigSpec::default(), td),
            Err(MeshConfigError::NotDefault)
        );
        let e = MeshRecord::validate("default", &spec(|s| s.trust_domain = "other".into()), td)
            .unwrap_err();
        assert!(
            e.to_string().contains("differs from the control plane's"),
            "{e}"
        );
        let e = MeshRecord::validate("default", &spec(|s| s.connect_timeout = "soon".into()), td)
            .unwrap_err();
        assert!(e.to_string().starts_with("connectTimeout: "), "{e}");
        let e = MeshRecord::validate(
            "default",
            &spec(|s| s.certificate_lifetime = "30s".into()),
            td,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("certificateLifetime must be between"),
            "{e}"
        );
    }

    #[test]
    fn traffic_policy_http_settings_are_read_and_checked() {
        let key = ObjectKey::new("shop", "web-policy");
        let spec: TrafficPolicySpec = serde_json::from_value(serde_json::json!({
            "targetRef": {"group": "", "kind": "Service", "name": "web"},
            "requestTimeout": "2s",
            "retry": {"grpcStatusCodes": ["UNAVAILABLE"], "maxRetries": 3}
        }))
        .unwrap();
        let record = PolicyRecord::new(&key, &spec, 0);
        assert_eq!(record.invalid, None);
        assert_eq!(record.request_timeout, Some(Duration::from_secs(2)));
        let retry = record.retry.unwrap();
        assert_eq!((retry.grpc_status_codes, retry.max_retries), (vec![14], 3));
        let spec: TrafficPolicySpec = serde_json::from_value(serde_json::json!({
            "targetRef": {"group": "", "kind": "Service", "name": "web"},
            "retry": {"grpcStatusCodes": ["SOMETIMES"]}
        }))
        .unwrap();
        let record = PolicyRecord::new(&key, &spec, 0);
        let error = record.invalid.unwrap().to_string();
        assert!(
            error.starts_with("retry.grpcStatusCodes: `SOMETIMES`"),
            "{error}"
        );
        assert_eq!(record.retry, None);
    }

    #[test]
    fn audiences_admit_and_render_allow_lists() {
        let sel = Audience::Selected(vec![
            ("shop".into(), Some("web".into())),
            ("batch".into(), None),
        ]);
        assert!(sel.admits("shop", "web"));
        assert!(!sel.admits("shop", "admin"));
        assert!(sel.admits("batch", "anything"));
        assert_eq!(
            sel.allow_list("td").unwrap(),
            vec!["spiffe://td/ns/shop/sa/web", "spiffe://td/ns/batch/sa/*"]
        );
        assert!(Audience::Mesh.allow_list("td").is_none());
        assert_eq!(Audience::Selected(vec![]).allow_list("td"), Some(vec![]));
        assert!(!Audience::Selected(vec![]).admits("shop", "web"));
        assert!(Audience::Namespace("shop".into()).admits("shop", "x"));
        assert!(!Audience::Namespace("shop".into()).admits("other", "x"));
    }
}
