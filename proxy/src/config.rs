//! The proxy's validated config.
//!
//! Snapshots arrive as wire types ([`phoenix_api::snapshot`]); nothing uses
//! them until [`ProxyConfig::try_from`] has checked every field (each struct
//! is destructured, so a new wire field breaks the build here until it is
//! handled). An invalid snapshot is refused whole and the last good config
//! stays in force.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use phoenix_api::identity::IdentityError;
use phoenix_api::snapshot::{self, MESH_KEY, Resource, Snapshot};
use phoenix_api::{ServiceName, SpiffeId};
use phoenix_tls::handshake::TlsPolicy;

/// A whole, validated config at one version.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyConfig {
    /// Snapshot version.
    pub version: u64,
    /// Mesh-wide settings.
    pub mesh: MeshConfig,
    /// Services the app calls, by name.
    pub upstreams: BTreeMap<ServiceName, UpstreamConfig>,
    /// Services the app serves, by name.
    pub inbound: BTreeMap<ServiceName, InboundConfig>,
    /// The snapshot this was built from: deltas apply to it, `/config` shows it.
    pub snapshot: Snapshot,
    /// Lookup tables for intercepted connections, built once per config:
    /// every proxy knows every meshed Service, so a per-connection scan of
    /// all endpoints would cost each passthrough connection as much.
    pub routes: RouteIndex,
}

/// Where an intercepted connection's original destination leads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteIndex {
    /// A service's virtual address → the service.
    pub by_address: HashMap<SocketAddr, ServiceName>,
    /// A meshed pod's address (any family) → the first service (by name)
    /// it is an endpoint of, and its index in that service's endpoints.
    pub by_pod_ip: HashMap<IpAddr, (ServiceName, usize)>,
}

impl RouteIndex {
    fn build(upstreams: &BTreeMap<ServiceName, UpstreamConfig>) -> Self {
        let mut index = Self::default();
        // Interception carries TCP: a UDP service's addresses and endpoints
        // must never route a TCP connection.
        let tcp = upstreams
            .iter()
            .filter(|(name, _)| name.transport() == phoenix_api::service::Transport::Tcp);
        for (name, upstream) in tcp {
            for address in &upstream.addresses {
                index
                    .by_address
                    .entry(*address)
                    .or_insert_with(|| name.clone());
            }
            for (i, endpoint) in upstream.endpoints.iter().enumerate() {
                let ips = std::iter::once(endpoint.address.ip())
                    .chain(endpoint.other_ips.iter().copied());
                for ip in ips {
                    index
                        .by_pod_ip
                        .entry(ip)
                        .or_insert_with(|| (name.clone(), i));
                }
            }
        }
        index
    }
}

/// Mesh-wide settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshConfig {
    /// Trust domain of every identity.
    pub trust_domain: String,
    /// Key exchange, cipher suites and authentication policy for tunnels.
    pub tls: TlsPolicy,
    /// The algorithm of the signing root: our key's, from the next renewal
    /// (at once when ours differs).
    pub identity_algorithm: phoenix_api::tls_policy::IdentityAlgorithm,
    /// How long a peer connection may have no stream before it is closed.
    pub peer_idle_timeout: Duration,
    /// How long connecting to the local app may take.
    pub connect_timeout: Duration,
    /// Plain TCP from outside the mesh, at the inbound redirect listener.
    pub inbound_mode: phoenix_api::snapshot::InboundMode,
    /// The mesh roots to trust (PEM), when the control plane sends them;
    /// the bootstrap trust anchor stays in force otherwise.
    pub trust_bundle: Option<String>,
}

/// A service the app calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Where the proxy listens for the app (port 0: any free port); `None`
    /// when the app reaches the service through interception.
    pub listen: Option<SocketAddr>,
    /// The service's virtual addresses (ClusterIP:port).
    pub addresses: Vec<SocketAddr>,
    /// Per-service connect timeout; the mesh's when `None`.
    pub connect_timeout: Option<Duration>,
    /// Close connections idle this long; never when `None`.
    pub idle_timeout: Option<Duration>,
    /// Peer proxies serving the service.
    pub endpoints: Vec<EndpointConfig>,
    /// What it speaks (resolved by the control plane).
    pub protocol: phoenix_api::protocol::Protocol,
    /// How long one HTTP request may take, to its response's end.
    pub request_timeout: Option<Duration>,
    /// Which failed HTTP requests are tried again.
    pub retry: Option<RetryConfig>,
    /// The HTTP routes attached to it (empty: requests go to it).
    pub routes: crate::http::route::RouteTable,
}

/// Which failed HTTP requests of a service are retried (validated
/// [`snapshot::RetryPolicy`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryConfig {
    /// HTTP statuses retried.
    pub status_codes: Vec<http::StatusCode>,
    /// gRPC statuses retried (0 to 16).
    pub grpc_status_codes: Vec<u8>,
    /// Retries of one request, at most.
    pub max_retries: u32,
    /// Whether non-idempotent methods are retried too.
    pub non_idempotent: bool,
    /// Retries add at most this percentage of requests...
    pub budget_percent: u32,
    /// ...plus this many per second.
    pub budget_min_per_second: u32,
}

/// The most retries one request may take: more would only multiply the
/// load on a failing service.
pub const MAX_RETRIES: u32 = 10;

impl RetryConfig {
    pub(crate) fn validate(key: &str, policy: &snapshot::RetryPolicy) -> Result<Self, ConfigError> {
        let snapshot::RetryPolicy {
            status_codes,
            grpc_status_codes,
            max_retries,
            non_idempotent,
            budget_percent,
            budget_min_per_second,
        } = policy;
        let bad = |problem: RetryProblem| ConfigError::Retry {
            key: key.to_owned(),
            problem,
        };
        let status_codes = status_codes
            .iter()
            .map(|&code| {
                http::StatusCode::from_u16(code)
                    .ok()
                    .filter(|_| (100..600).contains(&code))
                    .ok_or(bad(RetryProblem::Status(code)))
            })
            .collect::<Result<_, _>>()?;
        if let Some(&code) = grpc_status_codes.iter().find(|&&c| c > 16) {
            return Err(bad(RetryProblem::GrpcStatus(code)));
        }
        if *max_retries == 0 || *max_retries > MAX_RETRIES {
            return Err(bad(RetryProblem::MaxRetries(*max_retries)));
        }
        if *budget_percent > 100 {
            return Err(bad(RetryProblem::BudgetPercent(*budget_percent)));
        }
        Ok(Self {
            status_codes,
            grpc_status_codes: grpc_status_codes.clone(),
            max_retries: *max_retries,
            non_idempotent: *non_idempotent,
            budget_percent: *budget_percent,
            budget_min_per_second: *budget_min_per_second,
        })
    }
}

/// What is wrong with a retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RetryProblem {
    /// A status outside 100–599.
    #[error("statusCodes lists {0}, not an HTTP status (100-599)")]
    Status(u16),
    /// A gRPC status above 16.
    #[error("grpcStatusCodes lists {0}; gRPC statuses go from 0 to 16")]
    GrpcStatus(u8),
    /// Zero retries, or more than [`MAX_RETRIES`].
    #[error("maxRetries is {0}; it must be from 1 to 10")]
    MaxRetries(u32),
    /// A budget over 100%.
    #[error("budgetPercent is {0}; it must be at most 100")]
    BudgetPercent(u32),
}

/// One peer proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointConfig {
    /// Its QUIC address.
    pub address: SocketAddr,
    /// The identity it must present.
    pub identity: SpiffeId,
    /// The pod's addresses in its other IP families (dual-stack).
    pub other_ips: Vec<IpAddr>,
}

impl EndpointConfig {
    /// Whether a connection to `ip` is to this endpoint's pod.
    pub fn is_pod_ip(&self, ip: IpAddr) -> bool {
        self.address.ip() == ip || self.other_ips.contains(&ip)
    }
}

/// A service the app serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundConfig {
    /// Where the app listens.
    pub target: SocketAddr,
    /// The pod's addresses in its other IP families (dual-stack).
    pub other_ips: Vec<IpAddr>,
    /// Who may call it; `None`: any identity of the trust domain.
    pub allow: Option<AllowList>,
    /// Its override of the mesh's inbound mode (plain TCP from outside).
    pub inbound_mode: Option<phoenix_api::snapshot::InboundMode>,
    /// What the app speaks on its target port.
    pub protocol: phoenix_api::protocol::Protocol,
}

impl InboundConfig {
    /// Where to connect for a client that dialled `dst` (intercepted), if
    /// the app serves it: `dst` itself when it is one of the pod's other
    /// addresses at the target's port (the app may listen on that family
    /// alone), else the target when it is `dst`, or the same port on a
    /// wildcard or loopback listener (apps commonly bind 0.0.0.0 while
    /// clients dial the pod IP).
    pub fn reached_at(&self, dst: SocketAddr) -> Option<SocketAddr> {
        let ip = self.target.ip();
        if self.target.port() != dst.port() {
            None
        } else if ip == dst.ip() || ip.is_unspecified() || ip.is_loopback() {
            Some(self.target)
        } else if self.other_ips.contains(&dst.ip()) {
            Some(dst)
        } else {
            None
        }
    }
}

/// Identities allowed to call a service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    /// Exactly these identities.
    pub ids: BTreeSet<SpiffeId>,
    /// Every service account of these namespaces (`.../ns/<ns>/sa/*`).
    pub namespaces: BTreeSet<String>,
}

impl AllowList {
    /// Whether `client` may call.
    pub fn admits(&self, client: &SpiffeId) -> bool {
        self.ids.contains(client)
            || client
                .namespace_and_service_account()
                .is_some_and(|(ns, _)| self.namespaces.contains(ns))
    }
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
    /// The trust bundle holds no usable CA certificate.
    #[error("mesh setting `trustBundlePem` is not a usable PEM bundle of CA certificates")]
    TrustBundle(#[source] phoenix_tls::handshake::TlsConfigError),
    /// An address in `otherIps` is unspecified or one the resource already names.
    #[error(
        "resource `{key}` lists {ip} in otherIps: it must be another concrete address of the same pod"
    )]
    OtherIp {
        /// The resource.
        key: String,
        /// The address.
        ip: IpAddr,
    },
    /// An upstream lists the same endpoint address twice.
    #[error("upstream `{service}` lists the same endpoint address twice")]
    DuplicateEndpoint {
        /// The service.
        service: String,
    },
    /// An upstream's route cannot be used.
    #[error("resource `{key}` has a route `{route}` that cannot be used: {problem}")]
    Route {
        /// The resource.
        key: String,
        /// The route's name (empty when the problem is in a match).
        route: String,
        /// What is wrong.
        problem: crate::http::route::RouteProblem,
    },
    /// An upstream's retry policy cannot be used.
    #[error("resource `{key}` has a retry policy that cannot be used: {problem}")]
    Retry {
        /// The resource.
        key: String,
        /// What is wrong.
        problem: RetryProblem,
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
                        addresses,
                        endpoints,
                        connect_timeout_ms,
                        idle_timeout_ms,
                        protocol,
                        request_timeout_ms,
                        retry,
                        routes,
                    } = u;
                    let positive = |field: &'static str, ms: &Option<u64>| match ms {
                        Some(0) => Err(ConfigError::ZeroTimeout { field }),
                        other => Ok(other.map(Duration::from_millis)),
                    };
                    let connect_timeout =
                        positive("upstream connectTimeoutMs", connect_timeout_ms)?;
                    let idle_timeout = positive("upstream idleTimeoutMs", idle_timeout_ms)?;
                    let request_timeout =
                        positive("upstream requestTimeoutMs", request_timeout_ms)?;
                    let retry = retry
                        .as_ref()
                        .map(|r| RetryConfig::validate(key, r))
                        .transpose()?;
                    let mut seen = BTreeSet::new();
                    let endpoints = endpoints
                        .iter()
                        .map(|e| {
                            let snapshot::Endpoint {
                                address,
                                identity,
                                other_ips,
                            } = e;
                            if !seen.insert(*address) {
                                return Err(ConfigError::DuplicateEndpoint {
                                    service: service.to_string(),
                                });
                            }
                            Ok(EndpointConfig {
                                address: *address,
                                identity: parse_id(key, identity)?,
                                other_ips: other_ips_of(key, address.ip(), other_ips)?,
                            })
                        })
                        .collect::<Result<_, _>>()?;
                    upstreams.insert(
                        service.clone(),
                        UpstreamConfig {
                            listen: *listen,
                            addresses: addresses.clone(),
                            endpoints,
                            connect_timeout,
                            idle_timeout,
                            protocol: *protocol,
                            request_timeout,
                            retry,
                            routes: crate::http::route::RouteTable::build(key, routes)?,
                        },
                    );
                }
                Resource::Inbound(i) => {
                    let snapshot::Inbound {
                        service,
                        target,
                        other_ips,
                        allow,
                        inbound_mode,
                        protocol,
                    } = i;
                    let allow = allow.as_ref().map(|ids| allow_list(key, ids)).transpose()?;
                    inbound.insert(
                        service.clone(),
                        InboundConfig {
                            target: *target,
                            other_ips: other_ips_of(key, target.ip(), other_ips)?,
                            allow,
                            inbound_mode: *inbound_mode,
                            protocol: *protocol,
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
            routes: RouteIndex::build(&upstreams),
            upstreams,
            inbound,
            snapshot: snap.clone(),
        })
    }
}

/// A dual-stack pod's other addresses: concrete, distinct, not `primary`.
fn other_ips_of(key: &str, primary: IpAddr, ips: &[IpAddr]) -> Result<Vec<IpAddr>, ConfigError> {
    let mut seen = BTreeSet::from([primary]);
    for ip in ips {
        if ip.is_unspecified() || ip.is_multicast() || !seen.insert(*ip) {
            return Err(ConfigError::OtherIp {
                key: key.to_owned(),
                ip: *ip,
            });
        }
    }
    Ok(ips.to_vec())
}

fn mesh_config(m: &snapshot::MeshSettings) -> Result<MeshConfig, ConfigError> {
    let snapshot::MeshSettings {
        trust_domain,
        key_exchange,
        cipher_suites,
        peer_idle_timeout_ms,
        connect_timeout_ms,
        inbound_mode,
        trust_bundle_pem,
        identity_algorithm,
        auth_policy,
    } = m;
    if let Some(pem) = trust_bundle_pem {
        phoenix_tls::handshake::parse_roots(pem).map_err(ConfigError::TrustBundle)?;
    }
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
            auth_policy: *auth_policy,
        },
        identity_algorithm: *identity_algorithm,
        peer_idle_timeout: Duration::from_millis(*peer_idle_timeout_ms),
        connect_timeout: Duration::from_millis(*connect_timeout_ms),
        inbound_mode: *inbound_mode,
        trust_bundle: trust_bundle_pem.clone(),
    })
}

fn parse_id(key: &str, id: &str) -> Result<SpiffeId, ConfigError> {
    id.parse().map_err(|source| ConfigError::Identity {
        key: key.to_owned(),
        source,
    })
}

/// Parses allow entries: SPIFFE IDs, or `spiffe://<td>/ns/<ns>/sa/*` for a
/// whole namespace (checked against the trust domain with the others).
fn allow_list(key: &str, entries: &[String]) -> Result<AllowList, ConfigError> {
    let mut list = AllowList::default();
    for entry in entries {
        match entry.strip_suffix("/sa/*") {
            Some(prefix) => {
                // Parse as a workload identity with a placeholder account,
                // so the trust domain and namespace get the same checks.
                let invalid = |source| ConfigError::Identity {
                    key: key.to_owned(),
                    source,
                };
                let id = parse_id(key, &format!("{prefix}/sa/x"))?;
                let ns = id
                    .namespace_and_service_account()
                    .map(|(ns, _)| ns.to_owned())
                    .ok_or(invalid(IdentityError::InvalidPath))?;
                let id = SpiffeId::workload(id.trust_domain(), &ns, "x").map_err(invalid)?;
                list.namespaces.insert(ns);
                list.ids.insert(id);
            }
            None => {
                list.ids.insert(parse_id(key, entry)?);
            }
        }
    }
    Ok(list)
}

fn check_trust_domain(
    td: &str,
    upstreams: &BTreeMap<ServiceName, UpstreamConfig>,
    inbound: &BTreeMap<ServiceName, InboundConfig>,
) -> Result<(), ConfigError> {
    for (service, u) in upstreams {
        if u.endpoints.iter().any(|e| e.identity.trust_domain() != td) {
            return Err(ConfigError::ForeignTrustDomain {
                key: format!("upstream/{service}"),
            });
        }
    }
    for (service, i) in inbound {
        if i.allow
            .iter()
            .flat_map(|a| &a.ids)
            .any(|id| id.trust_domain() != td)
        {
            return Err(ConfigError::ForeignTrustDomain {
                key: format!("inbound/{service}"),
            });
        }
    }
    Ok(())
}

fn check_listen_conflicts(
    upstreams: &BTreeMap<ServiceName, UpstreamConfig>,
) -> Result<(), ConfigError> {
    // TCP and UDP ports are apart: an upstream of each may listen on one
    // address (iperf3's TCP control and UDP data share a port).
    let mut by_addr: BTreeMap<(phoenix_api::service::Transport, SocketAddr), &str> =
        BTreeMap::new();
    for (service, u) in upstreams {
        let Some(listen) = u.listen.filter(|l| l.port() != 0) else {
            continue;
        };
        if let Some(first) = by_addr.insert((service.transport(), listen), service.as_str()) {
            return Err(ConfigError::ListenConflict {
                first: first.to_owned(),
                second: service.to_string(),
                address: listen,
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
            inbound_mode: Default::default(),
            trust_bundle_pem: None,
            identity_algorithm: Default::default(),
            auth_policy: Default::default(),
        })
    }

    #[test]
    fn a_trust_bundle_must_hold_ca_certificates() {
        let with = |pem: &str| {
            let Resource::Mesh(mut m) = mesh() else {
                unreachable!()
            };
            m.trust_bundle_pem = Some(pem.to_owned());
            ProxyConfig::try_from(&snap(vec![Resource::Mesh(m)]))
        };
        for bad in [
            "",
            "junk",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ] {
            let e = with(bad).unwrap_err();
            assert!(matches!(e, ConfigError::TrustBundle(_)), "{bad:?}: {e}");
            assert!(e.to_string().contains("trustBundlePem"));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root = params.self_signed(&key).unwrap().pem();
        let c = with(&root).unwrap();
        assert_eq!(c.mesh.trust_bundle.as_deref(), Some(root.as_str()));
    }

    fn snap(resources: Vec<Resource>) -> Snapshot {
        Snapshot {
            version: 3,
            resources: resources.into_iter().map(|r| (r.key(), r)).collect(),
        }
    }

    fn upstream(service: &str, listen: &str, identity: &str) -> Resource {
        Resource::Upstream(Upstream {
            service: service.parse().unwrap(),
            listen: Some(listen.parse().unwrap()),
            addresses: vec![],
            connect_timeout_ms: None,
            idle_timeout_ms: None,
            endpoints: vec![Endpoint {
                address: "127.0.0.1:4143".parse().unwrap(),
                identity: identity.into(),
                other_ips: vec![],
            }],
            protocol: Default::default(),
            request_timeout_ms: None,
            retry: None,
            routes: vec![],
        })
    }

    /// A UDP service is apart from TCP: it may listen where a TCP one
    /// does, and interception (TCP) never routes to its addresses or pods.
    #[test]
    fn udp_services_stay_out_of_tcp_routing_and_listeners() {
        let id = "spiffe://phoenix.local/ns/default/sa/dns";
        let with_address = |service: &str| {
            let Resource::Upstream(mut u) = upstream(service, "127.0.0.1:7000", id) else {
                unreachable!()
            };
            u.addresses = vec!["10.96.0.10:53".parse().unwrap()];
            u.endpoints[0].address = "10.0.0.9:4143".parse().unwrap();
            Resource::Upstream(u)
        };
        let c = ProxyConfig::try_from(&snap(vec![
            mesh(),
            with_address("dns:53/udp"),
            upstream("web", "127.0.0.1:7000", id),
        ]))
        .unwrap();
        assert!(c.routes.by_address.is_empty(), "{:?}", c.routes);
        let udp_pod: std::net::IpAddr = "10.0.0.9".parse().unwrap();
        assert!(!c.routes.by_pod_ip.contains_key(&udp_pod), "{:?}", c.routes);
        let c = ProxyConfig::try_from(&snap(vec![mesh(), with_address("dns:53")])).unwrap();
        assert_eq!(c.routes.by_address.len(), 1);
        assert!(matches!(
            ProxyConfig::try_from(&snap(vec![
                mesh(),
                upstream("a/udp", "127.0.0.1:7000", id),
                upstream("b/udp", "127.0.0.1:7000", id),
            ])),
            Err(ConfigError::ListenConflict { .. })
        ));
    }

    /// A retry policy a proxy could not keep bounded is refused whole
    /// (the last good config stays), naming what is wrong.
    #[test]
    fn retry_policies_are_checked() {
        let with = |policy: phoenix_api::snapshot::RetryPolicy| {
            let Resource::Upstream(mut u) = upstream(
                "db",
                "127.0.0.1:0",
                "spiffe://phoenix.local/ns/default/sa/db",
            ) else {
                unreachable!()
            };
            u.retry = Some(policy);
            u.request_timeout_ms = Some(1500);
            ProxyConfig::try_from(&snap(vec![mesh(), Resource::Upstream(u)]))
        };
        let good = phoenix_api::snapshot::RetryPolicy {
            status_codes: vec![503],
            grpc_status_codes: vec![14],
            max_retries: 2,
            non_idempotent: false,
            budget_percent: 20,
            budget_min_per_second: 10,
        };
        let config = with(good.clone()).unwrap();
        let db = &config.upstreams["db"];
        assert_eq!(db.request_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(
            db.retry.as_ref().unwrap().status_codes,
            vec![http::StatusCode::SERVICE_UNAVAILABLE]
        );
        let bad = [
            (
                phoenix_api::snapshot::RetryPolicy {
                    max_retries: 0,
                    ..good.clone()
                },
                RetryProblem::MaxRetries(0),
            ),
            (
                phoenix_api::snapshot::RetryPolicy {
                    max_retries: 1000,
                    ..good.clone()
                },
                RetryProblem::MaxRetries(1000),
            ),
            (
                phoenix_api::snapshot::RetryPolicy {
                    status_codes: vec![42],
                    ..good.clone()
                },
                RetryProblem::Status(42),
            ),
            (
                phoenix_api::snapshot::RetryPolicy {
                    grpc_status_codes: vec![99],
                    ..good.clone()
                },
                RetryProblem::GrpcStatus(99),
            ),
            (
                phoenix_api::snapshot::RetryPolicy {
                    budget_percent: 500,
                    ..good.clone()
                },
                RetryProblem::BudgetPercent(500),
            ),
        ];
        for (policy, want) in bad {
            match with(policy) {
                Err(ConfigError::Retry { key, problem }) => {
                    assert_eq!((key.as_str(), problem), ("upstream/db", want));
                }
                other => panic!("{want:?}: {other:?}"),
            }
        }
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
                service: "web".parse().unwrap(),
                target: "127.0.0.1:8080".parse().unwrap(),
                other_ips: vec![],
                allow: Some(vec!["spiffe://phoenix.local/ns/default/sa/client".into()]),
                inbound_mode: None,
                protocol: Default::default(),
            }),
        ]);
        let c = ProxyConfig::try_from(&s).unwrap();
        assert_eq!(c.version, 3);
        assert_eq!(c.upstreams["db"].endpoints.len(), 1);
        assert_eq!(c.inbound["web"].allow.as_ref().unwrap().ids.len(), 1);
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

    #[test]
    fn namespace_wildcards_admit_every_account_of_that_namespace_only() {
        let list = allow_list(
            "inbound/db",
            &[
                "spiffe://phoenix.local/ns/batch/sa/*".into(),
                "spiffe://phoenix.local/ns/shop/sa/web".into(),
            ],
        )
        .unwrap();
        let id = |s: &str| s.parse::<SpiffeId>().unwrap();
        assert!(list.admits(&id("spiffe://phoenix.local/ns/batch/sa/anything")));
        assert!(list.admits(&id("spiffe://phoenix.local/ns/shop/sa/web")));
        assert!(!list.admits(&id("spiffe://phoenix.local/ns/shop/sa/other")));
        assert!(!list.admits(&id("spiffe://phoenix.local/ns/batchx/sa/a")));
        assert!(
            allow_list("inbound/db", &["spiffe://phoenix.local/ns/BAD/sa/*".into()]).is_err(),
            "a wildcard's namespace gets the same checks as an identity's"
        );
        // A wildcard in another trust domain is refused with the snapshot.
        let snap = snap(vec![
            mesh(),
            Resource::Inbound(Inbound {
                service: "db".parse().unwrap(),
                target: "127.0.0.1:5432".parse().unwrap(),
                other_ips: vec![],
                allow: Some(vec!["spiffe://other.td/ns/batch/sa/*".into()]),
                inbound_mode: None,
                protocol: Default::default(),
            }),
        ]);
        assert!(matches!(
            ProxyConfig::try_from(&snap),
            Err(ConfigError::ForeignTrustDomain { .. })
        ));
    }

    #[test]
    fn other_pod_addresses_must_be_concrete_and_new() {
        let with = |ips: &[&str]| {
            let Resource::Upstream(mut u) = upstream(
                "db",
                "127.0.0.1:0",
                "spiffe://phoenix.local/ns/default/sa/db",
            ) else {
                unreachable!()
            };
            u.endpoints[0].other_ips = ips.iter().map(|i| i.parse().unwrap()).collect();
            ProxyConfig::try_from(&snap(vec![mesh(), Resource::Upstream(u)]))
        };
        let c = with(&["::1"]).unwrap();
        assert!(c.upstreams["db"].endpoints[0].is_pod_ip("::1".parse().unwrap()));
        for bad in [&["::"][..], &["127.0.0.1"], &["::1", "::1"], &["ff02::1"]] {
            let e = with(bad).unwrap_err();
            assert!(matches!(e, ConfigError::OtherIp { .. }), "{bad:?}: {e}");
            assert!(e.to_string().contains("otherIps"), "{e}");
        }
    }

    #[test]
    fn zero_service_timeouts_are_refused() {
        let mut u = upstream(
            "db",
            "127.0.0.1:0",
            "spiffe://phoenix.local/ns/default/sa/db",
        );
        if let Resource::Upstream(up) = &mut u {
            up.idle_timeout_ms = Some(0);
        }
        assert!(matches!(
            ProxyConfig::try_from(&snap(vec![mesh(), u])),
            Err(ConfigError::ZeroTimeout {
                field: "upstream idleTimeoutMs"
            })
        ));
    }
}
