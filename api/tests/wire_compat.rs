//! Wire compatibility held to account: every served version is sent what
//! its own (frozen) types read, today and after the next version adds an
//! optional field and a resource kind.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

use std::collections::BTreeMap;

use phoenix_api::compat::{
    Addition, CHANGES, Change, Compat, Encodings, MIN_WIRE_VERSION, WIRE_VERSION, frozen,
};
use phoenix_api::control::{Response, decode_body};
use phoenix_api::protocol::Protocol;
use phoenix_api::snapshot::{
    Delta, Endpoint, Inbound, InboundMode, MeshSettings, Resource, RetryPolicy, Snapshot, Upstream,
};
use phoenix_api::tls_policy::{AuthPolicy, CipherSuite, IdentityAlgorithm, KeyExchange};
use serde_json::{Value, json};

/// A snapshot with every field of every kind set, written without `..`: a
/// field added to the types does not compile here until it is set, and then
/// the tests below ask for its row in the table.
fn everything() -> Snapshot {
    let resources = [
        Resource::Mesh(MeshSettings {
            trust_domain: "phoenix.local".into(),
            key_exchange: KeyExchange::PqPreferred,
            cipher_suites: vec![CipherSuite::TLS13_AES_128_GCM_SHA256],
            peer_idle_timeout_ms: 90_000,
            connect_timeout_ms: 2_000,
            inbound_mode: InboundMode::Strict,
            trust_bundle_pem: Some("-----BEGIN CERTIFICATE-----".into()),
            identity_algorithm: IdentityAlgorithm::MlDsa65,
            auth_policy: AuthPolicy::PqOnly,
        }),
        Resource::Upstream(Upstream {
            service: "web.shop:80".parse().unwrap(),
            listen: Some("127.0.0.1:8080".parse().unwrap()),
            addresses: vec!["10.96.0.10:80".parse().unwrap()],
            endpoints: vec![Endpoint {
                address: "10.0.0.7:4143".parse().unwrap(),
                identity: "spiffe://phoenix.local/ns/shop/sa/web".into(),
                other_ips: vec!["fd00::7".parse().unwrap()],
            }],
            connect_timeout_ms: Some(500),
            idle_timeout_ms: Some(60_000),
            protocol: Protocol::Http2,
            request_timeout_ms: Some(2_000),
            retry: Some(RetryPolicy {
                status_codes: vec![503],
                grpc_status_codes: vec![14],
                max_retries: 2,
                non_idempotent: true,
                budget_percent: 20,
                budget_min_per_second: 10,
            }),
            routes: vec![every_route()],
        }),
        Resource::Inbound(Inbound {
            service: "web.shop:80".parse().unwrap(),
            target: "127.0.0.1:80".parse().unwrap(),
            other_ips: vec!["fd00::7".parse().unwrap()],
            allow: Some(vec!["spiffe://phoenix.local/ns/shop/sa/*".into()]),
            inbound_mode: Some(InboundMode::Permissive),
            protocol: Protocol::Opaque,
        }),
    ];
    Snapshot {
        version: 7,
        resources: resources.into_iter().map(|r| (r.key(), r)).collect(),
    }
}

/// A route with every field set (also without `..`).
fn every_route() -> phoenix_api::route::Route {
    use phoenix_api::route::*;
    let nv = || NameValue {
        name: "x-canary".into(),
        value: "1".into(),
    };
    let modifier = || HeaderModifier {
        set: vec![nv()],
        add: vec![nv()],
        remove: vec!["x-old".into()],
    };
    Route {
        name: "web-canary".into(),
        namespace: "shop".into(),
        kind: RouteKind::Http,
        rules: vec![RouteRule {
            matches: vec![RouteMatch {
                path: Some(PathMatch::PathPrefix("/api".into())),
                method: Some("GET".into()),
                headers: vec![nv()],
                query_params: vec![nv()],
                grpc_service: Some("echo.Echo".into()),
                grpc_method: Some("Unary".into()),
            }],
            backends: vec![Backend {
                service: "web-v2.shop:80".parse().unwrap(),
                weight: 10,
            }],
            filters: vec![
                Filter::RequestHeaderModifier(modifier()),
                Filter::ResponseHeaderModifier(modifier()),
                Filter::RequestRedirect(Redirect {
                    scheme: Some("https".into()),
                    hostname: Some("example.com".into()),
                    port: Some(8443),
                    path: Some(PathRewrite::ReplacePrefixMatch("/v2".into())),
                    status_code: 302,
                }),
            ],
            request_timeout_ms: Some(2_000),
            backend_request_timeout_ms: Some(500),
            retry: Some(RetryPolicy {
                status_codes: vec![503],
                grpc_status_codes: vec![],
                max_retries: 1,
                non_idempotent: false,
                budget_percent: 20,
                budget_min_per_second: 10,
            }),
        }],
    }
}

fn served() -> impl Iterator<Item = u32> {
    MIN_WIRE_VERSION..=WIRE_VERSION
}

fn frame_body(frame: &[u8]) -> &[u8] {
    &frame[4..]
}

/// Today's messages, shaped for each version, read by that version's types.
#[test]
fn every_served_version_reads_what_it_is_sent() {
    let snapshot = Response::Snapshot(everything());
    for version in served() {
        let frame = Compat::CURRENT.encode_response(&snapshot, version).unwrap();
        let read = frozen::read(version, frame_body(&frame)).unwrap_or_else(|e| {
            panic!(
                "version {version}: {e}: {}",
                String::from_utf8_lossy(&frame)
            )
        });
        assert_eq!(
            read["resources"].as_object().unwrap().len(),
            3,
            "version {version}"
        );
    }
}

/// The newest version's frozen copy knows every field the types write: a
/// field added without a new version (and its copy) fails here.
#[test]
fn the_newest_frozen_copy_knows_every_field() {
    let message = Response::Snapshot(everything());
    let written = serde_json::to_value(&message).unwrap();
    let body = serde_json::to_vec(&message).unwrap();
    let understood = frozen::read(WIRE_VERSION, &body).unwrap();
    assert_eq!(understood, written);
    assert!(matches!(
        frozen::read(WIRE_VERSION + 1, &body),
        Err(frozen::FrozenError::NotServed(_))
    ));
}

/// Each version loses exactly what came after it, and keeps the rest.
#[test]
fn older_versions_lose_only_what_came_later() {
    let mesh = |version| {
        let frame = Compat::CURRENT
            .encode_response(&Response::Snapshot(everything()), version)
            .unwrap();
        let read = frozen::read(version, frame_body(&frame)).unwrap();
        read["resources"].clone()
    };
    let v2 = mesh(2);
    assert!(v2["mesh"].get("trustBundlePem").is_none());
    assert!(v2["inbound/web.shop:80"].get("inboundMode").is_none());
    assert_eq!(v2["upstream/web.shop:80"]["idleTimeoutMs"], 60_000);
    let v3 = mesh(3);
    assert!(v3["mesh"]["trustBundlePem"].is_string());
    assert_eq!(v3["mesh"]["inboundMode"], "strict");
    assert!(
        v3["upstream/web.shop:80"]["endpoints"][0]
            .get("otherIps")
            .is_none()
    );
    let v4 = mesh(4);
    assert_eq!(
        v4["upstream/web.shop:80"]["endpoints"][0]["otherIps"][0],
        "fd00::7"
    );
    assert_eq!(v4["inbound/web.shop:80"]["otherIps"][0], "fd00::7");
    let v5 = mesh(5);
    assert!(v5["upstream/web.shop:80"].get("protocol").is_none());
    assert!(v5["inbound/web.shop:80"].get("protocol").is_none());
    let v6 = mesh(6);
    assert_eq!(v6["upstream/web.shop:80"]["protocol"], "http2");
    assert_eq!(v6["inbound/web.shop:80"]["protocol"], "opaque");
    assert!(v6["upstream/web.shop:80"].get("requestTimeoutMs").is_none());
    assert!(v6["upstream/web.shop:80"].get("retry").is_none());
    let v7 = mesh(7);
    assert_eq!(v7["upstream/web.shop:80"]["requestTimeoutMs"], 2_000);
    assert_eq!(
        v7["upstream/web.shop:80"]["retry"]["grpcStatusCodes"][0],
        14
    );
    assert!(v7["mesh"].get("identityAlgorithm").is_none());
    assert!(v7["mesh"].get("authPolicy").is_none());
    let v8 = mesh(8);
    assert_eq!(v8["mesh"]["identityAlgorithm"], "ml-dsa-65");
    assert_eq!(v8["mesh"]["authPolicy"], "pq-only");
}

/// A strict reader refuses what it does not know: the frozen copies are
/// strict where those proxies were, so the tests above can fail.
#[test]
fn strict_versions_refuse_a_field_they_do_not_know() {
    for version in served().filter(|v| !Compat::CURRENT.tolerant(*v)) {
        let frame = Compat::CURRENT
            .encode_response(&Response::Snapshot(everything()), version)
            .unwrap();
        let mut message: Value = serde_json::from_slice(frame_body(&frame)).unwrap();
        frozen::read(version, &serde_json::to_vec(&message).unwrap()).unwrap();
        message["resources"]["upstream/web.shop:80"]["endpoints"][0]["weight"] = json!(1);
        assert!(
            frozen::read(version, &serde_json::to_vec(&message).unwrap()).is_err(),
            "version {version} read a field it does not know"
        );
    }
}

/// The next version, as a fixture: an optional field on upstreams and a
/// new resource kind.
const NEXT: u32 = WIRE_VERSION + 1;

fn next_changes() -> Vec<Change> {
    let mut changes = CHANGES.to_vec();
    changes.push(Change {
        version: NEXT,
        addition: Addition::Field {
            kind: "upstream",
            path: &["retryBudget"],
        },
    });
    changes.push(Change {
        version: NEXT,
        addition: Addition::Kind("httpRoute"),
    });
    changes
}

/// What a control plane of the next version writes, as JSON.
fn next_resources() -> BTreeMap<String, Value> {
    let mut resources: BTreeMap<String, Value> = everything()
        .resources
        .iter()
        .map(|(k, r)| (k.clone(), serde_json::to_value(r).unwrap()))
        .collect();
    resources
        .get_mut("upstream/web.shop:80")
        .unwrap()
        .as_object_mut()
        .unwrap()
        .insert("retryBudget".into(), json!({"ratio": 0.2}));
    resources.insert(
        "httpRoute/web.shop:80/checkout".into(),
        json!({"kind": "httpRoute", "parent": "web.shop:80", "matches": [{"path": "/checkout"}]}),
    );
    resources
}

fn next_messages() -> [Value; 2] {
    let resources = next_resources();
    [
        json!({"type": "snapshot", "version": 8, "resources": resources}),
        json!({"type": "delta", "fromVersion": 7, "version": 8, "upserts": resources, "removals": ["upstream/gone:1"]}),
    ]
}

#[test]
fn after_the_next_version_adds_a_field_and_a_kind_every_version_still_reads_its_messages() {
    let changes = next_changes();
    let next = Compat::new(&changes, NEXT);
    for message in next_messages() {
        for version in served() {
            if message["type"] == "delta" && !next.sends_deltas(version) {
                continue;
            }
            let mut shaped = message.clone();
            next.downgrade_response(&mut shaped, version);
            let body = serde_json::to_vec(&shaped).unwrap();
            let read =
                frozen::read(version, &body).unwrap_or_else(|e| panic!("version {version}: {e}"));
            let map = if message["type"] == "snapshot" {
                "resources"
            } else {
                "upserts"
            };
            let resources = read[map].as_object().unwrap();
            assert_eq!(
                resources.len(),
                3,
                "version {version}: the route is not sent"
            );
            assert!(
                resources["upstream/web.shop:80"]
                    .get("retryBudget")
                    .is_none()
            );
        }
    }
}

/// A tolerant proxy (version 5 on) reads the next version's messages even
/// unshaped: a forgotten row costs it nothing. Today's types read them too.
#[test]
fn tolerant_versions_read_the_next_versions_messages_unshaped() {
    for message in next_messages() {
        let body = serde_json::to_vec(&message).unwrap();
        for version in served().filter(|v| Compat::CURRENT.tolerant(*v)) {
            let read =
                frozen::read(version, &body).unwrap_or_else(|e| panic!("version {version}: {e}"));
            let map = if message["type"] == "snapshot" {
                "resources"
            } else {
                "upserts"
            };
            assert_eq!(read[map].as_object().unwrap().len(), 3);
        }
        for version in served().filter(|v| !Compat::CURRENT.tolerant(*v)) {
            assert!(
                frozen::read(version, &body).is_err(),
                "version {version} is strict"
            );
        }
        let today = decode_body::<Response>(&body).unwrap();
        let (resources, kind) = match &today {
            Response::Snapshot(s) => (&s.resources, "snapshot"),
            Response::Delta(Delta { upserts, .. }) => (upserts, "delta"),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            resources,
            &everything().resources,
            "{kind}: known resources intact"
        );
    }
}

/// The index's per-version encodings are what `encode_response` writes, and
/// versions that read the same bytes share one encoding.
#[test]
fn per_version_encodings_match_the_shaped_messages() {
    for resource in everything().resources.values() {
        let encodings = Encodings::new(&Compat::CURRENT, resource).unwrap();
        for version in served() {
            let one = Compat::CURRENT.encode_resource(resource, version).unwrap();
            let a: Value = serde_json::from_str(encodings.get(version).unwrap()).unwrap();
            let b: Value = serde_json::from_str(&one.unwrap()).unwrap();
            assert_eq!(a, b, "version {version}");
        }
    }
    let changes = next_changes();
    let next = Compat::new(&changes, NEXT);
    let mesh = &everything().resources["mesh"];
    let encodings = Encodings::new(&next, mesh).unwrap();
    assert!(std::ptr::eq(
        encodings.get(NEXT).unwrap(),
        encodings.get(WIRE_VERSION).unwrap()
    ));
    assert!(std::ptr::eq(
        encodings.get(1).unwrap(),
        encodings.get(2).unwrap()
    ));
    assert!(!std::ptr::eq(
        encodings.get(2).unwrap(),
        encodings.get(3).unwrap()
    ));
}

/// UDP services (wire version 10) are not additive: a proxy before them
/// would carry one as TCP, so it is not sent them, and keeps the rest.
#[test]
fn udp_services_reach_only_proxies_that_carry_udp() {
    let mut snapshot = everything();
    for resource in [
        Resource::Upstream(Upstream {
            service: "dns.kube-system:53/udp".parse().unwrap(),
            listen: Some("127.0.0.1:5353".parse().unwrap()),
            addresses: Vec::new(),
            endpoints: vec![Endpoint {
                address: "10.0.0.9:4143".parse().unwrap(),
                identity: "spiffe://phoenix.local/ns/kube-system/sa/dns".into(),
                other_ips: Vec::new(),
            }],
            connect_timeout_ms: None,
            idle_timeout_ms: Some(5_000),
            protocol: Protocol::Detect,
            request_timeout_ms: None,
            retry: None,
            routes: Vec::new(),
        }),
        Resource::Inbound(Inbound {
            service: "dns.kube-system:53/udp".parse().unwrap(),
            target: "127.0.0.1:53".parse().unwrap(),
            other_ips: Vec::new(),
            allow: None,
            inbound_mode: None,
            protocol: Protocol::Detect,
        }),
    ] {
        snapshot.resources.insert(resource.key(), resource);
    }
    let read = |version| {
        let frame = Compat::CURRENT
            .encode_response(&Response::Snapshot(snapshot.clone()), version)
            .unwrap();
        frozen::read(version, frame_body(&frame)).unwrap()["resources"].clone()
    };
    for version in served().filter(|v| *v < 10) {
        let before = read(version);
        assert!(
            before.get("upstream/dns.kube-system:53/udp").is_none(),
            "{version}"
        );
        assert!(
            before.get("inbound/dns.kube-system:53/udp").is_none(),
            "{version}"
        );
        assert_eq!(before.as_object().unwrap().len(), 3, "version {version}");
    }
    let v10 = read(10);
    assert_eq!(
        v10["upstream/dns.kube-system:53/udp"]["idleTimeoutMs"],
        5_000
    );
    assert_eq!(
        v10["inbound/dns.kube-system:53/udp"]["target"],
        "127.0.0.1:53"
    );
    for resource in snapshot.resources.values() {
        let encodings = Encodings::new(&Compat::CURRENT, resource).unwrap();
        for version in served() {
            let one = Compat::CURRENT.encode_resource(resource, version).unwrap();
            let json = |s: &str| serde_json::from_str::<Value>(s).unwrap();
            assert_eq!(
                encodings.get(version).map(json),
                one.as_deref().map(json),
                "version {version}"
            );
        }
    }
}
