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
}

/// The same traffic in a mesh made post-quantum throughout by its
/// MeshConfig: the CA Secret is ML-DSA-65, every proxy's certificate too,
/// and every handshake on every side is authenticated with ML-DSA-65.
#[test]
fn service_traffic_crosses_an_ml_dsa_mesh_in_kubernetes_mode() {
    netns::require_root();
    let mut api = ApiServer::start();
    service_traffic_crosses_the_mesh(&mut api, Identities::PostQuantum);
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
