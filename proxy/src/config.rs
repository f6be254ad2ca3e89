//! The proxy's validated config.
//!
//! Snapshots arrive as wire types ([`phoenix_api::snapshot`]); nothing uses
//! them until [`ProxyConfig::try_from`] has checked every field (each struct
//! is destructured, so a new wire field breaks the build here until it is
//! handled). An invalid snapshot is refused whole and the last good config
//! stays in force.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use phoenix_api::SpiffeId;
use phoenix_api::identity::IdentityError;
use phoenix_api::snapshot::{self, MESH_KEY, Resource, Snapshot};
use phoenix_tls::handshake::TlsPolicy;

/// A whole, validated config at one version.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyConfig {
    /// Snapshot version.
    pub version: u64,
    /// Mesh-wide settings.
    pub mesh: MeshConfig,
    /// Services the app calls, by name.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Services the app serves, by name.
    pub inbound: BTreeMap<String, InboundConfig>,
    /// The snapshot this was built from: deltas apply to it, `/config` shows it.
    pub snapshot: Snapshot,
}

/// Mesh-wide settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshConfig {
    /// Trust domain of every identity.
    pub trust_domain: String,
    /// Key exchange and cipher suites for tunnels.
    pub tls: TlsPolicy,
    /// How long a peer connection may have no stream before it is closed.
    pub peer_idle_timeout: Duration,
    /// How long connecting to the local app may take.
    pub connect_timeout: Duration,
}

/// A service the app calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Where the proxy listens for the app (port 0: any free port).
    pub listen: SocketAddr,
    /// Peer proxies serving the service.
    pub endpoints: Vec<EndpointConfig>,
}

/// One peer proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointConfig {
    /// Its QUIC address.
    pub address: SocketAddr,
    /// The identity it must present.
    pub identity: SpiffeId,
}

/// A service the app serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundConfig {
    /// Where the app listens.
    pub target: SocketAddr,
    /// Who may call it; `None`: any identity of the trust domain.
    pub allow: Option<BTreeSet<SpiffeId>>,
}

/// Why a snapshot is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The snapshot has no `mesh` resource.
    #[error("snapshot has no `mesh` resource")]
    MissingMesh,
    /// A resource is stored under a key that is not its own.
    #[error("resource under key `{key}` belongs under another key")]
    KeyMismatch {
        /// The key it was stored under.
        key: String,
    },
    /// An identity in the snapshot is not a valid SPIFFE ID.
    #[error("resource `{key}` has an invalid identity")]
    Identity {
        /// The resource.
        key: String,
        /// Why.
        #[source]
        source: IdentityError,
    },
    /// An identity belongs to another trust domain.
    #[error("resource `{key}` names an identity outside the trust domain")]
    ForeignTrustDomain {
        /// The resource.
        key: String,
    },
    /// A timeout is zero.
    #[error("mesh setting `{field}` must be greater than zero")]
    ZeroTimeout {
        /// The field.
        field: &'static str,
    },
    /// Two upstreams want the same fixed listen address.
    #[error("upstreams `{first}` and `{second}` both listen on {address}")]
    ListenConflict {
        /// One service.
        first: String,
        /// The other.
        second: String,
        /// The address.
        address: SocketAddr,
    },
    /// An upstream lists the same endpoint address twice.
    #[error("upstream `{service}` lists the same endpoint address twice")]
    DuplicateEndpoint {
        /// The service.
        service: String,
    },
}

impl TryFrom<&Snapshot> for ProxyConfig {
    type Error = ConfigError;

    fn try_from(snap: &Snapshot) -> Result<Self, ConfigError> {
        let Snapshot { version, resources } = snap;
        let mut mesh = None;
        let mut upstreams = BTreeMap::new();
        let mut inbound = BTreeMap::new();
        for (key, resource) in resources {
            if *key != resource.key() {
                return Err(ConfigError::KeyMismatch { key: key.clone() });
            }
            match resource {
                Resource::Mesh(m) => mesh = Some(mesh_config(m)?),
                Resource::Upstream(u) => {
                    let snapshot::Upstream {
                        service,
                        listen,
                        endpoints,
                    } = u;
                    let mut seen = BTreeSet::new();
                    let endpoints = endpoints
                        .iter()
                        .map(|e| {
                            let snapshot::Endpoint { address, identity } = e;
                            if !seen.insert(*address) {
                                return Err(ConfigError::DuplicateEndpoint {
                                    service: service.clone(),
                                });
                            }
                            Ok(EndpointConfig {
                                address: *address,
                                identity: parse_id(key, identity)?,
                            })
                        })
                        .collect::<Result<_, _>>()?;
                    upstreams.insert(
                        service.clone(),
                        UpstreamConfig {
                            listen: *listen,
                            endpoints,
                        },
                    );
                }
                Resource::Inbound(i) => {
                    let snapshot::Inbound {
                        service,
                        target,
                        allow,
                    } = i;
                    let allow = allow
                        .as_ref()
                        .map(|ids| ids.iter().map(|id| parse_id(key, id)).collect())
                        .transpose()?;
                    inbound.insert(
                        service.clone(),
                        InboundConfig {
                            target: *target,
                            allow,
                        },
                    );
                }
            }
        }
        let mesh = mesh.ok_or(ConfigError::MissingMesh)?;
        check_trust_domain(&mesh.trust_domain, &upstreams, &inbound)?;
        check_listen_conflicts(&upstreams)?;
        Ok(ProxyConfig {
            version: *version,
            mesh,
            upstreams,
            inbound,
            snapshot: snap.clone(),
        })
    }
}

fn mesh_config(m: &snapshot::MeshSettings) -> Result<MeshConfig, ConfigError> {
    let snapshot::MeshSettings {
        trust_domain,
        key_exchange,
        cipher_suites,
        peer_idle_timeout_ms,
        connect_timeout_ms,
    } = m;
    // Validate the trust domain the same way identities are validated.
    SpiffeId::workload(trust_domain, "x", "x").map_err(|source| ConfigError::Identity {
        key: MESH_KEY.to_owned(),
        source,
    })?;
    if *peer_idle_timeout_ms == 0 {
        return Err(ConfigError::ZeroTimeout {
            field: "peerIdleTimeoutMs",
        });
    }
    if *connect_timeout_ms == 0 {
        return Err(ConfigError::ZeroTimeout {
            field: "connectTimeoutMs",
        });
    }
    Ok(MeshConfig {
        trust_domain: trust_domain.clone(),
        tls: TlsPolicy {
            key_exchange: *key_exchange,
            cipher_suites: cipher_suites.clone(),
        },
        peer_idle_timeout: Duration::from_millis(*peer_idle_timeout_ms),
        connect_timeout: Duration::from_millis(*connect_timeout_ms),
    })
}

fn parse_id(key: &str, id: &str) -> Result<SpiffeId, ConfigError> {
    id.parse().map_err(|source| ConfigError::Identity {
        key: key.to_owned(),
        source,
    })
}

fn check_trust_domain(
    td: &str,
    upstreams: &BTreeMap<String, UpstreamConfig>,
    inbound: &BTreeMap<String, InboundConfig>,
) -> Result<(), ConfigError> {
    for (service, u) in upstreams {
        if u.endpoints.iter().any(|e| e.identity.trust_domain() != td) {
            return Err(ConfigError::ForeignTrustDomain {
                key: format!("upstream/{service}"),
            });
        }
    }
    for (service, i) in inbound {
        if i.allow.iter().flatten().any(|id| id.trust_domain() != td) {
            return Err(ConfigError::ForeignTrustDomain {
                key: format!("inbound/{service}"),
            });
        }
    }
    Ok(())
}

fn check_listen_conflicts(upstreams: &BTreeMap<String, UpstreamConfig>) -> Result<(), ConfigError> {
    let mut by_addr: BTreeMap<SocketAddr, &str> = BTreeMap::new();
    for (service, u) in upstreams {
        if u.listen.port() == 0 {
            continue;
        }
        if let Some(first) = by_addr.insert(u.listen, service) {
            return Err(ConfigError::ListenConflict {
                first: first.to_owned(),
                second: service.clone(),
                address: u.listen,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use phoenix_api::snapshot::{Endpoint, Inbound, MeshSettings, Upstream};
    use phoenix_api::tls_policy::{CipherSuite, KeyExchange};

    fn mesh() -> Resource {
        Resource::Mesh(MeshSettings {
            trust_domain: "phoenix.local".into(),
            key_exchange: KeyExchange::PqOnly,
            cipher_suites: CipherSuite::DEFAULT.to_vec(),
            peer_idle_timeout_ms: 60_000,
            connect_timeout_ms: 1_000,
        })
    }

    fn snap(resources: Vec<Resource>) -> Snapshot {
        Snapshot {
            version: 3,
            resources: resources.into_iter().map(|r| (r.key(), r)).collect(),
        }
    }

    fn upstream(service: &str, listen: &str, identity: &str) -> Resource {
        Resource::Upstream(Upstream {
            service: service.into(),
            listen: listen.parse().unwrap(),
            endpoints: vec![Endpoint {
                address: "127.0.0.1:4143".parse().unwrap(),
                identity: identity.into(),
            }],
        })
    }

    #[test]
    fn valid_snapshot_is_accepted() {
        let s = snap(vec![
            mesh(),
            upstream(
                "db",
                "127.0.0.1:0",
                "spiffe://phoenix.local/ns/default/sa/db",
            ),
            Resource::Inbound(Inbound {
                service: "web".into(),
                target: "127.0.0.1:8080".parse().unwrap(),
                allow: Some(vec!["spiffe://phoenix.local/ns/default/sa/client".into()]),
            }),
        ]);
        let c = ProxyConfig::try_from(&s).unwrap();
        assert_eq!(c.version, 3);
        assert_eq!(c.upstreams["db"].endpoints.len(), 1);
        assert_eq!(c.inbound["web"].allow.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn refuses_what_would_misroute() {
        assert!(matches!(
            ProxyConfig::try_from(&snap(vec![])),
            Err(ConfigError::MissingMesh)
        ));
        assert!(matches!(
            ProxyConfig::try_from(&snap(vec![
                mesh(),
                upstream("db", "127.0.0.1:0", "not-an-id")
            ])),
            Err(ConfigError::Identity { .. })
        ));
        assert!(matches!(
            ProxyConfig::try_from(&snap(vec![
                mesh(),
                upstream(
                    "db",
                    "127.0.0.1:0",
                    "spiffe://evil.example/ns/default/sa/db"
                )
            ])),
            Err(ConfigError::ForeignTrustDomain { .. })
        ));
        assert!(matches!(
            ProxyConfig::try_from(&snap(vec![
                mesh(),
                upstream(
                    "a",
                    "127.0.0.1:7000",
                    "spiffe://phoenix.local/ns/default/sa/db"
                ),
                upstream(
                    "b",
                    "127.0.0.1:7000",
                    "spiffe://phoenix.local/ns/default/sa/db"
                ),
            ])),
            Err(ConfigError::ListenConflict { .. })
        ));
        let mut bad_key = snap(vec![mesh()]);
        let r = upstream(
            "db",
            "127.0.0.1:0",
            "spiffe://phoenix.local/ns/default/sa/db",
        );
        bad_key.resources.insert("upstream/other".into(), r);
        assert!(matches!(
            ProxyConfig::try_from(&bad_key),
            Err(ConfigError::KeyMismatch { .. })
        ));
    }
}
