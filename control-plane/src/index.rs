//! The pure file-mode index: mesh model + where proxies are → what each
//! proxy gets (the mesh settings every proxy shares, and each workload's
//! own upstreams and inbound services; [`publish`](crate::publish) sends
//! them).
//!
//! No I/O and no clock: given the same inputs it builds the same snapshot,
//! so it is tested by building snapshots and looking at them.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use phoenix_api::protocol::Protocol;
use phoenix_api::snapshot::{Endpoint, Inbound, MeshSettings, Resource, Snapshot, Upstream};

use crate::mesh::Mesh;
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
        put(Resource::Upstream(Upstream {
            service: service.clone(),
            listen: upstream.listen,
            addresses: upstream.addresses.clone(),
            connect_timeout_ms: upstream.connect_timeout.map(|d| d.as_millis() as u64),
            idle_timeout_ms: upstream.idle_timeout.map(|d| d.as_millis() as u64),
            // Declared, else by the port its servers' apps listen on.
            protocol: upstream.protocol.unwrap_or_else(|| {
                served_port(mesh, service).map_or(Protocol::Detect, Protocol::default_for_port)
            }),
            request_timeout_ms: upstream.request_timeout.map(|d| d.as_millis() as u64),
            retry: upstream.retry.clone(),
            endpoints,
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
    Some(resources)
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
}
