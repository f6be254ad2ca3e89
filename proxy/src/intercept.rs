//! Transparent interception: TCP the pod's iptables rules (`phoenix-proxy
//! init`) redirected to the proxy, whatever address the app dialled.
//!
//! Outbound, the address the app dialled (`SO_ORIGINAL_DST`) picks the
//! route: a service's virtual address (ClusterIP:port) goes to one of its
//! endpoints; a meshed pod's address goes to that pod's proxy, which
//! connects to the same port; anything else leaves as plain TCP, counted as
//! `passthrough`. Inbound, the redirect listener only ever sees plain TCP
//! (meshed clients arrive over QUIC on UDP): `strict` refuses it,
//! `permissive` passes it to the app, and both are counted.
//!
//! The app's bytes are never read before the route is chosen, so a protocol
//! where the server speaks first (MySQL, SMTP) sees no detection delay.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use phoenix_api::ServiceName;
use phoenix_api::snapshot::InboundMode;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use crate::config::{EndpointConfig, ProxyConfig};
use crate::metrics::{Direction, PlaintextDecision};
use crate::outbound::{self, Route, reset};
use crate::state::Shared;

/// Buffer per direction of a plain-TCP relay (passthrough): small, since
/// these are the connections the mesh does not carry.
const PLAIN_BUFFER: usize = 16 * 1024;

/// The address a redirected connection was sent to; `None` when it was not
/// redirected (a client dialled the redirect port itself).
pub fn original_dst(tcp: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(tcp);
    let local = tcp.local_addr().ok()?;
    // On a dual-stack listener an IPv4 client arrives as ::ffff:a.b.c.d;
    // its original destination is then an IPv4 one.
    let local = SocketAddr::new(local.ip().to_canonical(), local.port());
    let dst = match local {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    }
    .ok()?
    .as_socket()?;
    let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
    // Not redirected: the "original" destination is the listener itself,
    // and connecting to it would loop.
    (dst != local).then_some(dst)
}

/// Where an intercepted outbound connection to `dst` goes.
#[derive(Debug, PartialEq, Eq)]
pub enum OutboundRoute<'a> {
    /// A service's virtual address: any of its endpoints.
    Service(&'a ServiceName),
    /// A meshed pod's address: that pod's proxy, which connects to `dst`.
    Pod {
        /// The upstream the pod serves (its timeouts apply).
        service: &'a ServiceName,
        /// The pod's proxy.
        endpoint: &'a EndpointConfig,
    },
    /// Outside the mesh: plain TCP.
    Passthrough,
}

/// The route to `dst` under `config` (pure: tested without sockets).
pub fn route(config: &ProxyConfig, dst: SocketAddr) -> OutboundRoute<'_> {
    let routes = &config.routes;
    if let Some((name, _)) = routes
        .by_address
        .get(&dst)
        .and_then(|name| config.upstreams.get_key_value(name))
    {
        return OutboundRoute::Service(name);
    }
    if let Some((name, endpoint)) =
        routes
            .by_pod_ip
            .get(&dst.ip().to_canonical())
            .and_then(|(name, i)| {
                let (name, upstream) = config.upstreams.get_key_value(name)?;
                Some((name, upstream.endpoints.get(*i)?))
            })
    {
        return OutboundRoute::Pod {
            service: name,
            endpoint,
        };
    }
    OutboundRoute::Passthrough
}

/// Accepts redirected outbound connections until the task is dropped.
pub async fn serve_outbound(shared: Arc<Shared>, listener: TcpListener) {
    accept_loop(shared, listener, Direction::outbound, Arc::default()).await;
}

/// Accepts redirected inbound (plain TCP) connections until the task is
/// dropped; plain TCP of the kubelet's probes (`probes`) passes even in
/// strict mode.
pub async fn serve_inbound(
    shared: Arc<Shared>,
    listener: TcpListener,
    probes: Arc<ProbeExemption>,
) {
    accept_loop(shared, listener, Direction::inbound, probes).await;
}

/// The inbound mode for plain TCP to `dst`: that of the service the app
/// serves there when it overrides the mesh's, else the mesh's.
pub fn inbound_mode(config: &ProxyConfig, dst: SocketAddr) -> InboundMode {
    // Several services may name the same port: the strictest one wins. A
    // service that lists its clients (an allow-list) is strict unless it
    // says otherwise: a plain-TCP client has no identity to be on the list.
    let modes: Vec<InboundMode> = config
        .inbound
        .values()
        .filter(|i| i.reached_at(dst).is_some())
        .map(|i| match (i.inbound_mode, &i.allow) {
            (Some(mode), _) => mode,
            (None, Some(_)) => InboundMode::Strict,
            (None, None) => config.mesh.inbound_mode,
        })
        .collect();
    if modes.contains(&InboundMode::Strict) {
        InboundMode::Strict
    } else if modes.is_empty() {
        config.mesh.inbound_mode
    } else {
        InboundMode::Permissive
    }
}

/// The kubelet's plain-TCP probes, passed even in strict mode: from the
/// node's addresses, to the ports the app's probes name, nothing else. The
/// node is not a workload with an identity; a port the app serves but does
/// not probe stays closed to it (and to anything else on the node).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeExemption {
    /// The node's addresses (the pod's `status.hostIPs`).
    pub sources: Vec<IpAddr>,
    /// The app's probe ports.
    pub ports: Vec<u16>,
}

impl ProbeExemption {
    /// Whether plain TCP from `client` to `dst` is a probe.
    pub fn covers(&self, client: IpAddr, dst: SocketAddr) -> bool {
        self.ports.contains(&dst.port()) && self.sources.contains(&client.to_canonical())
    }
}

/// What the inbound redirect listener does with plain TCP from `client` to
/// `dst` (pure: tested without sockets).
pub fn inbound_decision(
    mode: InboundMode,
    client: IpAddr,
    dst: SocketAddr,
    probes: &ProbeExemption,
) -> PlaintextDecision {
    match mode {
        InboundMode::Permissive => PlaintextDecision::permitted,
        InboundMode::Strict if probes.covers(client, dst) => PlaintextDecision::probe,
        InboundMode::Strict => PlaintextDecision::refused,
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    direction: Direction,
    probes: Arc<ProbeExemption>,
) {
    let what = match direction {
        Direction::outbound => "outbound redirect",
        Direction::inbound => "inbound redirect",
    };
    loop {
        let (tcp, client) = phoenix_runtime::accept::accept(&listener, what).await;
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let probes = probes.clone();
        let id = shared.connection_id();
        let span = tracing::info_span!("intercepted", connection = id, ?direction, %client);
        tokio::spawn(
            async move {
                let _active = shared.track();
                match direction {
                    Direction::outbound => outbound_connection(&shared, tcp, client, id).await,
                    Direction::inbound => inbound_connection(&shared, tcp, client, &probes).await,
                }
            }
            .instrument(span),
        );
    }
}

async fn outbound_connection(shared: &Arc<Shared>, tcp: TcpStream, client: SocketAddr, id: u64) {
    let Some(dst) = original_dst(&tcp) else {
        tracing::info!(%client, "connection to the outbound redirect port was not redirected; resetting");
        return reset(tcp);
    };
    let Some(config) = shared.config.load_full() else {
        return reset(tcp);
    };
    match route(&config, dst) {
        OutboundRoute::Service(name) => {
            let upstream = &config.upstreams[name];
            let route = Route {
                name,
                upstream,
                endpoints: &upstream.endpoints,
                original_dst: None,
            };
            outbound::carry(shared, &config, route, tcp, id).await;
        }
        OutboundRoute::Pod { service, endpoint } => {
            let route = Route {
                name: service,
                upstream: &config.upstreams[service],
                endpoints: std::slice::from_ref(endpoint),
                original_dst: Some(dst),
            };
            outbound::carry(shared, &config, route, tcp, id).await;
        }
        OutboundRoute::Passthrough => {
            shared
                .metrics
                .plaintext(Direction::outbound, PlaintextDecision::passthrough);
            tracing::debug!(%client, %dst, "not a mesh destination; passing through as plain TCP");
            plain_relay(tcp, dst, config.mesh.connect_timeout).await;
        }
    }
}

async fn inbound_connection(
    shared: &Arc<Shared>,
    tcp: TcpStream,
    client: SocketAddr,
    probes: &ProbeExemption,
) {
    let Some(dst) = original_dst(&tcp) else {
        tracing::info!(%client, "connection to the inbound redirect port was not redirected; resetting");
        return reset(tcp);
    };
    let Some(config) = shared.config.load_full() else {
        return reset(tcp);
    };
    let mode = inbound_mode(&config, dst);
    let decision = inbound_decision(mode, client.ip(), dst, probes);
    shared.metrics.plaintext(Direction::inbound, decision);
    if decision == PlaintextDecision::refused {
        tracing::debug!(%client, %dst, "plain TCP from outside the mesh refused (strict)");
        return reset(tcp);
    }
    tracing::debug!(%client, %dst, mode = mode.as_str(), ?decision, "plain TCP from outside the mesh passed");
    plain_relay(tcp, dst, config.mesh.connect_timeout).await;
}

/// Connects to `dst` (the proxy's own traffic is not redirected) and copies
/// both ways; a refused connect resets the client, as the app would see.
async fn plain_relay(mut tcp: TcpStream, dst: SocketAddr, connect_timeout: Duration) {
    let mut upstream = match tokio::time::timeout(connect_timeout, TcpStream::connect(dst)).await {
        Ok(Ok(u)) => u,
        Ok(Err(error)) => {
            tracing::debug!(%dst, %error, "plain TCP connect refused");
            return reset(tcp);
        }
        Err(_) => {
            tracing::debug!(%dst, "plain TCP connect timed out");
            return reset(tcp);
        }
    };
    let _ = upstream.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional_with_sizes(
        &mut tcp,
        &mut upstream,
        PLAIN_BUFFER,
        PLAIN_BUFFER,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use phoenix_api::snapshot::{Endpoint, MeshSettings, Resource, Snapshot, Upstream};
    use phoenix_api::tls_policy::{CipherSuite, KeyExchange};

    fn config() -> ProxyConfig {
        let resources = [
            Resource::Mesh(MeshSettings {
                trust_domain: "td".into(),
                key_exchange: KeyExchange::PqOnly,
                cipher_suites: CipherSuite::DEFAULT.to_vec(),
                peer_idle_timeout_ms: 1000,
                connect_timeout_ms: 1000,
                inbound_mode: InboundMode::Strict,
                trust_bundle_pem: None,
                identity_algorithm: Default::default(),
                auth_policy: Default::default(),
            }),
            Resource::Upstream(Upstream {
                service: "db.shop:5432".parse().unwrap(),
                listen: None,
                addresses: vec![
                    "10.96.0.10:5432".parse().unwrap(),
                    "[fd00::10]:5432".parse().unwrap(),
                ],
                endpoints: vec![Endpoint {
                    address: "10.0.0.5:4143".parse().unwrap(),
                    identity: "spiffe://td/ns/shop/sa/db".into(),
                    other_ips: vec!["fd00::5".parse().unwrap()],
                }],
                connect_timeout_ms: None,
                idle_timeout_ms: None,
                protocol: Default::default(),
                request_timeout_ms: None,
                retry: None,
                routes: Vec::new(),
            }),
            Resource::Inbound(phoenix_api::snapshot::Inbound {
                service: "legacy.shop:80".parse().unwrap(),
                target: "0.0.0.0:8080".parse().unwrap(),
                other_ips: vec![],
                allow: None,
                inbound_mode: Some(InboundMode::Permissive),
                protocol: Default::default(),
            }),
            // Two services on one port, one strict: strict wins, whatever
            // the names' order.
            Resource::Inbound(phoenix_api::snapshot::Inbound {
                service: "a-open.shop:81".parse().unwrap(),
                target: "0.0.0.0:8081".parse().unwrap(),
                other_ips: vec![],
                allow: None,
                inbound_mode: Some(InboundMode::Permissive),
                protocol: Default::default(),
            }),
            Resource::Inbound(phoenix_api::snapshot::Inbound {
                service: "b-closed.shop:81".parse().unwrap(),
                target: "0.0.0.0:8081".parse().unwrap(),
                other_ips: vec![],
                allow: None,
                inbound_mode: Some(InboundMode::Strict),
                protocol: Default::default(),
            }),
        ];
        let snap = Snapshot {
            version: 1,
            resources: resources.into_iter().map(|r| (r.key(), r)).collect(),
        };
        ProxyConfig::try_from(&snap).unwrap()
    }

    #[test]
    fn an_allow_listed_service_is_strict_in_a_permissive_mesh() {
        let mut c = config();
        c.mesh.inbound_mode = InboundMode::Permissive;
        c.inbound.insert(
            "db.shop:5432".parse().unwrap(),
            crate::config::InboundConfig {
                target: "0.0.0.0:5432".parse().unwrap(),
                other_ips: vec![],
                allow: Some(crate::config::AllowList::default()),
                inbound_mode: None,
                protocol: Default::default(),
            },
        );
        assert_eq!(
            inbound_mode(&c, "10.0.0.5:5432".parse().unwrap()),
            InboundMode::Strict
        );
        // Explicitly permissive stays so; unlisted ports follow the mesh.
        assert_eq!(
            inbound_mode(&c, "10.0.0.5:8080".parse().unwrap()),
            InboundMode::Permissive
        );
        assert_eq!(
            inbound_mode(&c, "10.0.0.5:9999".parse().unwrap()),
            InboundMode::Permissive
        );
    }

    #[test]
    fn a_service_may_override_the_mesh_inbound_mode() {
        let c = config();
        // The mesh is strict; the service served on 8080 is permissive.
        assert_eq!(
            inbound_mode(&c, "10.0.0.5:8080".parse().unwrap()),
            InboundMode::Permissive
        );
        assert_eq!(
            inbound_mode(&c, "10.0.0.5:9090".parse().unwrap()),
            InboundMode::Strict
        );
        assert_eq!(
            inbound_mode(&c, "10.0.0.5:8081".parse().unwrap()),
            InboundMode::Strict
        );
    }

    #[test]
    fn strict_mode_refuses_outsiders_but_not_the_kubelets_probes() {
        let kubelet: IpAddr = "10.0.0.1".parse().unwrap();
        let outsider: IpAddr = "10.0.0.9".parse().unwrap();
        let probes = ProbeExemption {
            sources: vec![kubelet, "fd00::1".parse().unwrap()],
            ports: vec![8080],
        };
        let probe_port: SocketAddr = "10.0.0.5:8080".parse().unwrap();
        let d = |mode, ip, dst| inbound_decision(mode, ip, dst, &probes);
        assert_eq!(
            d(InboundMode::Strict, outsider, probe_port),
            PlaintextDecision::refused
        );
        assert_eq!(
            d(InboundMode::Strict, kubelet, probe_port),
            PlaintextDecision::probe
        );
        // The node reaches the probe ports only, not the rest of the app.
        assert_eq!(
            d(
                InboundMode::Strict,
                kubelet,
                "10.0.0.5:5432".parse().unwrap()
            ),
            PlaintextDecision::refused
        );
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d;
        // a dual-stack node probes from either of its addresses.
        for ip in ["::ffff:10.0.0.1", "fd00::1"] {
            assert_eq!(
                d(InboundMode::Strict, ip.parse().unwrap(), probe_port),
                PlaintextDecision::probe,
                "{ip}"
            );
        }
        assert_eq!(
            d(
                InboundMode::Permissive,
                outsider,
                "10.0.0.5:5432".parse().unwrap()
            ),
            PlaintextDecision::permitted
        );
    }

    #[test]
    fn the_dialled_address_picks_service_pod_or_passthrough() {
        let c = config();
        assert_eq!(
            route(&c, "10.96.0.10:5432".parse().unwrap()),
            OutboundRoute::Service(&"db.shop:5432".parse().unwrap())
        );
        // Another port of the ClusterIP is not the service's.
        assert_eq!(
            route(&c, "10.96.0.10:22".parse().unwrap()),
            OutboundRoute::Passthrough
        );
        // The pod itself, on its app port: its proxy.
        match route(&c, "10.0.0.5:15432".parse().unwrap()) {
            OutboundRoute::Pod { service, endpoint } => {
                assert_eq!(service, "db.shop:5432");
                assert_eq!(endpoint.address, "10.0.0.5:4143".parse().unwrap());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            route(&c, "93.184.216.34:443".parse().unwrap()),
            OutboundRoute::Passthrough
        );
        // IPv6 alike: a dual-stack Service's other address.
        assert_eq!(
            route(&c, "[fd00::10]:5432".parse().unwrap()),
            OutboundRoute::Service(&"db.shop:5432".parse().unwrap())
        );
        assert_eq!(
            route(&c, "[2001:db8::1]:443".parse().unwrap()),
            OutboundRoute::Passthrough
        );
        // A dual-stack pod's other address is that pod, not the outside.
        match route(&c, "[fd00::5]:15432".parse().unwrap()) {
            OutboundRoute::Pod { endpoint, .. } => {
                assert_eq!(endpoint.address, "10.0.0.5:4143".parse().unwrap());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_pod_address_is_reached_under_its_services_policies_or_as_an_unlisted_port() {
        use crate::inbound::{InboundRoute, UNLISTED, route as inbound_route};
        let mut c = config();
        let web: phoenix_api::SpiffeId = "spiffe://td/ns/shop/sa/web".parse().unwrap();
        let ops: phoenix_api::SpiffeId = "spiffe://td/ns/shop/sa/ops".parse().unwrap();
        let batch: phoenix_api::SpiffeId = "spiffe://td/ns/batch/sa/cron".parse().unwrap();
        let only = |id: &phoenix_api::SpiffeId| {
            Some(crate::config::AllowList {
                ids: [id.clone()].into(),
                namespaces: Default::default(),
            })
        };
        // Port 5432 behind two Services: one for ops only, one for web only.
        for (name, allow) in [
            ("db-admin.shop:5432", only(&ops)),
            ("db.shop:5432", only(&web)),
        ] {
            c.inbound.insert(
                name.parse().unwrap(),
                crate::config::InboundConfig {
                    target: "10.0.0.5:5432".parse().unwrap(),
                    other_ips: vec![],
                    allow,
                    inbound_mode: None,
                    protocol: Default::default(),
                },
            );
        }
        // A UDP service on port 53, reached by name only.
        c.inbound.insert(
            "dns.shop:53/udp".parse().unwrap(),
            crate::config::InboundConfig {
                target: "10.0.0.5:53".parse().unwrap(),
                other_ips: vec![],
                allow: only(&ops),
                inbound_mode: None,
                protocol: Default::default(),
            },
        );
        let pod: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap()];
        let r = |service, dst: Option<&str>, client| {
            inbound_route(&c, service, dst.map(|d| d.parse().unwrap()), client, &pod)
        };
        let at_53 = "10.0.0.5:53".parse().unwrap();
        assert_eq!(
            r(Some("dns.shop:53/udp"), None, &ops),
            InboundRoute::Connect {
                service: "dns.shop:53/udp",
                target: at_53
            }
        );
        // An intercepted stream is TCP: port 53 is then a port no TCP
        // service lists, never the UDP service (nor its allow-list).
        assert_eq!(
            r(None, Some("10.0.0.5:53"), &web),
            InboundRoute::Connect {
                service: UNLISTED,
                target: at_53
            }
        );
        let at_5432 = "10.0.0.5:5432".parse().unwrap();
        // By name, each service's own list.
        assert_eq!(
            r(Some("db.shop:5432"), None, &web),
            InboundRoute::Connect {
                service: "db.shop:5432",
                target: at_5432
            }
        );
        assert_eq!(
            r(Some("db-admin.shop:5432"), None, &web),
            InboundRoute::Denied {
                service: "db-admin.shop:5432"
            }
        );
        // By pod address, a service of the port that admits the client.
        assert_eq!(
            r(None, Some("10.0.0.5:5432"), &web),
            InboundRoute::Connect {
                service: "db.shop:5432",
                target: at_5432
            }
        );
        assert_eq!(
            r(None, Some("10.0.0.5:5432"), &ops),
            InboundRoute::Connect {
                service: "db-admin.shop:5432",
                target: at_5432
            }
        );
        assert_eq!(
            r(None, Some("10.0.0.5:5432"), &batch),
            InboundRoute::Denied {
                service: "db-admin.shop:5432"
            }
        );
        // A port no service lists (a metrics port), at the pod's own
        // address: any mesh identity, as plain TCP could without a mesh.
        assert_eq!(
            r(None, Some("10.0.0.5:9100"), &batch),
            InboundRoute::Connect {
                service: UNLISTED,
                target: "10.0.0.5:9100".parse().unwrap()
            }
        );
        let stranger: phoenix_api::SpiffeId = "spiffe://other/ns/shop/sa/web".parse().unwrap();
        assert_eq!(
            r(None, Some("10.0.0.5:9100"), &stranger),
            InboundRoute::Denied { service: UNLISTED }
        );
        // Never loopback, another host, or an unknown service name.
        for dst in ["127.0.0.1:9100", "10.0.0.6:9100"] {
            assert_eq!(r(None, Some(dst), &web), InboundRoute::NoRoute, "{dst}");
        }
        assert_eq!(r(Some("nope"), None, &ops), InboundRoute::NoRoute);
        assert_eq!(
            r(Some("nope"), Some("10.0.0.5:9100"), &ops),
            InboundRoute::NoRoute
        );
        // Another trust domain is never "the mesh".
        assert!(matches!(
            inbound_route(&c, Some("legacy.shop:80"), None, &stranger, &pod),
            InboundRoute::Denied { .. }
        ));
    }

    #[test]
    fn a_dual_stack_pod_applies_its_service_mode_on_every_address() {
        let mut c = config();
        c.mesh.inbound_mode = InboundMode::Permissive;
        c.inbound.insert(
            "db.shop:5432".parse().unwrap(),
            crate::config::InboundConfig {
                target: "10.0.0.5:15432".parse().unwrap(),
                other_ips: vec!["fd00::5".parse().unwrap()],
                allow: None,
                inbound_mode: Some(InboundMode::Strict),
                protocol: Default::default(),
            },
        );
        for dst in ["10.0.0.5:15432", "[fd00::5]:15432"] {
            assert_eq!(
                inbound_mode(&c, dst.parse().unwrap()),
                InboundMode::Strict,
                "{dst}"
            );
        }
        let db = &c.inbound["db.shop:5432"];
        // Dialled on IPv6, the app is reached on IPv6 (it may listen there alone).
        assert_eq!(
            db.reached_at("[fd00::5]:15432".parse().unwrap()),
            Some("[fd00::5]:15432".parse().unwrap())
        );
        assert_eq!(
            db.reached_at("10.0.0.5:15432".parse().unwrap()),
            Some("10.0.0.5:15432".parse().unwrap())
        );
        assert_eq!(db.reached_at("[fd00::5]:22".parse().unwrap()), None);
        assert_eq!(db.reached_at("[fd00::6]:15432".parse().unwrap()), None);
    }
}
