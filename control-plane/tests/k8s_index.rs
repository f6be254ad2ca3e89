//! The Kubernetes index, driven by real Kubernetes objects (as the API
//! server would send them) and checked by what each proxy receives. No
//! cluster: the index is pure.
#![cfg(feature = "kubernetes")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use phoenix_api::snapshot::{Resource, Snapshot, Upstream};
use phoenix_control_plane::crd::conditions::Reason;
use phoenix_control_plane::crd::{MeshConfig, TrafficPolicy};
use phoenix_control_plane::k8s::index::{Index, Subscriber, Update};
use phoenix_control_plane::k8s::policy::PolicyRecord;
use phoenix_control_plane::k8s::records::{self, ObjectKey};
use serde_json::json;

const TD: &str = "cluster.local";

fn key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey::new(ns, name)
}

fn service(index: &mut Index, ns: &str, name: &str, ip: &str, ports: serde_json::Value) {
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": ports},
    }))
    .unwrap();
    index.apply_service(ObjectKey::of(&svc).unwrap(), records::service(&svc));
}

/// An EndpointSlice of `svc`; each endpoint is `(pod, ip, ready, terminating)`.
fn slice(
    index: &mut Index,
    ns: &str,
    name: &str,
    svc: &str,
    ports: serde_json::Value,
    endpoints: &[(&str, &str, bool, bool)],
) {
    let eps: Vec<_> = endpoints
        .iter()
        .map(|(pod, ip, ready, terminating)| {
            json!({
                "addresses": [ip],
                "conditions": {"ready": ready, "serving": ready | terminating, "terminating": terminating},
                "targetRef": {"kind": "Pod", "namespace": ns, "name": pod},
            })
        })
        .collect();
    let s: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": eps,
    }))
    .unwrap();
    index.apply_slice(ObjectKey::of(&s).unwrap(), records::slice(&s));
}

fn pod(index: &mut Index, ns: &str, name: &str, sa: &str, ip: &str, meshed: bool) {
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name,
                     "labels": {"phoenix.dev/meshed": if meshed { "true" } else { "false" }}},
        "spec": {"serviceAccountName": sa, "containers": []},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }))
    .unwrap();
    index.apply_pod(ObjectKey::of(&p).unwrap(), records::pod(&p));
}

fn policy(index: &mut Index, ns: &str, name: &str, created: i64, spec: serde_json::Value) {
    let tp: TrafficPolicy = serde_json::from_value(json!({
        "apiVersion": "phoenix.dev/v1alpha1", "kind": "TrafficPolicy",
        "metadata": {"namespace": ns, "name": name},
        "spec": spec,
    }))
    .unwrap();
    let k = ObjectKey::of(&tp).unwrap();
    index.apply_policy(k.clone(), Some(PolicyRecord::new(&k, &tp.spec, created)));
}

fn mesh_config(index: &mut Index, name: &str, spec: serde_json::Value) {
    let mc: MeshConfig = serde_json::from_value(json!({
        "apiVersion": "phoenix.dev/v1alpha1", "kind": "MeshConfig",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap();
    index.apply_mesh_config(name, Some(&mc.spec), Some(1));
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

/// A proxy that applies every update it receives, as the real one does,
/// and checks each delta against a fresh full snapshot.
struct Proxy {
    sub: Subscriber,
    fresh: Subscriber,
    held: Option<Snapshot>,
    deltas: Vec<phoenix_api::snapshot::Delta>,
}

impl Proxy {
    fn new(ns: &str, sa: &str, at: Option<IpAddr>) -> Self {
        Self {
            sub: Subscriber::new(ns, sa, at),
            fresh: Subscriber::new(ns, sa, at),
            held: None,
            deltas: vec![],
        }
    }

    /// Receives what the index sends now; returns the delta, if one came.
    fn sync(&mut self, index: &Index) -> Option<phoenix_api::snapshot::Delta> {
        // The encoded frame the server sends says the same as the typed update.
        let mut twin = self.sub.clone();
        let frame = index.update_frame(&mut twin);
        let update = index.update(&mut self.sub);
        match (&frame, &update) {
            (None, None) => {}
            (Some((bytes, delta)), Some(typed)) => {
                let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
                assert_eq!(len, bytes.len() - 4);
                let decoded: phoenix_api::control::Response =
                    phoenix_api::control::decode_body(&bytes[4..]).unwrap();
                let expected = match typed.clone() {
                    Update::Snapshot(s) => phoenix_api::control::Response::Snapshot(s),
                    Update::Delta(d) => phoenix_api::control::Response::Delta(d),
                };
                assert_eq!(decoded, expected);
                assert_eq!(*delta, matches!(typed, Update::Delta(_)));
            }
            _ => panic!("frame and update disagree: {frame:?} vs {update:?}"),
        }
        let delta = match update {
            Some(Update::Snapshot(s)) => {
                self.held = Some(s);
                None
            }
            Some(Update::Delta(d)) => {
                self.held = Some(self.held.as_ref().unwrap().apply(&d).unwrap());
                self.deltas.push(d.clone());
                Some(d)
            }
            None => None,
        };
        let fresh = index.snapshot(&mut self.fresh);
        assert_eq!(
            self.held.as_ref().unwrap().resources,
            fresh.resources,
            "deltas must lead to the same view as a fresh snapshot"
        );
        delta
    }

    fn view(&self) -> &Snapshot {
        self.held.as_ref().unwrap()
    }

    fn upstream(&self, name: &str) -> Option<&Upstream> {
        match self.view().resources.get(&format!("upstream/{name}"))? {
            Resource::Upstream(u) => Some(u),
            _ => None,
        }
    }

    fn inbound(&self, name: &str) -> Option<&phoenix_api::snapshot::Inbound> {
        match self.view().resources.get(&format!("inbound/{name}"))? {
            Resource::Inbound(i) => Some(i),
            _ => None,
        }
    }
}

/// Whether the serving proxy `server` lets the workload `(ns, sa)` call
/// `service` (the proxy's matching: exact SPIFFE ID or `.../sa/*`).
fn admits(server: &Proxy, service: &str, ns: &str, sa: &str) -> bool {
    let inbound = server.inbound(service).expect("the server serves it");
    inbound.allow.as_ref().is_none_or(|list| {
        list.iter().any(|entry| {
            *entry == format!("spiffe://{TD}/ns/{ns}/sa/{sa}")
                || *entry == format!("spiffe://{TD}/ns/{ns}/sa/*")
        })
    })
}

/// `shop`: web (client) and db (two pods, named target port).
fn shop() -> Index {
    let mut index = Index::new(TD, 1000);
    service(
        &mut index,
        "shop",
        "db",
        "10.96.0.10",
        json!([{"name": "pg", "port": 5432, "targetPort": "postgres"}]),
    );
    slice(
        &mut index,
        "shop",
        "db-abc",
        "db",
        json!([{"name": "pg", "port": 15432, "protocol": "TCP"}]),
        &[
            ("db-0", "10.0.0.5", true, false),
            ("db-1", "10.0.0.6", false, false),
        ],
    );
    pod(&mut index, "shop", "db-0", "db", "10.0.0.5", true);
    pod(&mut index, "shop", "db-1", "db", "10.0.0.6", true);
    pod(&mut index, "shop", "web-0", "web", "10.0.0.9", true);
    index.commit().unwrap();
    index
}

#[test]
fn a_client_gets_ready_meshed_endpoints_and_a_server_its_named_target_port() {
    let mut index = shop();
    let mut web = Proxy::new("shop", "web", ip("10.0.0.9"));
    let mut db0 = Proxy::new("shop", "db", ip("10.0.0.5"));
    web.sync(&index);
    db0.sync(&index);

    let db = web
        .upstream("db.shop:5432")
        .expect("web gets the db service");
    assert_eq!(db.addresses, vec!["10.96.0.10:5432".parse().unwrap()]);
    assert_eq!(db.listen, None, "reached by interception, not a listener");
    assert_eq!(db.endpoints.len(), 1, "db-1 is not ready");
    assert_eq!(db.endpoints[0].address, "10.0.0.5:4143".parse().unwrap());
    assert_eq!(
        db.endpoints[0].identity,
        "spiffe://cluster.local/ns/shop/sa/db"
    );
    assert!(
        web.inbound("db.shop:5432").is_none(),
        "web does not serve db"
    );
    assert!(web.view().resources.contains_key("mesh"));

    let inbound = db0.inbound("db.shop:5432").expect("db-0 serves db");
    assert_eq!(
        inbound.target,
        "10.0.0.5:15432".parse().unwrap(),
        "the named target port as the slice resolved it"
    );
    assert_eq!(inbound.allow, None, "allow-mesh by default");

    // db-1 becomes ready: one upsert of the one resource, to web.
    slice(
        &mut index,
        "shop",
        "db-abc",
        "db",
        json!([{"name": "pg", "port": 15432}]),
        &[
            ("db-0", "10.0.0.5", true, false),
            ("db-1", "10.0.0.6", true, false),
        ],
    );
    index.commit().unwrap();
    let d = web.sync(&index).expect("web hears of db-1");
    assert_eq!(
        d.upserts.keys().collect::<Vec<_>>(),
        vec!["upstream/db.shop:5432"]
    );
    assert!(d.removals.is_empty());
    assert_eq!(web.upstream("db.shop:5432").unwrap().endpoints.len(), 2);
    // db-0 also sees the upstream (any meshed workload may call db), but its
    // own inbound entry did not change.
    let d = db0.sync(&index).unwrap();
    assert!(
        d.upserts.keys().all(|k| k.starts_with("upstream/")),
        "{d:?}"
    );
}

#[test]
fn terminating_endpoints_serve_only_when_nothing_is_ready() {
    let mut index = shop();
    slice(
        &mut index,
        "shop",
        "db-abc",
        "db",
        json!([{"name": "pg", "port": 15432}]),
        &[
            ("db-0", "10.0.0.5", false, true),
            ("db-1", "10.0.0.6", false, false),
        ],
    );
    // db-0 was the one ready endpoint; terminating, it still serves: the
    // endpoint set is the same, so no proxy hears of it.
    assert_eq!(index.commit(), None);
    let mut web = Proxy::new("shop", "web", ip("10.0.0.9"));
    web.sync(&index);
    let eps = &web.upstream("db.shop:5432").unwrap().endpoints;
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].address, "10.0.0.5:4143".parse().unwrap());

    slice(
        &mut index,
        "shop",
        "db-abc",
        "db",
        json!([{"name": "pg", "port": 15432}]),
        &[
            ("db-0", "10.0.0.5", false, true),
            ("db-1", "10.0.0.6", true, false),
        ],
    );
    index.commit().unwrap();
    web.sync(&index).unwrap();
    let eps = &web.upstream("db.shop:5432").unwrap().endpoints;
    assert_eq!(eps.len(), 1);
    assert_eq!(
        eps[0].address,
        "10.0.0.6:4143".parse().unwrap(),
        "the ready one only"
    );
}

#[test]
fn deleting_a_service_removes_it_from_clients_and_servers() {
    let mut index = shop();
    let mut web = Proxy::new("shop", "web", ip("10.0.0.9"));
    let mut db0 = Proxy::new("shop", "db", ip("10.0.0.5"));
    web.sync(&index);
    db0.sync(&index);
    index.apply_service(key("shop", "db"), None);
    index.commit().unwrap();
    let d = web.sync(&index).unwrap();
    assert_eq!(d.removals, vec!["upstream/db.shop:5432".to_owned()]);
    let d = db0.sync(&index).unwrap();
    assert!(
        d.removals.contains(&"inbound/db.shop:5432".to_owned()),
        "{d:?}"
    );
    assert_eq!(
        web.view().resources.len(),
        1,
        "only the mesh settings are left"
    );

    // The slice going away afterwards changes no proxy's view.
    index.apply_slice(key("shop", "db-abc"), None);
    assert_eq!(index.commit(), None);
    assert!(web.sync(&index).is_none());
}

#[test]
fn services_in_several_namespaces_and_ports_are_distinct() {
    let mut index = shop();
    service(
        &mut index,
        "billing",
        "db",
        "10.96.1.10",
        json!([{"name": "pg", "port": 5432}, {"name": "metrics", "port": 9090}, {"name": "dns", "port": 53, "protocol": "UDP"}]),
    );
    slice(
        &mut index,
        "billing",
        "db-x",
        "db",
        json!([{"name": "pg", "port": 5432}, {"name": "metrics", "port": 9091}, {"name": "dns", "port": 53, "protocol": "UDP"}]),
        &[("db-0", "10.0.1.5", true, false)],
    );
    pod(&mut index, "billing", "db-0", "ledger", "10.0.1.5", true);
    index.commit().unwrap();
    let mut web = Proxy::new("shop", "web", ip("10.0.0.9"));
    web.sync(&index);
    let shop_db = web.upstream("db.shop:5432").unwrap();
    let billing_db = web.upstream("db.billing:5432").unwrap();
    assert_ne!(shop_db.endpoints, billing_db.endpoints);
    assert_eq!(
        billing_db.endpoints[0].identity,
        "spiffe://cluster.local/ns/billing/sa/ledger"
    );
    assert!(web.upstream("db.billing:9090").is_some(), "every TCP port");
    assert!(
        web.upstream("db.billing:53").is_none(),
        "UDP ports are not tunnelled yet"
    );

    let mut ledger = Proxy::new("billing", "ledger", ip("10.0.1.5"));
    ledger.sync(&index);
    assert_eq!(
        ledger.inbound("db.billing:9090").unwrap().target,
        "10.0.1.5:9091".parse().unwrap()
    );
}

#[test]
fn unmeshed_endpoints_are_not_sent_and_a_fully_unmeshed_service_is_left_alone() {
    let mut index = shop();
    service(
        &mut index,
        "shop",
        "legacy",
        "10.96.0.20",
        json!([{"port": 80}]),
    );
    slice(
        &mut index,
        "shop",
        "legacy-1",
        "legacy",
        json!([{"port": 8080}]),
        &[("legacy-0", "10.0.0.30", true, false)],
    );
    pod(&mut index, "shop", "legacy-0", "legacy", "10.0.0.30", false);
    index.commit();
    let mut web = Proxy::new("shop", "web", ip("10.0.0.9"));
    web.sync(&index);
    assert!(web.upstream("legacy.shop:80").is_none());

    // The pod gets meshed (injected and restarted at the same IP).
    pod(&mut index, "shop", "legacy-0", "legacy", "10.0.0.30", true);
    index.commit().unwrap();
    let d = web.sync(&index).unwrap();
    assert_eq!(
        d.upserts.keys().collect::<Vec<_>>(),
        vec!["upstream/legacy.shop:80"]
    );
}

#[test]
fn a_traffic_policy_limits_who_may_call_and_every_client_still_knows_the_service() {
    let mut index = shop();
    pod(&mut index, "batch", "job-0", "cron", "10.0.2.1", true);
    index.commit();
    let mut web = Proxy::new("shop", "web", ip("10.0.0.9"));
    let mut cron = Proxy::new("batch", "cron", ip("10.0.2.1"));
    let mut db0 = Proxy::new("shop", "db", ip("10.0.0.5"));
    for p in [&mut web, &mut cron, &mut db0] {
        p.sync(&index);
    }
    assert!(cron.upstream("db.shop:5432").is_some(), "allow-mesh");

    policy(
        &mut index,
        "shop",
        "db",
        100,
        json!({"targetRef": {"kind": "Service", "name": "db"}, "allow": [{"serviceAccount": "web"}]}),
    );
    index.commit().unwrap();
    assert!(
        cron.sync(&index).is_none(),
        "a denied client keeps the Service: its connections go over mTLS and are refused there, never out in plain TCP"
    );
    assert!(cron.upstream("db.shop:5432").is_some());
    assert!(web.upstream("db.shop:5432").is_some());
    db0.sync(&index).unwrap();
    assert!(admits(&db0, "db.shop:5432", "shop", "web"));
    assert!(!admits(&db0, "db.shop:5432", "batch", "cron"));
    assert_eq!(
        db0.inbound("db.shop:5432").unwrap().allow,
        Some(vec!["spiffe://cluster.local/ns/shop/sa/web".to_owned()])
    );
    let v = index.policy_verdicts(&key("shop", "db")).unwrap();
    assert!(v.iter().all(|c| c.ok), "{v:?}");
    let db = web.upstream("db.shop:5432").unwrap();
    assert_eq!((db.connect_timeout_ms, db.idle_timeout_ms), (None, None));

    assert_eq!(db0.inbound("db.shop:5432").unwrap().inbound_mode, None);
    // Its inbound mode reaches the serving pods' proxies.
    policy(
        &mut index,
        "shop",
        "db",
        100,
        json!({"targetRef": {"kind": "Service", "name": "db"}, "allow": [{"serviceAccount": "web"}], "inboundMode": "strict"}),
    );
    index.commit().unwrap();
    db0.sync(&index).unwrap();
    assert_eq!(
        db0.inbound("db.shop:5432").unwrap().inbound_mode,
        Some(phoenix_api::snapshot::InboundMode::Strict)
    );

    // Its timeouts reach the clients with the endpoints.
    policy(
        &mut index,
        "shop",
        "db",
        100,
        json!({"targetRef": {"kind": "Service", "name": "db"}, "allow": [{"serviceAccount": "web"}], "connectTimeout": "2s", "idleTimeout": "30m"}),
    );
    index.commit().unwrap();
    web.sync(&index).unwrap();
    let db = web.upstream("db.shop:5432").unwrap();
    assert_eq!(
        (db.connect_timeout_ms, db.idle_timeout_ms),
        (Some(2000), Some(1_800_000))
    );

    // A newer policy on the same Service conflicts and changes nothing.
    policy(
        &mut index,
        "shop",
        "db-too",
        200,
        json!({"targetRef": {"kind": "Service", "name": "db"}, "allow": [{"namespace": "batch"}]}),
    );
    assert_eq!(index.commit(), None);
    let v = index.policy_verdicts(&key("shop", "db-too")).unwrap();
    assert_eq!(v[0].reason, Reason::Conflicted);
    assert!(
        v[0].message.contains("TrafficPolicy db is older"),
        "{}",
        v[0].message
    );

    // Deleting the first lets the second take over: the batch namespace.
    index.apply_policy(key("shop", "db"), None);
    index.commit().unwrap();
    db0.sync(&index).unwrap();
    assert!(admits(&db0, "db.shop:5432", "batch", "cron"));
    assert!(!admits(&db0, "db.shop:5432", "shop", "web"));
    assert_eq!(
        db0.inbound("db.shop:5432").unwrap().allow,
        Some(vec!["spiffe://cluster.local/ns/batch/sa/*".to_owned()])
    );

    // A policy for a Service that does not exist says so.
    policy(
        &mut index,
        "shop",
        "cache",
        300,
        json!({"targetRef": {"kind": "Service", "name": "cache"}}),
    );
    index.commit();
    let v = index.policy_verdicts(&key("shop", "cache")).unwrap();
    assert_eq!(v[1].reason, Reason::ServiceNotFound);
    assert!(v[0].ok, "valid, waiting for its Service");
}

#[test]
fn default_policies_from_mesh_config_and_namespace_annotation() {
    let mut index = shop();
    pod(&mut index, "batch", "job-0", "cron", "10.0.2.1", true);
    mesh_config(
        &mut index,
        "default",
        json!({"defaultPolicy": "allow-namespace"}),
    );
    index.commit().unwrap();
    let mut cron = Proxy::new("batch", "cron", ip("10.0.2.1"));
    let mut db0 = Proxy::new("shop", "db", ip("10.0.0.5"));
    cron.sync(&index);
    db0.sync(&index);
    assert!(
        cron.upstream("db.shop:5432").is_some(),
        "known, so not plain"
    );
    assert!(!admits(&db0, "db.shop:5432", "batch", "cron"));
    assert!(admits(&db0, "db.shop:5432", "shop", "web"));

    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": "shop", "annotations": {"phoenix.dev/default-policy": "deny"}}
    }))
    .unwrap();
    index.apply_namespace("shop", Some(records::namespace(&ns)));
    index.commit().unwrap();
    db0.sync(&index).unwrap();
    assert!(
        !admits(&db0, "db.shop:5432", "shop", "web"),
        "the namespace denies by default"
    );

    let bad: Namespace = serde_json::from_value(json!({
        "metadata": {"name": "x", "annotations": {"phoenix.dev/default-policy": "allow-all"}}
    }))
    .unwrap();
    assert_eq!(
        records::namespace(&bad).invalid_default_policy.as_deref(),
        Some("allow-all")
    );
}

#[test]
fn an_invalid_mesh_config_is_refused_and_the_last_good_one_stays() {
    let mut index = shop();
    mesh_config(
        &mut index,
        "default",
        json!({"keyExchange": "pq-preferred", "connectTimeout": "2s"}),
    );
    index.commit().unwrap();
    let mut web = Proxy::new("shop", "web", ip("10.0.0.9"));
    web.sync(&index);
    let Resource::Mesh(m) = &web.view().resources["mesh"] else {
        panic!()
    };
    assert_eq!(m.connect_timeout_ms, 2000);

    mesh_config(
        &mut index,
        "default",
        json!({"trustDomain": "evil.example"}),
    );
    assert_eq!(index.commit(), None, "nothing changes");
    let v = index.mesh_config_verdicts("default").unwrap();
    assert!(!v[0].ok);
    assert!(
        v[0].message.contains("previous settings stay"),
        "{}",
        v[0].message
    );
    assert_eq!(index.mesh().settings.connect_timeout_ms, 2000);

    mesh_config(&mut index, "staging", json!({}));
    assert_eq!(
        index.mesh_config_verdicts("staging").unwrap()[0].reason,
        Reason::NotDefault
    );
}

#[test]
fn an_unrelated_change_costs_a_proxy_one_key_and_leaves_its_inbound_alone() {
    let mut index = shop();
    for i in 0..50 {
        let name = format!("svc{i}");
        service(
            &mut index,
            "other",
            &name,
            &format!("10.96.2.{i}"),
            json!([{"port": 80}]),
        );
        slice(
            &mut index,
            "other",
            &name,
            &name,
            json!([{"port": 8080}]),
            &[(&format!("p{i}"), &format!("10.0.3.{i}"), true, false)],
        );
        pod(
            &mut index,
            "other",
            &format!("p{i}"),
            "app",
            &format!("10.0.3.{i}"),
            true,
        );
    }
    index.commit().unwrap();
    let mut db0 = Proxy::new("shop", "db", ip("10.0.0.5"));
    db0.sync(&index);
    assert_eq!(
        db0.view().resources.len(),
        1 + 51 + 1,
        "mesh, 51 upstreams, its inbound"
    );

    slice(
        &mut index,
        "other",
        "svc7",
        "svc7",
        json!([{"port": 8080}]),
        &[("p7", "10.0.3.7", false, false)],
    );
    index.commit().unwrap();
    let d = db0.sync(&index).unwrap();
    assert!(d.upserts.is_empty());
    assert_eq!(
        d.removals,
        vec!["upstream/svc7.other:80".to_owned()],
        "only what changed"
    );
}

#[test]
fn an_address_alone_does_not_claim_a_pod() {
    let index = shop();
    // A proxy of another identity reporting db-0's IP gets no inbound of db-0.
    let mut intruder = Proxy::new("shop", "web", ip("10.0.0.5"));
    intruder.sync(&index);
    assert!(intruder.inbound("db.shop:5432").is_none());
    assert!(intruder.sub.pod().is_none());
    // A proxy outside the cluster (no pod) still gets what its identity may call.
    let mut outside = Proxy::new("shop", "web", None);
    outside.sync(&index);
    assert!(outside.upstream("db.shop:5432").is_some());
}

#[test]
fn a_dual_stack_pod_is_one_endpoint_on_its_primary_family_and_known_by_every_address() {
    let mut index = Index::new(TD, 1);
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"namespace": "shop", "name": "db"},
        "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"],
                 "ports": [{"name": "pg", "port": 5432}]},
    }))
    .unwrap();
    index.apply_service(key("shop", "db"), records::service(&svc));
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"namespace": "shop", "name": "db-0", "labels": {"phoenix.dev/meshed": "true"}},
        "spec": {"serviceAccountName": "db", "containers": []},
        "status": {"phase": "Running", "podIP": "10.0.0.5",
                   "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}]},
    }))
    .unwrap();
    index.apply_pod(key("shop", "db-0"), records::pod(&p));
    // One slice per family, the IPv6 one applied first.
    for (name, family, addr) in [("db-v6", "IPv6", "fd00::5"), ("db-v4", "IPv4", "10.0.0.5")] {
        let s: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": name,
                         "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": family,
            "ports": [{"name": "pg", "port": 15432}],
            "endpoints": [{"addresses": [addr], "conditions": {"ready": true},
                           "targetRef": {"kind": "Pod", "namespace": "shop", "name": "db-0"}}],
        }))
        .unwrap();
        index.apply_slice(ObjectKey::of(&s).unwrap(), records::slice(&s));
    }
    index.commit().unwrap();
    let mut db0 = Proxy::new("shop", "db", ip("10.0.0.5"));
    db0.sync(&index);
    let up = db0.upstream("db.shop:5432").unwrap();
    assert_eq!(
        up.endpoints
            .iter()
            .map(|e| e.address.to_string())
            .collect::<Vec<_>>(),
        vec!["10.0.0.5:4143"],
        "one endpoint, on the pod's primary address"
    );
    let fd00_5: IpAddr = "fd00::5".parse().unwrap();
    assert_eq!(
        up.endpoints[0].other_ips,
        vec![fd00_5],
        "a connection to its IPv6 address is to this pod too"
    );
    let inbound = db0.inbound("db.shop:5432").unwrap();
    assert_eq!(inbound.target.to_string(), "10.0.0.5:15432");
    assert_eq!(inbound.other_ips, vec![fd00_5]);
    // Without the primary family's slice, the other family still serves.
    index.apply_slice(key("shop", "db-v4"), None);
    index.commit().unwrap();
    db0.sync(&index);
    let up = db0.upstream("db.shop:5432").unwrap();
    assert_eq!(up.endpoints.len(), 1);
    assert_eq!(up.endpoints[0].address.to_string(), "[fd00::5]:4143");
    assert_eq!(up.endpoints[0].other_ips, vec![ip("10.0.0.5").unwrap()]);
    assert_eq!(
        db0.inbound("db.shop:5432").unwrap().target.to_string(),
        "[fd00::5]:15432"
    );

    // Every served version reads the frame it is sent, as its own types
    // read it: versions before 4 get no `otherIps` (they would refuse the
    // field), and keep the addresses themselves.
    let mut subs = Vec::new();
    for version in phoenix_api::compat::MIN_WIRE_VERSION..=phoenix_api::compat::WIRE_VERSION {
        let mut sub = Subscriber::new("shop", "db", ip("10.0.0.5"));
        let (frame, false) = index.update_frame_for(&mut sub, version).unwrap() else {
            panic!("a first frame is a snapshot");
        };
        let read = phoenix_api::compat::frozen::read(version, &frame[4..])
            .unwrap_or_else(|e| panic!("version {version}: {e}"));
        let json = read.to_string();
        assert_eq!(
            json.contains("otherIps"),
            version >= 4,
            "version {version}: {json}"
        );
        assert!(json.contains("fd00::5"), "the address itself stays: {json}");
        subs.push((version, sub));
    }
    // A change reaches version 1 as a full snapshot, the others as a delta,
    // each readable by its version.
    index.apply_service(key("shop", "db"), None);
    index.commit().unwrap();
    for (version, mut sub) in subs {
        let (frame, delta) = index.update_frame_for(&mut sub, version).unwrap();
        assert_eq!(delta, version >= 2, "version {version}");
        phoenix_api::compat::frozen::read(version, &frame[4..])
            .unwrap_or_else(|e| panic!("version {version}: {e}"));
    }
}

#[test]
fn a_proxy_behind_compacted_history_gets_a_full_snapshot() {
    let mut index = shop();
    let mut web = Proxy::new("shop", "web", ip("10.0.0.9"));
    web.sync(&index);
    index.apply_service(key("shop", "db"), None);
    index.commit().unwrap();
    let v = index.version();
    index.compact(v);
    assert!(matches!(
        index.update(&mut web.sub.clone()),
        Some(Update::Snapshot(_))
    ));
    assert!(web.sync(&index).is_none(), "a full snapshot, not a delta");
    assert!(web.upstream("db.shop:5432").is_none());
}

/// Many random changes; after each, every proxy's view built from deltas
/// equals a fresh snapshot (checked inside `sync`).
#[test]
fn deltas_always_add_up_to_the_fresh_view() {
    let mut index = Index::new(TD, 1);
    let mut proxies: Vec<Proxy> = (0..6)
        .map(|i| {
            Proxy::new(
                ["a", "b"][i % 2],
                ["x", "y", "z"][i % 3],
                ip(&format!("10.1.0.{i}")),
            )
        })
        .collect();
    for (i, p) in proxies.iter().enumerate() {
        let _ = p;
        pod(
            &mut index,
            ["a", "b"][i % 2],
            &format!("pod{i}"),
            ["x", "y", "z"][i % 3],
            &format!("10.1.0.{i}"),
            true,
        );
    }
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for step in 0..400 {
        let ns = ["a", "b"][rand(2) as usize];
        let svc = format!("s{}", rand(5));
        match rand(6) {
            0 => service(
                &mut index,
                ns,
                &svc,
                &format!("10.96.0.{}", rand(200)),
                json!([{"name": "p", "port": 80 + rand(2)}]),
            ),
            1 => index.apply_service(key(ns, &svc), None),
            2 | 3 => {
                let eps: Vec<(String, String, bool, bool)> = (0..rand(4))
                    .map(|_| {
                        let i = rand(6);
                        (
                            format!("pod{i}"),
                            format!("10.1.0.{i}"),
                            rand(3) > 0,
                            rand(2) == 0,
                        )
                    })
                    .collect();
                let eps: Vec<(&str, &str, bool, bool)> = eps
                    .iter()
                    .map(|(a, b, c, d)| (a.as_str(), b.as_str(), *c, *d))
                    .collect();
                // Endpoints name pods of either namespace's slice; only
                // those in the slice's namespace resolve.
                slice(
                    &mut index,
                    ns,
                    &svc,
                    &svc,
                    json!([{"name": "p", "port": 8000 + rand(3)}]),
                    &eps,
                );
            }
            4 => {
                let allow = match rand(3) {
                    0 => json!([{"serviceAccount": "x"}]),
                    1 => json!([{"namespace": "b"}]),
                    _ => json!([]),
                };
                policy(
                    &mut index,
                    ns,
                    &svc,
                    step,
                    json!({"targetRef": {"kind": "Service", "name": svc}, "allow": allow}),
                );
            }
            _ => index.apply_policy(key(ns, &svc), None),
        }
        index.commit();
        for p in proxies.iter_mut() {
            if rand(3) > 0 {
                p.sync(&index);
            }
        }
        if step % 100 == 99 {
            // Some proxies lag; compaction must not break them.
            let oldest = proxies.iter().map(|p| p.sub.seen()).min().unwrap();
            index.compact(oldest);
        }
    }
    let deltas: usize = proxies.iter().map(|p| p.deltas.len()).sum();
    assert!(deltas > 100, "the run must exercise deltas, got {deltas}");
}

/// Every upstream and inbound name the index can emit goes into a tunnel
/// header and comes out as the same service: the names of the longest
/// Service and namespace Kubernetes allows, one-letter ones, digits and
/// hyphens, the lowest and highest ports, two Services of one name in two
/// namespaces, and two ports of one Service. (The index once named upstreams
/// in a form the header refused, and every ClusterIP connection was reset.)
#[test]
fn every_name_the_index_emits_encodes_in_a_tunnel_header() {
    use phoenix_api::header::{ConnectRequest, decode_request};
    let long_name = format!("s{}", "-9".repeat(31)); // 63: a DNS-1035 label's limit
    let long_ns = format!("n{}", "a".repeat(62)); // 63: a namespace's limit
    let cases: Vec<(String, String, Vec<u16>)> = vec![
        (long_name.clone(), long_ns.clone(), vec![65535]),
        ("a".into(), "b".into(), vec![1]),
        ("web-2".into(), "shop".into(), vec![80, 443]),
        ("web-2".into(), "team-0".into(), vec![80]),
    ];
    let mut index = Index::new(TD, 1000);
    let mut names = std::collections::BTreeSet::new();
    for (n, (name, ns, ports)) in cases.iter().enumerate() {
        let pod_ip = format!("10.0.1.{}", n + 1);
        let pod_name = format!("{name}-0");
        let port_list = |target: bool| -> serde_json::Value {
            ports
                .iter()
                .enumerate()
                .map(|(i, port)| {
                    let target_port = 8080 + i as u16;
                    if target {
                        json!({"name": format!("p{port}"), "port": target_port, "protocol": "TCP"})
                    } else {
                        json!({"name": format!("p{port}"), "port": port, "targetPort": target_port})
                    }
                })
                .collect()
        };
        service(
            &mut index,
            ns,
            name,
            &format!("10.96.1.{}", n + 1),
            port_list(false),
        );
        slice(
            &mut index,
            ns,
            &format!("{name}-1"),
            name,
            port_list(true),
            &[(&pod_name, &pod_ip, true, false)],
        );
        pod(&mut index, ns, &pod_name, "app", &pod_ip, true);
        names.extend(ports.iter().map(|port| format!("{name}.{ns}:{port}")));
    }
    index.commit().unwrap();
    // Every proxy gets every meshed Service.
    let mut client = Proxy::new("shop", "client", ip("10.0.2.1"));
    client.sync(&index);
    let mut emitted = std::collections::BTreeSet::new();
    let mut servers = Vec::new();
    for (n, (name, ns, ports)) in cases.iter().enumerate() {
        let mut server = Proxy::new(ns, "app", ip(&format!("10.0.1.{}", n + 1)));
        server.sync(&index);
        for port in ports {
            let inbound = server
                .inbound(&format!("{name}.{ns}:{port}"))
                .expect("the pod serves its Service port");
            servers.push(inbound.service.clone());
        }
    }
    for resource in client.view().resources.values() {
        if let Resource::Upstream(u) = resource {
            emitted.insert(u.service.clone());
        }
    }
    assert_eq!(
        emitted
            .iter()
            .map(|s| s.to_string())
            .collect::<std::collections::BTreeSet<_>>(),
        names,
        "one upstream per Service port, named <name>.<namespace>:<port>"
    );
    for service in emitted.iter().chain(&servers) {
        let mut bytes = Vec::new();
        ConnectRequest {
            service: Some(service.clone()),
            original_dst: None,
            connection_id: 1,
        }
        .encode(&mut bytes)
        .unwrap();
        let (decoded, used) = decode_request(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(decoded.service.as_ref(), Some(service), "{service}");
    }
}

#[test]
fn a_service_ports_protocol_comes_from_its_policy_then_app_protocol_then_its_number() {
    use phoenix_api::protocol::Protocol;
    // db on 5432: opaque by default, on both sides.
    let mut index = shop();
    let mut web = Proxy::new("shop", "web", ip("10.0.0.9"));
    let mut db0 = Proxy::new("shop", "db", ip("10.0.0.5"));
    web.sync(&index);
    db0.sync(&index);
    assert_eq!(
        web.upstream("db.shop:5432").unwrap().protocol,
        Protocol::Opaque
    );
    assert_eq!(
        db0.inbound("db.shop:5432").unwrap().protocol,
        Protocol::Opaque
    );
    // Declared by appProtocol: gRPC is HTTP/2.
    service(
        &mut index,
        "shop",
        "db",
        "10.96.0.10",
        json!([{"name": "pg", "port": 5432, "targetPort": "postgres", "appProtocol": "grpc"}]),
    );
    index.commit().unwrap();
    web.sync(&index);
    db0.sync(&index);
    assert_eq!(
        web.upstream("db.shop:5432").unwrap().protocol,
        Protocol::Http2
    );
    assert_eq!(
        db0.inbound("db.shop:5432").unwrap().protocol,
        Protocol::Http2
    );
    // A TrafficPolicy overrides the appProtocol.
    policy(
        &mut index,
        "shop",
        "db",
        1,
        json!({"targetRef": {"kind": "Service", "name": "db"}, "protocol": "http1"}),
    );
    index.commit().unwrap();
    web.sync(&index);
    assert_eq!(
        web.upstream("db.shop:5432").unwrap().protocol,
        Protocol::Http1
    );
    // Undeclared on an ordinary port: detected.
    service(
        &mut index,
        "shop",
        "web",
        "10.96.0.11",
        json!([{"name": "http", "port": 8080, "targetPort": 8080}]),
    );
    slice(
        &mut index,
        "shop",
        "web-abc",
        "web",
        json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
        &[("web-0", "10.0.0.9", true, false)],
    );
    index.commit().unwrap();
    let mut db0 = Proxy::new("shop", "db", ip("10.0.0.5"));
    db0.sync(&index);
    assert_eq!(
        db0.upstream("web.shop:8080").unwrap().protocol,
        Protocol::Detect
    );
}

mod routes {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use phoenix_api::route::RouteKind;
    use phoenix_control_plane::k8s::routes::{GATEWAY_GROUP, GrantRecord, RouteRecord};

    fn route(index: &mut Index, ns: &str, name: &str, created: i64, spec: serde_json::Value) {
        let meta = ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            creation_timestamp: Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
            )),
            generation: Some(1),
            ..ObjectMeta::default()
        };
        let record = RouteRecord::new(RouteKind::Http, ns, &meta, &spec);
        index.apply_route(RouteKind::Http, key(ns, name), Some(record));
    }

    fn parent(name: &str, ns: Option<&str>) -> serde_json::Value {
        let mut r = json!({"group": "", "kind": "Service", "name": name, "port": 80});
        if let Some(ns) = ns {
            r["namespace"] = json!(ns);
        }
        r
    }

    fn to(name: &str, ns: Option<&str>, weight: u32) -> serde_json::Value {
        let mut r = parent(name, ns);
        r["weight"] = json!(weight);
        r
    }

    /// `web` and `web-v2` (one pod each) and a client in shop; a client and
    /// `api` in team; `web-v3` in shop has no endpoint.
    fn mesh() -> Index {
        let mut index = Index::new(TD, 0);
        for (ns, svc, vip, ip) in [
            ("shop", "web", "10.96.0.1", "10.0.0.1"),
            ("shop", "web-v2", "10.96.0.2", "10.0.0.2"),
            ("team", "api", "10.96.1.1", "10.0.1.1"),
        ] {
            service(
                &mut index,
                ns,
                svc,
                vip,
                json!([{"name": "http", "port": 80, "targetPort": 8080, "appProtocol": "http"}]),
            );
            slice(
                &mut index,
                ns,
                &format!("{svc}-1"),
                svc,
                json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
                &[(&format!("{svc}-0"), ip, true, false)],
            );
            pod(&mut index, ns, &format!("{svc}-0"), svc, ip, true);
        }
        service(
            &mut index,
            "shop",
            "web-v3",
            "10.96.0.3",
            json!([{"name": "http", "port": 80, "targetPort": 8080}]),
        );
        pod(&mut index, "shop", "curl-0", "curl", "10.0.0.9", true);
        pod(&mut index, "team", "curl-0", "curl", "10.0.1.9", true);
        index.commit().unwrap();
        index
    }

    fn names(u: &Upstream) -> Vec<String> {
        u.routes
            .iter()
            .map(|r| format!("{}/{}", r.namespace, r.name))
            .collect()
    }

    fn backends(u: &Upstream) -> Vec<(String, u32)> {
        u.routes[0].rules[0]
            .backends
            .iter()
            .map(|b| (b.service.to_string(), b.weight))
            .collect()
    }

    #[test]
    fn producer_routes_reach_every_client_and_consumer_routes_replace_them_for_their_namespace() {
        let mut index = mesh();
        let mut shop = Proxy::new("shop", "curl", ip("10.0.0.9"));
        let mut team = Proxy::new("team", "curl", ip("10.0.1.9"));
        shop.sync(&index);
        team.sync(&index);
        assert!(shop.upstream("web.shop:80").unwrap().routes.is_empty());
        assert!(
            shop.upstream("web-v3.shop:80").is_none(),
            "no endpoint, no route: not sent"
        );

        // A producer canary (and an older producer route first by age).
        route(
            &mut index,
            "shop",
            "canary",
            200,
            json!({
                "parentRefs": [parent("web", None)],
                "rules": [{"backendRefs": [to("web", None, 90), to("web-v2", None, 10)]}],
            }),
        );
        route(
            &mut index,
            "shop",
            "older",
            100,
            json!({
                "parentRefs": [parent("web", None)],
                "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/v3"}}],
                           "backendRefs": [to("web-v3", None, 1)]}],
            }),
        );
        index.commit().unwrap();
        shop.sync(&index);
        team.sync(&index);
        for p in [&shop, &team] {
            let web = p.upstream("web.shop:80").unwrap();
            assert_eq!(names(web), ["shop/older", "shop/canary"], "oldest first");
            assert_eq!(backends(web), [("web-v3.shop:80".to_owned(), 1)]);
            // A backend with no endpoint is sent (its share gets 503), but
            // not by its address: its own traffic is left as it was.
            let v3 = p.upstream("web-v3.shop:80").unwrap();
            assert!(v3.endpoints.is_empty() && v3.addresses.is_empty(), "{v3:?}");
        }

        // A consumer route in team: team's clients follow it, and only it.
        route(
            &mut index,
            "team",
            "mine",
            300,
            json!({
                "parentRefs": [parent("web", Some("shop"))],
                "rules": [{"backendRefs": [to("web-v2", Some("shop"), 1)]}],
            }),
        );
        index.commit().unwrap();
        shop.sync(&index);
        let delta = team.sync(&index).expect("team's view changed");
        assert!(
            delta.upserts.contains_key("upstream/web.shop:80"),
            "{:?}",
            delta.upserts.keys()
        );
        assert_eq!(
            names(shop.upstream("web.shop:80").unwrap()),
            ["shop/older", "shop/canary"]
        );
        let web = team.upstream("web.shop:80").unwrap();
        assert_eq!(names(web), ["team/mine"]);
        // No ReferenceGrant in shop lets team's routes send there.
        assert_eq!(
            backends(web),
            [("unresolved.phoenix.invalid".to_owned(), 1)]
        );

        index.apply_grant(
            key("shop", "from-team"),
            Some(GrantRecord {
                from: vec![(GATEWAY_GROUP.into(), "HTTPRoute".into(), "team".into())],
                to: vec![(String::new(), "Service".into(), Some("web-v2".into()))],
            }),
        );
        index.commit().unwrap();
        team.sync(&index);
        assert_eq!(
            backends(team.upstream("web.shop:80").unwrap()),
            [("web-v2.shop:80".to_owned(), 1)]
        );
        // The shared upstream changes under the copy: the copy follows.
        slice(
            &mut index,
            "shop",
            "web-1",
            "web",
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
            &[
                ("web-0", "10.0.0.1", true, false),
                ("curl-0", "10.0.0.9", true, false),
            ],
        );
        index.commit().unwrap();
        team.sync(&index);
        assert_eq!(team.upstream("web.shop:80").unwrap().endpoints.len(), 2);
        assert_eq!(names(team.upstream("web.shop:80").unwrap()), ["team/mine"]);

        // Removed: team falls back to the producer routes.
        index.apply_route(RouteKind::Http, key("team", "mine"), None);
        index.commit().unwrap();
        team.sync(&index).expect("a delta");
        assert_eq!(
            names(team.upstream("web.shop:80").unwrap()),
            ["shop/older", "shop/canary"]
        );
        // A route in a namespace that is neither applies to no one.
        route(
            &mut index,
            "ops",
            "stray",
            1,
            json!({
                "parentRefs": [parent("api", Some("team"))],
                "rules": [{"backendRefs": [to("api", Some("team"), 1)]}],
            }),
        );
        index.commit();
        shop.sync(&index);
        team.sync(&index);
        assert!(shop.upstream("api.team:80").unwrap().routes.is_empty());
        assert!(team.upstream("api.team:80").unwrap().routes.is_empty());
    }

    #[test]
    fn a_refused_route_applies_nowhere_and_a_port_narrows_the_parent() {
        let mut index = mesh();
        service(
            &mut index,
            "shop",
            "web",
            "10.96.0.1",
            json!([
            {"name": "http", "port": 80, "targetPort": 8080, "appProtocol": "http"},
            {"name": "alt", "port": 81, "targetPort": 8080, "appProtocol": "http"}]),
        );
        route(
            &mut index,
            "shop",
            "bad",
            1,
            json!({
                "parentRefs": [parent("web", None)],
                "rules": [{"filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/"}}}]}],
            }),
        );
        route(
            &mut index,
            "shop",
            "port-80",
            2,
            json!({
                "parentRefs": [parent("web", None)],
                "rules": [{"backendRefs": [to("web-v2", None, 1)]}],
            }),
        );
        let mut alt = parent("web", None);
        alt["port"] = json!(81);
        route(
            &mut index,
            "shop",
            "port-81",
            3,
            json!({
                "parentRefs": [alt],
                "rules": [{"backendRefs": [to("web-v2", None, 1)]}],
            }),
        );
        index.commit().unwrap();
        let mut shop = Proxy::new("shop", "curl", ip("10.0.0.9"));
        shop.sync(&index);
        assert_eq!(
            names(shop.upstream("web.shop:80").unwrap()),
            ["shop/port-80"]
        );
        // Port 81 has no endpoint (the slice lists port 80's only), yet as a
        // parent it is sent, with the one route attached to it.
        assert_eq!(
            names(shop.upstream("web.shop:81").unwrap()),
            ["shop/port-81"]
        );

        // web-v3 has no meshed endpoint: its traffic passes through as it
        // would without a mesh, and a refused route or a consumer route (for
        // another namespace) must not make every client capture it.
        route(
            &mut index,
            "shop",
            "bad-v3",
            4,
            json!({
                "parentRefs": [parent("web-v3", None)],
                "rules": [{"filters": [{"type": "URLRewrite", "urlRewrite": {}}]}],
            }),
        );
        route(
            &mut index,
            "team",
            "v3-for-team",
            5,
            json!({
                "parentRefs": [parent("web-v3", Some("shop"))],
                "rules": [{"backendRefs": [to("web-v2", Some("shop"), 1)]}],
            }),
        );
        index.commit();
        shop.sync(&index);
        // Shop's clients do not catch it (if sent at all, it is without
        // its address); team's do, and follow their consumer route.
        assert!(
            shop.upstream("web-v3.shop:80")
                .is_none_or(|u| u.addresses.is_empty()),
            "left alone for shop"
        );
        let mut team = Proxy::new("team", "curl", ip("10.0.1.9"));
        team.sync(&index);
        let v3 = team.upstream("web-v3.shop:80").expect("team's copy");
        assert!(!v3.addresses.is_empty(), "caught in team by its ClusterIP");
        assert_eq!(names(v3), ["team/v3-for-team"]);
        // A valid producer route makes it a routed parent, for everyone.
        route(
            &mut index,
            "shop",
            "v3",
            6,
            json!({
                "parentRefs": [parent("web-v3", None)],
                "rules": [{"backendRefs": [to("web-v2", None, 1)]}],
            }),
        );
        index.commit();
        shop.sync(&index);
        let v3 = shop.upstream("web-v3.shop:80").expect("a routed parent");
        assert!(!v3.addresses.is_empty() && v3.endpoints.is_empty());
        assert_eq!(names(v3), ["shop/v3"]);
    }

    fn verdicts(
        index: &Index,
        kind: RouteKind,
        ns: &str,
        name: &str,
    ) -> Vec<(String, bool, &'static str)> {
        index
            .route_verdicts(&(kind, key(ns, name)))
            .unwrap()
            .into_iter()
            .flat_map(|(p, vs)| {
                vs.into_iter().map(move |v| {
                    (
                        format!("{}:{}", p.service, v.type_),
                        v.ok,
                        v.reason.as_str(),
                    )
                })
            })
            .collect()
    }

    #[test]
    fn route_status_names_missing_parents_backends_grants_and_kind_conflicts() {
        let mut index = mesh();
        route(
            &mut index,
            "shop",
            "fine",
            10,
            json!({
                "parentRefs": [parent("web", None)],
                "rules": [{"backendRefs": [to("web-v2", None, 1)]}],
            }),
        );
        route(
            &mut index,
            "shop",
            "nowhere",
            11,
            json!({
                "parentRefs": [parent("gone", None), {"group": "", "kind": "Service", "name": "web", "port": 8443}],
                "rules": [{"backendRefs": [to("missing", None, 1), to("web", None, 1)]}],
            }),
        );
        route(
            &mut index,
            "team",
            "far",
            12,
            json!({
                "parentRefs": [parent("api", None)],
                "rules": [{"backendRefs": [to("web", Some("shop"), 1)]}],
            }),
        );
        index.commit();
        assert_eq!(
            verdicts(&index, RouteKind::Http, "shop", "fine"),
            [
                ("shop/web:Accepted".into(), true, "Accepted"),
                ("shop/web:ResolvedRefs".into(), true, "ResolvedRefs")
            ]
        );
        assert_eq!(
            verdicts(&index, RouteKind::Http, "shop", "nowhere"),
            [
                ("shop/gone:Accepted".into(), false, "NoMatchingParent"),
                ("shop/gone:ResolvedRefs".into(), false, "BackendNotFound"),
                ("shop/web:Accepted".into(), false, "NoMatchingParent"),
                ("shop/web:ResolvedRefs".into(), false, "BackendNotFound"),
            ]
        );
        assert_eq!(
            verdicts(&index, RouteKind::Http, "team", "far")[1],
            ("team/api:ResolvedRefs".into(), false, "RefNotPermitted")
        );
        // A GRPCRoute, younger, on the same Service: it takes the Service
        // from the HTTPRoute (GEP-1426), in status and in the table alike.
        let meta = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            creation_timestamp: Some(Time(k8s_openapi::jiff::Timestamp::from_second(20).unwrap())),
            ..Default::default()
        };
        let spec = json!({"parentRefs": [parent("web", None)], "rules": [{"backendRefs": [to("web", None, 1)]}]});
        index.apply_route(
            RouteKind::Grpc,
            key("shop", "grpc"),
            Some(RouteRecord::new(RouteKind::Grpc, "shop", &meta, &spec)),
        );
        index.commit();
        assert_eq!(
            verdicts(&index, RouteKind::Http, "shop", "fine")[0],
            ("shop/web:Accepted".into(), false, "Conflicted")
        );
        assert_eq!(
            verdicts(&index, RouteKind::Grpc, "shop", "grpc")[0],
            ("shop/web:Accepted".into(), true, "Accepted")
        );
        let mut shop = Proxy::new("shop", "curl", ip("10.0.0.9"));
        shop.sync(&index);
        let web = shop.upstream("web.shop:80").unwrap();
        assert!(
            !web.routes.is_empty() && web.routes.iter().all(|r| r.kind == RouteKind::Grpc),
            "{:?}",
            web.routes
        );
        // A consumer HTTPRoute in another namespace does not conflict with
        // shop's GRPCRoute: team's clients follow it.
        route(
            &mut index,
            "team",
            "mine",
            30,
            json!({
                "parentRefs": [parent("web", Some("shop"))],
                "rules": [{"backendRefs": [to("web", Some("shop"), 1)]}],
            }),
        );
        index.commit();
        assert_eq!(
            verdicts(&index, RouteKind::Http, "team", "mine")[0],
            ("shop/web:Accepted".into(), true, "Accepted")
        );
        let mut team = Proxy::new("team", "curl", ip("10.0.1.9"));
        team.sync(&index);
        let web = team.upstream("web.shop:80").unwrap();
        assert_eq!(web.routes.len(), 1);
        assert_eq!(web.routes[0].kind, RouteKind::Http);
    }
}
