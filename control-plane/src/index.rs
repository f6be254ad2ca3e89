//! The pure file-mode index: mesh model + where proxies are → what each
//! proxy gets (the mesh settings every proxy shares, and each workload's
//! own upstreams and inbound services; [`publish`](crate::publish) sends
//! them).
//!
//! No I/O and no clock: given the same inputs it builds the same snapshot,
//! so it is tested by building snapshots and looking at them.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use phoenix_api::ServiceName;
use phoenix_api::protocol::Protocol;
use phoenix_api::route::Route;
use phoenix_api::snapshot::{Endpoint, Inbound, MeshSettings, Resource, Snapshot, Upstream};

use crate::mesh::{Mesh, Workload};
use crate::roots::TrustRoots;

/// Where each subscribed proxy accepts QUIC, by workload name. A workload's
/// services have endpoints only while its proxy is subscribed (the file-mode
/// equivalent of a ready pod in an EndpointSlice).
pub type Registrations = BTreeMap<String, SocketAddr>;

/// The mesh settings every proxy shares.
pub fn mesh_settings(mesh: &Mesh, roots: Option<&TrustRoots>) -> Resource {
    Resource::Mesh(MeshSettings {
        trust_domain: mesh.trust_domain.clone(),
        key_exchange: mesh.key_exchange,
        cipher_suites: mesh.cipher_suites.clone(),
        peer_idle_timeout_ms: mesh.peer_idle_timeout.as_millis() as u64,
        connect_timeout_ms: mesh.connect_timeout.as_millis() as u64,
        inbound_mode: mesh.inbound_mode,
        trust_bundle_pem: roots.map(|r| r.bundle.clone()),
        identity_algorithm: roots.map(|r| r.signing).unwrap_or_default(),
        auth_policy: TrustRoots::effective(roots, mesh.auth_policy),
    })
}

/// What is particular to `workload`'s proxy, by key: the upstreams it calls
/// (through its own listeners) and the services it serves. `None` for an
/// unknown workload.
pub fn own_resources(
    mesh: &Mesh,
    registrations: &Registrations,
    workload: &str,
) -> Option<BTreeMap<String, Resource>> {
    let w = mesh.workloads.get(workload)?;
    let mut resources = BTreeMap::new();
    let mut put = |r: Resource| {
        resources.insert(r.key(), r);
    };
    for (service, upstream) in &w.upstreams {
        let routes = routes_for(mesh, w, service);
        put(Resource::Upstream(Upstream {
            service: service.clone(),
            listen: upstream.listen,
            addresses: upstream.addresses.clone(),
            connect_timeout_ms: upstream.connect_timeout.map(|d| d.as_millis() as u64),
            idle_timeout_ms: upstream.idle_timeout.map(|d| d.as_millis() as u64),
            protocol: upstream
                .protocol
                .unwrap_or_else(|| port_protocol(mesh, service)),
            request_timeout_ms: upstream.request_timeout.map(|d| d.as_millis() as u64),
            retry: upstream.retry.clone(),
            endpoints: endpoints(mesh, registrations, service),
            routes,
        }));
    }
    for (service, serve) in &w.serve {
        put(Resource::Inbound(Inbound {
            service: service.clone(),
            target: serve.target,
            other_ips: vec![],
            allow: serve
                .allow
                .as_ref()
                .map(|ids| ids.iter().map(ToString::to_string).collect()),
            inbound_mode: serve.inbound_mode,
            protocol: serve
                .protocol
                .unwrap_or_else(|| Protocol::default_for_port(serve.target.port())),
        }));
    }
    // A route's backends are services too: their endpoints come in an
    // upstream of their own (no listener: only routes reach it), unless
    // the app calls the service itself anyway.
    let backends: std::collections::BTreeSet<_> = resources
        .values()
        .filter_map(|r| match r {
            Resource::Upstream(u) => Some(u),
            _ => None,
        })
        .flat_map(|u| u.routes.iter())
        .flat_map(|r| r.rules.iter())
        .flat_map(|r| r.backends.iter())
        .map(|b| b.service.clone())
        .filter(|b| !w.upstreams.contains_key(b))
        .collect();
    for service in backends {
        resources.insert(
            format!("upstream/{service}"),
            Resource::Upstream(Upstream {
                service: service.clone(),
                listen: None,
                addresses: Vec::new(),
                connect_timeout_ms: None,
                idle_timeout_ms: None,
                protocol: port_protocol(mesh, &service),
                request_timeout_ms: None,
                retry: None,
                endpoints: endpoints(mesh, registrations, &service),
                routes: Vec::new(),
            }),
        );
    }
    Some(resources)
}

/// The registered proxies serving `service`, sorted.
fn endpoints(mesh: &Mesh, registrations: &Registrations, service: &ServiceName) -> Vec<Endpoint> {
    let mut endpoints: Vec<Endpoint> = mesh
        .workloads
        .values()
        .filter(|peer| peer.serve.contains_key(service))
        .filter_map(|peer| {
            registrations.get(&peer.name).map(|address| Endpoint {
                address: *address,
                identity: peer.identity.to_string(),
                other_ips: vec![],
            })
        })
        .collect();
    endpoints.sort();
    endpoints
}

/// What an undeclared upstream speaks: by the port its servers' apps
/// listen on.
fn port_protocol(mesh: &Mesh, service: &ServiceName) -> Protocol {
    served_port(mesh, service).map_or(Protocol::Detect, Protocol::default_for_port)
}

/// The routes attached to `service` that apply to `client`, oldest (listed
/// first) first, by GAMMA's rules: routes in the client's own namespace
/// (consumer routes) when it has any for the service, else the routes in
/// the namespace of the service's workloads (producer routes). A route in
/// any other namespace applies to nobody here.
fn routes_for(mesh: &Mesh, client: &Workload, service: &ServiceName) -> Vec<Route> {
    let producers: std::collections::BTreeSet<&str> = mesh
        .workloads
        .values()
        .filter(|w| w.serve.contains_key(service))
        .filter_map(|w| w.identity.namespace_and_service_account())
        .map(|(ns, _)| ns)
        .collect();
    let own = client
        .identity
        .namespace_and_service_account()
        .map_or("", |(ns, _)| ns);
    let attached = || mesh.routes.iter().filter(|r| r.parents.contains(service));
    let consumer = !producers.contains(own) && attached().any(|r| r.namespace == own);
    attached()
        .filter(|r| {
            if consumer {
                r.namespace == own
            } else {
                producers.contains(r.namespace.as_str())
            }
        })
        .map(|r| Route {
            name: r.name.clone(),
            namespace: r.namespace.clone(),
            kind: r.kind,
            rules: r.rules.clone(),
        })
        .collect()
}

/// The port apps serving `service` listen on, when they agree on one
/// (clients then treat it as that port: an upstream to a PostgreSQL on 5432
/// is opaque by default, whatever it is called).
fn served_port(mesh: &Mesh, service: &phoenix_api::ServiceName) -> Option<u16> {
    let mut ports = mesh
        .workloads
        .values()
        .filter_map(|w| w.serve.get(service))
        .map(|s| s.target.port());
    let first = ports.next()?;
    ports.all(|p| p == first).then_some(first)
}

/// The whole snapshot for `workload` at `version` (what the config dump
/// and tests look at); `None` for an unknown workload.
pub fn snapshot_for(
    mesh: &Mesh,
    registrations: &Registrations,
    roots: Option<&TrustRoots>,
    workload: &str,
    version: u64,
) -> Option<Snapshot> {
    let mut resources = own_resources(mesh, registrations, workload)?;
    let settings = mesh_settings(mesh, roots);
    resources.insert(settings.key(), settings);
    Some(Snapshot { version, resources })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn mesh(text: &str) -> Mesh {
        Mesh::parse(text, Path::new("mesh.yaml")).unwrap()
    }

    const MESH: &str = "\
trustDomain: td
workloads:
  - name: web
    upstreams: [{service: db, listen: 127.0.0.1:0}]
  - name: db-a
    serve: [{service: db, target: 127.0.0.1:5432, allow: [web]}]
  - name: db-b
    serve: [{service: db, target: 127.0.0.1:5433}]
";

    fn upstream<'a>(s: &'a Snapshot, service: &str) -> &'a Upstream {
        match &s.resources[&format!("upstream/{service}")] {
            Resource::Upstream(u) => u,
            other => panic!("not an upstream: {other:?}"),
        }
    }

    #[test]
    fn endpoints_follow_registrations() {
        let m = mesh(MESH);
        let mut regs = Registrations::new();
        let s = snapshot_for(&m, &regs, None, "web", 1).unwrap();
        assert!(
            upstream(&s, "db").endpoints.is_empty(),
            "no proxy subscribed yet"
        );

        regs.insert("db-a".into(), "127.0.0.1:4001".parse().unwrap());
        regs.insert("db-b".into(), "127.0.0.1:4002".parse().unwrap());
        let s = snapshot_for(&m, &regs, None, "web", 2).unwrap();
        let eps = &upstream(&s, "db").endpoints;
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0].identity, "spiffe://td/ns/default/sa/db-a");

        regs.remove("db-a");
        let s3 = snapshot_for(&m, &regs, None, "web", 3).unwrap();
        let delta = s.diff(&s3).unwrap();
        assert_eq!(delta.upserts.len(), 1, "only the db upstream changed");
        assert_eq!(upstream(&s3, "db").endpoints.len(), 1);
    }

    #[test]
    fn protocols_are_declared_or_follow_the_port() {
        let inbound =
            |s: &Snapshot, service: &str| match &s.resources[&format!("inbound/{service}")] {
                Resource::Inbound(i) => i.protocol,
                other => panic!("not an inbound: {other:?}"),
            };
        // db is served on 5432 and 5433: the servers disagree on a port,
        // so its callers detect; a server on 5432 is opaque.
        let m = mesh(MESH);
        let web = snapshot_for(&m, &Registrations::new(), None, "web", 1).unwrap();
        assert_eq!(upstream(&web, "db").protocol, Protocol::Detect);
        let a = snapshot_for(&m, &Registrations::new(), None, "db-a", 1).unwrap();
        assert_eq!(inbound(&a, "db"), Protocol::Opaque);
        let b = snapshot_for(&m, &Registrations::new(), None, "db-b", 1).unwrap();
        assert_eq!(inbound(&b, "db"), Protocol::Detect);
        // One port, 5432: its callers treat it as opaque too.
        let m = mesh(
            &MESH
                .replace("5433", "5432")
                .replace("127.0.0.1:5432}", "127.0.0.2:5432}"),
        );
        let web = snapshot_for(&m, &Registrations::new(), None, "web", 1).unwrap();
        assert_eq!(upstream(&web, "db").protocol, Protocol::Opaque);
        // Declared wins on both sides.
        let m = mesh(
            &MESH
                .replace(
                    "listen: 127.0.0.1:0}",
                    "listen: 127.0.0.1:0, protocol: http2}",
                )
                .replace("allow: [web]}", "allow: [web], protocol: http1}"),
        );
        let web = snapshot_for(&m, &Registrations::new(), None, "web", 1).unwrap();
        assert_eq!(upstream(&web, "db").protocol, Protocol::Http2);
        let a = snapshot_for(&m, &Registrations::new(), None, "db-a", 1).unwrap();
        assert_eq!(inbound(&a, "db"), Protocol::Http1);
    }

    #[test]
    fn proxies_get_only_their_own_resources() {
        let m = mesh(MESH);
        let s = snapshot_for(&m, &Registrations::new(), None, "db-a", 1).unwrap();
        let keys: Vec<_> = s.resources.keys().cloned().collect();
        assert_eq!(keys, vec!["inbound/db", "mesh"]);
        match &s.resources["inbound/db"] {
            Resource::Inbound(i) => assert_eq!(
                i.allow.as_deref(),
                Some(&["spiffe://td/ns/default/sa/web".to_owned()][..])
            ),
            other => panic!("{other:?}"),
        }
        assert!(snapshot_for(&m, &Registrations::new(), None, "nobody", 1).is_none());
    }

    /// A canary mesh: `web` served by web-v1 and web-v2's workloads in
    /// `shop`, called by `client` (namespace `shop`) and `other` (namespace
    /// `ops`); routes of both sides of GAMMA's producer/consumer split.
    const ROUTED: &str = "\
trustDomain: td
workloads:
  - name: client
    namespace: shop
    upstreams: [{service: web, listen: 127.0.0.1:0}]
  - name: other
    namespace: ops
    upstreams: [{service: web, listen: 127.0.0.1:0}]
  - name: web-v1
    namespace: shop
    serve: [{service: web, target: 127.0.0.1:8001}, {service: web-v1, target: 127.0.0.1:8001}]
  - name: web-v2
    namespace: shop
    serve: [{service: web-v2, target: 127.0.0.1:8002}]
routes:
  - kind: HTTPRoute
    name: canary
    namespace: shop
    spec:
      parentRefs: [{name: web}]
      rules:
        - backendRefs: [{name: web-v1, weight: 90}, {name: web-v2, weight: 10}]
";

    #[test]
    fn producer_routes_reach_every_client_with_their_backends() {
        let m = mesh(ROUTED);
        let mut regs = Registrations::new();
        regs.insert("web-v2".into(), "127.0.0.1:4002".parse().unwrap());
        for client in ["client", "other"] {
            let s = snapshot_for(&m, &regs, None, client, 1).unwrap();
            let web = upstream(&s, "web");
            assert_eq!(web.routes.len(), 1, "{client}");
            assert_eq!(web.routes[0].name, "canary");
            let backends: Vec<_> = web.routes[0].rules[0]
                .backends
                .iter()
                .map(|b| (b.service.to_string(), b.weight))
                .collect();
            assert_eq!(backends, [("web-v1".into(), 90), ("web-v2".into(), 10)]);
            // Each backend comes as an upstream of its own, without a
            // listener, with its endpoints.
            let v2 = upstream(&s, "web-v2");
            assert_eq!(v2.listen, None);
            assert_eq!(v2.endpoints.len(), 1);
            assert!(
                upstream(&s, "web-v1").endpoints.is_empty(),
                "not registered"
            );
        }
        // Servers get no routes and no backends they do not call.
        let s = snapshot_for(&m, &regs, None, "web-v1", 1).unwrap();
        assert!(!s.resources.contains_key("upstream/web-v2"));
    }

    #[test]
    fn a_consumer_route_replaces_producer_routes_for_its_namespace_only() {
        let text = format!(
            "{ROUTED}  - kind: HTTPRoute
    name: ops-pin
    namespace: ops
    spec:
      parentRefs: [{{name: web}}]
      rules:
        - backendRefs: [{{name: web-v1}}]
  - kind: HTTPRoute
    name: elsewhere
    namespace: nobody
    spec:
      parentRefs: [{{name: web}}]
"
        );
        let m = mesh(&text);
        let names = |client: &str| {
            let s = snapshot_for(&m, &Registrations::new(), None, client, 1).unwrap();
            upstream(&s, "web")
                .routes
                .iter()
                .map(|r| format!("{}/{}", r.namespace, r.name))
                .collect::<Vec<_>>()
        };
        assert_eq!(names("other"), ["ops/ops-pin"]);
        assert_eq!(names("client"), ["shop/canary"]);
    }

    #[test]
    fn removing_a_route_removes_it_and_its_backend_from_the_next_snapshot() {
        let with = mesh(ROUTED);
        let without = mesh(ROUTED.split("routes:").next().unwrap());
        let regs = Registrations::new();
        let a = snapshot_for(&with, &regs, None, "client", 1).unwrap();
        let b = snapshot_for(&without, &regs, None, "client", 2).unwrap();
        let delta = a.diff(&b).unwrap();
        assert!(delta.removals.contains(&"upstream/web-v2".to_owned()));
        assert!(delta.removals.contains(&"upstream/web-v1".to_owned()));
        assert!(upstream(&b, "web").routes.is_empty());
    }
}
