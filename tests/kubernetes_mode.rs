//! Kubernetes mode end to end on this machine: the real control plane in
//! `kubernetes` mode reads the API server stand-in (tests/support/apiserver.rs,
//! the one part that is not real: no kube-apiserver installs here), and
//! unmodified curl in meshed pods (network namespaces, rules by the real
//! `phoenix-proxy init`) reaches two Services by ClusterIP through real
//! proxies over post-quantum QUIC. The same body runs against a real
//! cluster in tests/kubernetes.rs when `PHOENIX_TEST_KUBECONFIG` is set.
//!
//! Needs root and the workspace binaries:
//! `cargo build --workspace --bins --all-features`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "support/harness.rs"]
mod harness;
#[path = "support/netns.rs"]
mod netns;
#[path = "support/service_traffic.rs"]
mod service_traffic;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use apiserver::ApiServer;
use serde_json::{Value, json};
use service_traffic::{Identities, MeshApi, service_traffic_crosses_the_mesh};

/// The stand-in as the traffic test's API: objects as given (ClusterIPs
/// included, since nothing allocates them), tokens TokenReview accepts.
impl MeshApi for ApiServer {
    fn namespace(&mut self, base: &str) -> String {
        self.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": base}}));
        base.to_owned()
    }

    fn apply(&mut self, obj: Value) -> Value {
        ApiServer::apply(self, obj)
    }

    fn token(&mut self, namespace: &str, service_account: &str) -> String {
        let token = format!("{service_account}-{:016x}", rand::random::<u64>());
        self.add_token(&token, namespace, service_account, &["phoenix"]);
        token
    }

    fn kubeconfig(&self, dir: &Path) -> (PathBuf, SocketAddr) {
        (ApiServer::kubeconfig(self, dir), self.addr())
    }

    fn unexpected(&self) -> Vec<String> {
        ApiServer::unexpected(self)
    }

    fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        ApiServer::get(self, api_version, kind, namespace, name)
    }
}

#[test]
fn service_traffic_crosses_the_mesh_in_kubernetes_mode() {
    netns::require_root();
    let mut api = ApiServer::start();
    service_traffic_crosses_the_mesh(&mut api, Identities::Classical);
    assert_every_request_is_allowed_by_the_rbac(&api);
}

/// The stand-in does not enforce RBAC, so every request the control plane
/// made is checked here against the ClusterRole and Role it is installed
/// with (`k8s/rbac.rs`, the chart's): a call the RBAC does not grant would
/// get 403 on a real cluster.
fn assert_every_request_is_allowed_by_the_rbac(api: &ApiServer) {
    let objects = phoenix_control_plane::k8s::rbac::objects("phoenix-system");
    let rules = |kind: &str| -> Vec<Value> {
        objects
            .iter()
            .filter(|o| o["kind"] == kind)
            .flat_map(|o| o["rules"].as_array().cloned().unwrap_or_default())
            .collect()
    };
    let (cluster, namespaced) = (rules("ClusterRole"), rules("Role"));
    let mut denied = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for request in api.requests() {
        let (method, target) = request
            .split_once(' ')
            .unwrap_or_else(|| panic!("a request line: {request}"));
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        // Non-resource URLs every authenticated user may read: the version
        // and discovery.
        let discovery = matches!(
            parts.as_slice(),
            ["version"] | ["api"] | ["apis"] | ["api", _]
        ) || matches!(parts.as_slice(), ["apis", _] | ["apis", _, _])
            || parts.first() == Some(&"openapi");
        if method == "GET" && discovery {
            continue;
        }
        let (group, rest) = match parts.as_slice() {
            ["api", _, rest @ ..] => ("", rest),
            ["apis", group, _, rest @ ..] => (*group, rest),
            _ => panic!("a request the RBAC check cannot read: {request}"),
        };
        let (namespace, rest) = match rest {
            // A Namespace's own subresource: `namespaces/<name>/status`.
            ["namespaces", name, sub @ ("status" | "finalize")] => {
                (None, vec!["namespaces", name, sub])
            }
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(*ns), rest.to_vec()),
            _ => (None, rest.to_vec()),
        };
        let (resource, name) = match rest.as_slice() {
            [resource] => (resource.to_string(), None),
            [resource, name] => (resource.to_string(), Some(*name)),
            [resource, name, sub] => (format!("{resource}/{sub}"), Some(*name)),
            _ => panic!("a request the RBAC check cannot read: {request}"),
        };
        let verb = match (method, name) {
            ("GET", None) if query.contains("watch=true") => "watch",
            ("GET", None) => "list",
            ("GET", Some(_)) => "get",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", None) => "deletecollection",
            ("DELETE", Some(_)) => "delete",
            _ => panic!("a request the RBAC check cannot read: {request}"),
        };
        seen.insert(format!("{verb} {group}/{resource}"));
        let grants = |rule: &Value| {
            let has = |field: &str, v: &str| {
                rule[field]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == v || x == "*"))
            };
            let names_ok = match rule["resourceNames"].as_array() {
                None => true,
                Some(names) => {
                    verb != "create" && name.is_some_and(|n| names.iter().any(|x| x == n))
                }
            };
            has("apiGroups", group) && has("resources", &resource) && has("verbs", verb) && names_ok
        };
        let allowed = cluster.iter().any(grants)
            || (namespace == Some("phoenix-system") && namespaced.iter().any(grants));
        if !allowed {
            denied.push(format!("{verb} {group}/{resource} ({request})"));
        }
    }
    // The check saw the calls it is here for.
    for wanted in [
        "watch gateway.networking.k8s.io/httproutes",
        "watch gateway.networking.k8s.io/grpcroutes",
        "watch gateway.networking.k8s.io/referencegrants",
        "get gateway.networking.k8s.io/httproutes",
        "patch gateway.networking.k8s.io/httproutes/status",
        "watch /services",
        "create authentication.k8s.io/tokenreviews",
    ] {
        assert!(seen.contains(wanted), "no `{wanted}` among {seen:?}");
    }
    denied.sort();
    denied.dedup();
    assert!(
        denied.is_empty(),
        "the control plane made calls its RBAC does not grant:\n{}",
        denied.join("\n")
    );
}

/// The same traffic in a mesh made post-quantum throughout by its
/// MeshConfig: the CA Secret is ML-DSA-65, every proxy's certificate too,
/// and every handshake on every side is authenticated with ML-DSA-65.
#[test]
fn service_traffic_crosses_an_ml_dsa_mesh_in_kubernetes_mode() {
    netns::require_root();
    let mut api = ApiServer::start();
    service_traffic_crosses_the_mesh(&mut api, Identities::PostQuantum);
    assert_every_request_is_allowed_by_the_rbac(&api);
    let secret = api
        .get("v1", "Secret", "phoenix-system", "phoenix-ca")
        .expect("the CA Secret");
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(secret).unwrap();
    let root = secret.data.unwrap()["ca.crt"].0.clone();
    assert_eq!(
        phoenix_tls::spiffe::signer_algorithm(std::str::from_utf8(&root).unwrap()),
        Some(phoenix_api::tls_policy::IdentityAlgorithm::MlDsa65)
    );
}
