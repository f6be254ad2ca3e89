//! One route spec, two modes: the mesh file's `routes:` and a cluster's
//! HTTPRoute are checked by the same code, so for any spec (valid or not,
//! generated here) both accept it with the same rules, or both refuse it
//! for the same field and problem. Backends differ only in how they are
//! named (`web-v1` in the mesh file; `web-v1.shop:80` in a cluster).
#![cfg(feature = "kubernetes")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use phoenix_api::route::{RouteKind, RouteRule};
use phoenix_control_plane::k8s::routes::{RouteError, RouteRecord};
use phoenix_control_plane::mesh::{Mesh, MeshError, Problem};
use proptest::prelude::*;
use serde_json::{Value, json};

const MESH: &str = "\
trustDomain: td
workloads:
  - name: client
    upstreams: [{service: web, listen: 127.0.0.1:8080}]
  - name: web-v1
    serve: [{service: web, target: 127.0.0.1:9001}, {service: web-v1, target: 127.0.0.1:9001}]
  - name: web-v2
    serve: [{service: web-v2, target: 127.0.0.1:9002}]
";

fn path() -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just("Exact"), Just("PathPrefix"), Just("RegularExpression")],
        "/?[a-z]{0,4}(/[a-z]{1,3})?",
    )
        .prop_map(|(t, v)| json!({"type": t, "value": v}))
}

fn header() -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just("x-canary"), Just("X-User"), Just("bad header")],
        "[a-z0-9]{0,3}",
    )
        .prop_map(|(n, v)| json!({"name": n, "value": v}))
}

fn matches() -> impl Strategy<Value = Value> {
    (
        proptest::option::of(path()),
        proptest::collection::vec(header(), 0..2),
        proptest::option::of(prop_oneof![Just("GET"), Just("POST"), Just("FETCH")]),
    )
        .prop_map(|(path, headers, method)| {
            let mut m = json!({});
            if let Some(p) = path {
                m["path"] = p;
            }
            if !headers.is_empty() {
                m["headers"] = json!(headers);
            }
            if let Some(method) = method {
                m["method"] = json!(method);
            }
            m
        })
}

fn filter() -> impl Strategy<Value = Value> {
    prop_oneof![
        header().prop_map(
            |h| json!({"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [h]}})
        ),
        header().prop_map(
            |h| json!({"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [h]}})
        ),
        prop_oneof![Just(301u16), Just(302), Just(305)]
            .prop_map(|c| json!({"type": "RequestRedirect", "requestRedirect": {"statusCode": c}})),
        Just(json!({"type": "URLRewrite", "urlRewrite": {}})),
    ]
}

/// A rule with backends named file-style (no port); `k8s` adds the port.
fn rule() -> impl Strategy<Value = Value> {
    (
        proptest::collection::vec(matches(), 0..3),
        proptest::collection::vec(
            (prop_oneof![Just("web-v1"), Just("web-v2")], 0u32..1_200_000),
            0..3,
        ),
        proptest::collection::vec(filter(), 0..2),
        proptest::option::of(prop_oneof![Just("2s"), Just("0s"), Just("soon")]),
        proptest::option::of(1u32..12),
    )
        .prop_map(|(matches, backends, filters, timeout, attempts)| {
            let mut r = json!({});
            if !matches.is_empty() {
                r["matches"] = json!(matches);
            }
            if !backends.is_empty() {
                r["backendRefs"] = backends
                    .iter()
                    .map(|(n, w)| json!({"name": n, "weight": w}))
                    .collect();
            }
            if !filters.is_empty() {
                r["filters"] = json!(filters);
            }
            if let Some(t) = timeout {
                r["timeouts"] = json!({"request": t});
            }
            if let Some(a) = attempts {
                r["retry"] = json!({"codes": [503], "attempts": a});
            }
            r
        })
}

/// The file-mode verdict: rules, or (field under `spec`, problem).
fn in_the_mesh_file(rules: &Value) -> Result<Vec<RouteRule>, (String, String)> {
    let route = json!({"kind": "HTTPRoute", "name": "r", "namespace": "shop",
                       "spec": {"parentRefs": [{"name": "web"}], "rules": rules}});
    let text = format!("{MESH}routes: [{route}]\n");
    match Mesh::parse(&text, Path::new("mesh.yaml")) {
        Ok(mesh) => Ok(mesh.routes[0].rules.clone()),
        Err(MeshError::Invalid {
            field,
            problem: Problem::Route(p),
            ..
        }) => Err((
            field.trim_start_matches("routes[0].").to_owned(),
            p.to_string(),
        )),
        Err(other) => panic!("not a route error: {other}"),
    }
}

/// The cluster verdict, backends named back as the mesh file names them.
fn in_a_cluster(rules: &Value) -> Result<Vec<RouteRule>, (String, String)> {
    let mut rules = rules.clone();
    for rule in rules.as_array_mut().unwrap() {
        let backends = rule.get_mut("backendRefs").and_then(Value::as_array_mut);
        for b in backends.into_iter().flatten() {
            b["port"] = json!(80);
        }
    }
    let spec =
        json!({"parentRefs": [{"group": "", "kind": "Service", "name": "web"}], "rules": rules});
    let record = RouteRecord::new(RouteKind::Http, "shop", &ObjectMeta::default(), &spec);
    match record.rules {
        Ok(mut rules) => {
            for b in rules.iter_mut().flat_map(|r| r.backends.iter_mut()) {
                let name = b.service.host().split('.').next().unwrap().to_owned();
                b.service = name.parse().unwrap();
            }
            Ok(rules)
        }
        Err(RouteError::Field { field, problem }) => Err((field, problem.to_string())),
        Err(other) => panic!("not a field error: {other}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn both_modes_accept_and_refuse_the_same_specs(
        rules in proptest::collection::vec(rule(), 0..4)
    ) {
        let rules = json!(rules);
        prop_assert_eq!(in_the_mesh_file(&rules), in_a_cluster(&rules), "{}", rules);
    }
}

/// The generator above is worth its cases: it makes specs both modes
/// accept as well as specs they refuse, in fair numbers.
#[test]
fn the_generated_specs_are_both_accepted_and_refused() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = proptest::collection::vec(rule(), 0..4);
    let accepted = (0..400)
        .filter(|_| {
            let rules = json!(strategy.new_tree(&mut runner).unwrap().current());
            in_the_mesh_file(&rules).is_ok()
        })
        .count();
    assert!((40..=360).contains(&accepted), "{accepted} of 400 accepted");
}
