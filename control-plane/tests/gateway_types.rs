//! The Gateway API types are kopium's output, unedited: regenerated from
//! the vendored CRDs by `scripts/gateway-api-types`, they must equal what
//! is committed in `src/gateway/` (a hand edit or a CRD change without
//! regenerating fails here). Needs kopium 0.24.1, which `scripts/test`
//! installs into `target/tools/kopium` (`KOPIUM=path` names another).
#![cfg(feature = "kubernetes")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use phoenix_api::route::RouteKind;
use phoenix_control_plane::gateway::{GrpcRoute, HttpRoute, ReferenceGrant};
use phoenix_control_plane::k8s::routes::RouteRecord;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn kopium() -> PathBuf {
    if let Some(path) = std::env::var_os("KOPIUM") {
        return path.into();
    }
    let tools = repo().join("target/tools/kopium/bin/kopium");
    if tools.exists() {
        return tools;
    }
    "kopium".into()
}

#[test]
fn gateway_types_are_what_kopium_makes_of_the_vendored_crds() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(repo().join("scripts/gateway-api-types"))
        .arg(out.path())
        .env("KOPIUM", kopium())
        .status()
        .expect("scripts/gateway-api-types runs");
    assert!(
        status.success(),
        "scripts/gateway-api-types failed (is kopium 0.24.1 installed? scripts/test installs it)"
    );
    for kind in ["httproutes", "grpcroutes", "referencegrants"] {
        let made = std::fs::read_to_string(out.path().join(format!("{kind}.rs"))).unwrap();
        let committed =
            std::fs::read_to_string(repo().join(format!("control-plane/src/gateway/{kind}.rs")))
                .unwrap();
        assert!(
            made == committed,
            "src/gateway/{kind}.rs differs from kopium's output: run scripts/gateway-api-types"
        );
    }
}

/// Every route example the README and the CRDs' own docs would have users
/// write reads into the types (a field the types lack would be dropped).
#[test]
fn routes_of_both_channels_read_into_the_types_without_losing_a_field() {
    let route = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"namespace": "shop", "name": "canary"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/"},
                             "headers": [{"type": "Exact", "name": "x-canary", "value": "1"}],
                             "method": "GET"}],
                "filters": [{"type": "RequestRedirect",
                             "requestRedirect": {"statusCode": 301, "scheme": "https"}}],
                "timeouts": {"request": "10s", "backendRequest": "2s"},
                "retry": {"codes": [503], "attempts": 2},
            }, {
                "backendRefs": [{"group": "", "kind": "Service", "name": "web-v2", "port": 80, "weight": 10}],
            }],
        },
    });
    let typed: HttpRoute = serde_json::from_value(route.clone()).unwrap();
    assert_eq!(serde_json::to_value(&typed).unwrap(), route);
    // The typed spec is checked as the mesh file's would be: every
    // field arrives in the wire rules.
    let record = RouteRecord::new(RouteKind::Http, "shop", &typed.metadata, &typed.spec);
    let rules = record.rules.expect("a valid route");
    let [redirect, split] = rules.as_slice() else {
        panic!("two rules: {rules:?}")
    };
    assert_eq!(redirect.matches[0].method.as_deref(), Some("GET"));
    assert_eq!(redirect.matches[0].headers[0].name, "x-canary");
    assert!(matches!(
        &redirect.filters[0],
        phoenix_api::route::Filter::RequestRedirect(r) if r.status_code == 301
    ));
    assert_eq!(
        (
            redirect.request_timeout_ms,
            redirect.backend_request_timeout_ms
        ),
        (Some(10_000), Some(2_000))
    );
    assert_eq!(redirect.retry.as_ref().unwrap().max_retries, 2);
    assert_eq!(split.backends[0].service.as_str(), "web-v2.shop:80");
    assert_eq!(split.backends[0].weight, 10);
    assert_eq!(record.parents[0].port, Some(80));
    let grpc = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"namespace": "shop", "name": "by-method"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 50051}],
            "rules": [{"matches": [{"method": {"type": "Exact", "service": "echo.Echo", "method": "Unary"}}],
                       "backendRefs": [{"name": "echo-v2", "port": 50051}]}],
        },
    });
    let typed: GrpcRoute = serde_json::from_value(grpc.clone()).unwrap();
    assert_eq!(serde_json::to_value(&typed).unwrap(), grpc);
    let record = RouteRecord::new(RouteKind::Grpc, "shop", &typed.metadata, &typed.spec);
    let rules = record.rules.expect("a valid route");
    assert_eq!(rules[0].matches[0].grpc_method.as_deref(), Some("Unary"));
    assert_eq!(rules[0].backends[0].service.as_str(), "echo-v2.shop:50051");
    let grant = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"namespace": "team", "name": "from-shop"},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "shop"}],
                 "to": [{"group": "", "kind": "Service"}]},
    });
    let typed: ReferenceGrant = serde_json::from_value(grant.clone()).unwrap();
    assert_eq!(serde_json::to_value(&typed).unwrap(), grant);
}
