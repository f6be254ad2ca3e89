//! Acceptance tests on a real Kubernetes cluster.
//!
//! Ignored by default: no API server installs from the registries on CI
//! machines. Run them against any cluster with admin rights (kind, k3d, a
//! cloud cluster; no kubelet work is needed, objects are created directly):
//!
//! ```text
//! cargo build --workspace --bins --all-features
//! PHOENIX_TEST_KUBECONFIG=~/.kube/config cargo test --all-features --test kubernetes -- --ignored
//! ```
//!
//! Each test works in namespaces of its own (`phoenix-test-<random>`) and
//! deletes them at the end; the CRDs are applied (server-side) and left.
//! The real control-plane binary runs on this machine against the cluster;
//! a real proxy runs here too and authenticates with a ServiceAccount token
//! minted by the TokenRequest API, like a projected token in a pod.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/harness.rs"]
mod harness;
#[path = "support/netns.rs"]
mod netns;
#[path = "support/service_traffic.rs"]
mod service_traffic;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use harness::{Proc, bin, eventually, get};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use phoenix_control_plane::crd::{self, TrafficPolicy};
use serde_json::json;

/// A cluster connection and a Tokio runtime to drive it from sync tests.
struct Cluster {
    rt: tokio::runtime::Runtime,
    client: Client,
    kubeconfig: PathBuf,
    /// Namespaces to delete at the end.
    namespaces: Vec<String>,
}

impl Cluster {
    fn connect() -> Self {
        let kubeconfig = PathBuf::from(
            std::env::var_os("PHOENIX_TEST_KUBECONFIG")
                .expect("set PHOENIX_TEST_KUBECONFIG to a kubeconfig with admin rights"),
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(async {
            let kc = Kubeconfig::read_from(&kubeconfig).unwrap();
            let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .unwrap();
            Client::try_from(config).unwrap()
        });
        Self {
            rt,
            client,
            kubeconfig,
            namespaces: vec![],
        }
    }

    fn run<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    /// Applies the generated CRDs and waits until they are served.
    fn apply_crds(&self) {
        for c in crd::all() {
            self.apply_crd(&c);
        }
    }

    /// Applies the Gateway API's route CRDs (v1.5.1, experimental channel:
    /// `retry` included), as a user installs them, and waits until served.
    fn apply_gateway_api_crds(&self) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("manifests/gateway-api/v1.5.1/experimental");
        for kind in ["httproutes", "grpcroutes", "referencegrants"] {
            let file = dir.join(format!("gateway.networking.k8s.io_{kind}.yaml"));
            let text = std::fs::read_to_string(file).unwrap();
            self.apply_crd(&serde_saphyr::from_str(&text).unwrap());
        }
    }

    /// Applies one CRD (server-side) and waits until it is established.
    fn apply_crd(&self, c: &CustomResourceDefinition) {
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let name = c.metadata.name.clone().unwrap();
        self.run(api.patch(
            &name,
            &PatchParams::apply("phoenix-tests").force(),
            &Patch::Apply(c),
        ))
        .unwrap();
        eventually(Duration::from_secs(30), "CRD established", || {
            let c = self.run(api.get(&name)).ok()?;
            c.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        });
    }

    fn namespace(&mut self, prefix: &str) -> String {
        let name = format!("{prefix}-{:08x}", rand::random::<u32>());
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        self.run(api.create(&PostParams::default(), &ns)).unwrap();
        self.namespaces.push(name.clone());
        name
    }

    fn create<K>(&self, ns: &str, obj: serde_json::Value) -> K
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        let obj: K = serde_json::from_value(obj).unwrap();
        self.run(api.create(&PostParams::default(), &obj)).unwrap()
    }

    /// A token of `sa` for `audience`, as a projected volume would hold.
    fn token(&self, ns: &str, sa: &str, audience: &str) -> String {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![audience.to_owned()],
                expiration_seconds: Some(600),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let answer = self
            .run(api.create_token_request(sa, &PostParams::default(), &request))
            .unwrap();
        answer.status.unwrap().token
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        for ns in std::mem::take(&mut self.namespaces) {
            let _ = self.rt.block_on(api.delete(&ns, &DeleteParams::default()));
        }
    }
}

/// The real control plane, against the cluster.
fn control_plane(
    cluster: &Cluster,
    ns: &str,
    state: &std::path::Path,
) -> (Proc, serde_json::Value) {
    let mut cmd = Command::new(bin("phoenix-control-plane"));
    cmd.arg("kubernetes")
        .args(["--namespace", ns])
        .args(["--service-account", "phoenix-control-plane"])
        .args(["--trust-domain", "cluster.local"])
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        // The webhook is tested with its chart (issue 4); here, any port.
        .args(["--webhook-listen", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(state)
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("POD_NAME", "phoenix-test-control-plane");
    let p = Proc::spawn("control-plane", cmd);
    let bound: serde_json::Value = serde_json::from_str(&p.line(Duration::from_secs(60)))
        .expect("the control plane prints its addresses as JSON (built with --all-features?)");
    let admin = bound["admin"].as_str().unwrap().parse().unwrap();
    eventually(
        Duration::from_secs(60),
        "control plane ready (all kinds listed)",
        || (get(admin, "/ready").0 == 200).then_some(()),
    );
    (p, bound)
}

/// The real proxy, authenticating with `token`.
fn proxy(cp: &serde_json::Value, token: &str, dir: &std::path::Path) -> Proc {
    let token_file = dir.join(format!("token-{:08x}", rand::random::<u32>()));
    std::fs::write(&token_file, token).unwrap();
    let mut cmd = Command::new(bin("phoenix-proxy"));
    cmd.arg("--control-plane")
        .arg(cp["control"].as_str().unwrap())
        .arg("--control-plane-identity")
        .arg(cp["identity"].as_str().unwrap())
        .arg("--trust-anchor")
        .arg(cp["trustAnchor"].as_str().unwrap())
        .arg("--token-file")
        .arg(&token_file);
    Proc::spawn("proxy", cmd)
}

fn admin_of(p: &Proc) -> std::net::SocketAddr {
    let bound: serde_json::Value = serde_json::from_str(&p.line(Duration::from_secs(60))).unwrap();
    bound["admin"].as_str().unwrap().parse().unwrap()
}

fn config(admin: std::net::SocketAddr) -> serde_json::Value {
    serde_json::from_str(&get(admin, "/config").1).unwrap()
}

#[test]
#[ignore = "needs cluster"]
fn a_proxy_gets_its_service_account_identity_and_the_cluster_endpoints() {
    let mut cluster = Cluster::connect();
    cluster.apply_crds();
    let cp_ns = cluster.namespace("phoenix-test-cp");
    let app = cluster.namespace("phoenix-test-app");
    for (ns, sa) in [
        (&cp_ns, "phoenix-control-plane"),
        (&app, "web"),
        (&app, "db"),
    ] {
        cluster.create::<ServiceAccount>(ns, json!({"metadata": {"name": sa}}));
    }
    // A meshed pod of db, with no kubelet: pinned to a node that does not
    // exist, its IP set through the status subresource.
    cluster.create::<Pod>(
        &app,
        json!({
            "metadata": {"name": "db-0", "labels": {"app": "db", "phoenix.dev/meshed": "true"}},
            "spec": {"nodeName": "phoenix-test-no-such-node", "serviceAccountName": "db",
                     "containers": [{"name": "db", "image": "registry.invalid/db:1"}]},
        }),
    );
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &app);
    cluster
        .run(pods.patch_status(
            "db-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "10.250.0.5",
                                            "podIPs": [{"ip": "10.250.0.5"}]}})),
        ))
        .unwrap();
    cluster.create::<Service>(
        &app,
        json!({
            "metadata": {"name": "db"},
            "spec": {"ports": [{"name": "pg", "port": 5432, "targetPort": 15432}]},
        }),
    );
    cluster.create::<EndpointSlice>(
        &app,
        json!({
            "metadata": {"name": "db-manual", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 15432, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.250.0.5"], "conditions": {"ready": true},
                           "targetRef": {"kind": "Pod", "namespace": app, "name": "db-0"}}],
        }),
    );

    let state = tempfile::tempdir().unwrap();
    let (cp, bound) = control_plane(&cluster, &cp_ns, state.path());
    let cp_admin: std::net::SocketAddr = bound["admin"].as_str().unwrap().parse().unwrap();

    // The proxy of `web` proves itself with a token for audience phoenix.
    let web = proxy(&bound, &cluster.token(&app, "web", "phoenix"), state.path());
    let admin = admin_of(&web);
    let upstream = format!("upstream/db.{app}:5432");
    let view = eventually(Duration::from_secs(60), "web receives db", || {
        let c = config(admin);
        c["config"]["resources"]
            .get(&upstream)
            .cloned()
            .map(|u| (c, u))
    });
    let (c, db) = view;
    assert_eq!(
        c["certificate"]["identity"],
        format!("spiffe://cluster.local/ns/{app}/sa/web"),
        "the certificate names the token's ServiceAccount"
    );
    assert_eq!(db["endpoints"][0]["address"], "10.250.0.5:4143");
    assert_eq!(
        db["endpoints"][0]["identity"],
        format!("spiffe://cluster.local/ns/{app}/sa/db")
    );

    // A TrafficPolicy gets its status conditions from the leader.
    let policies: Api<TrafficPolicy> = Api::namespaced(cluster.client.clone(), &app);
    let tp: TrafficPolicy = serde_json::from_value(json!({
        "apiVersion": "phoenix.dev/v1alpha1", "kind": "TrafficPolicy",
        "metadata": {"name": "db", "namespace": app},
        "spec": {"targetRef": {"kind": "Service", "name": "db"}, "allow": [{"serviceAccount": "web"}]},
    }))
    .unwrap();
    cluster
        .run(policies.create(&PostParams::default(), &tp))
        .unwrap();
    let conditions = eventually(Duration::from_secs(60), "policy status written", || {
        let p = cluster.run(policies.get("db")).ok()?;
        let c = p.status?.conditions;
        (c.len() == 2).then_some(c)
    });
    let by_type: BTreeMap<_, _> = conditions.iter().map(|c| (c.type_.as_str(), c)).collect();
    assert_eq!(by_type["Accepted"].status, "True");
    assert_eq!(by_type["ResolvedRefs"].status, "True");

    // A token for another audience gets no certificate, and is counted.
    let stranger = proxy(
        &bound,
        &cluster.token(&app, "web", "https://example.com"),
        state.path(),
    );
    eventually(
        Duration::from_secs(60),
        "the foreign-audience token refused",
        || {
            let text = get(cp_admin, "/metrics").1;
            text.lines()
                .any(|l| {
                    l.starts_with("control_certificates_total")
                        && (l.contains("invalid_token") || l.contains("wrong_audience"))
                })
                .then_some(())
        },
    );
    drop(stranger);

    // Deleting the Service removes it from the proxy's view.
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), &app);
    cluster
        .run(services.delete("db", &DeleteParams::default()))
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "db removed from web's view",
        || {
            config(admin)["config"]["resources"]
                .get(&upstream)
                .is_none()
                .then_some(())
        },
    );
    drop(web);
    drop(cp);
}

#[test]
#[ignore = "needs cluster"]
fn the_ca_root_survives_a_control_plane_restart() {
    let mut cluster = Cluster::connect();
    cluster.apply_crds();
    let cp_ns = cluster.namespace("phoenix-test-cp");
    let state = tempfile::tempdir().unwrap();
    let (cp, first) = control_plane(&cluster, &cp_ns, state.path());
    let root = std::fs::read_to_string(first["trustAnchor"].as_str().unwrap()).unwrap();
    drop(cp);
    let again = tempfile::tempdir().unwrap();
    let (_cp, second) = control_plane(&cluster, &cp_ns, again.path());
    let reloaded = std::fs::read_to_string(second["trustAnchor"].as_str().unwrap()).unwrap();
    assert_eq!(root, reloaded, "the root comes back from the Secret");
}

/// The install, as a user runs it: both charts with the real helm, then the
/// webhook injecting a dry-run pod of a labelled namespace, then `phoenix
/// check` passing. The images must be pullable by the cluster: set
/// `PHOENIX_TEST_IMAGE_REPO` (e.g. `localhost:5001/phoenix-mesh`, holding
/// `phoenix-control-plane` and `phoenix-proxy`) and `PHOENIX_TEST_IMAGE_TAG`.
/// It installs the cluster-wide webhook configuration
/// `phoenix-proxy-injector`, so use a test cluster; it uninstalls at the end.
#[test]
#[ignore = "needs cluster"]
fn helm_install_injects_pods_and_phoenix_check_passes() {
    let mut cluster = Cluster::connect();
    let repo = std::env::var("PHOENIX_TEST_IMAGE_REPO")
        .expect("set PHOENIX_TEST_IMAGE_REPO to where the cluster pulls Phoenix images from");
    let tag = std::env::var("PHOENIX_TEST_IMAGE_TAG").unwrap_or_else(|_| "0.1.0".into());
    let system = cluster.namespace("phoenix-test-system");
    let app = cluster.namespace("phoenix-test-app");
    let helm = std::env::var_os("PHOENIX_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/helm/helm")
        });
    let charts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("charts");
    let run = |cmd: &mut Command| harness::run_ok(cmd.env("KUBECONFIG", &cluster.kubeconfig));
    run(Command::new(&helm)
        .args(["upgrade", "--install", "phoenix-crds"])
        .arg(charts.join("phoenix-crds"))
        .args(["--wait"]));
    run(Command::new(&helm)
        .args(["install", "phoenix"])
        .arg(charts.join("phoenix"))
        .args(["--namespace", &system, "--wait", "--timeout", "5m"])
        .args([
            "--set",
            &format!("controlPlaneImage={repo}/phoenix-control-plane"),
        ])
        .args(["--set", &format!("proxyImage={repo}/phoenix-proxy")])
        .args(["--set", &format!("imageTag={tag}")]));
    // The leader fills in the webhook's caBundle.
    eventually(Duration::from_secs(60), "caBundle set", || {
        let api: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
            Api::all(cluster.client.clone());
        let c = cluster.run(api.get("phoenix-proxy-injector")).ok()?;
        c.webhooks?[0]
            .client_config
            .ca_bundle
            .clone()
            .filter(|b| !b.0.is_empty())
    });
    // A labelled namespace: the API server calls the webhook for a
    // server-side dry run, and the pod comes back injected.
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    cluster
        .run(namespaces.patch(
            &app,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"phoenix.dev/inject": "enabled"}}})),
        ))
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &app);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "web", "image": "nginx"}]},
    }))
    .unwrap();
    let injected = cluster
        .run(pods.create(
            &PostParams {
                dry_run: true,
                ..PostParams::default()
            },
            &pod,
        ))
        .unwrap();
    let init: Vec<String> = injected
        .spec
        .unwrap()
        .init_containers
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(init, ["phoenix-init", "phoenix-proxy"]);
    let check = Command::new(bin("phoenix"))
        .args(["check", "-n", &system])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "phoenix check failed:\n{}",
        String::from_utf8_lossy(&check.stdout)
    );
    run(Command::new(&helm).args(["uninstall", "phoenix", "--namespace", &system]));
}

/// The cluster as the Kubernetes-mode traffic test's API: real objects,
/// real TokenRequest tokens, ClusterIPs the API server allocates.
impl service_traffic::MeshApi for Cluster {
    fn namespace(&mut self, base: &str) -> String {
        Cluster::namespace(self, &format!("phoenix-test-{base}"))
    }

    fn apply(&mut self, obj: serde_json::Value) -> serde_json::Value {
        use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
        let api_version = obj["apiVersion"].as_str().unwrap().to_owned();
        let kind = obj["kind"].as_str().unwrap().to_owned();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &kind));
        let ns = obj["metadata"]["namespace"].as_str().unwrap().to_owned();
        let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &ns, &resource);
        let mut body = obj.clone();
        if kind == "Service" {
            // The API server allocates ClusterIPs from its own range.
            let spec = body["spec"].as_object_mut().unwrap();
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
        if kind == "Pod" {
            // Set through the status subresource below: no kubelet runs it.
            body.as_object_mut().unwrap().remove("status");
            if let Ok(sa) = obj["spec"]["serviceAccountName"].as_str().ok_or(()) {
                let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &ns);
                let account: ServiceAccount =
                    serde_json::from_value(json!({"metadata": {"name": sa}})).unwrap();
                let _ = self.run(sas.create(&PostParams::default(), &account));
            }
        }
        let dynamic: DynamicObject = serde_json::from_value(body).unwrap();
        let mut stored = self
            .run(api.create(&PostParams::default(), &dynamic))
            .unwrap();
        if kind == "Pod" {
            stored = self
                .run(api.patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": obj["status"]})),
                ))
                .unwrap();
        }
        serde_json::to_value(stored).unwrap()
    }

    fn token(&mut self, namespace: &str, service_account: &str) -> String {
        Cluster::token(self, namespace, service_account, "phoenix")
    }

    fn kubeconfig(&self, _dir: &std::path::Path) -> (PathBuf, std::net::SocketAddr) {
        let kc = Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let current = kc.current_context.clone().unwrap();
        let context = kc.contexts.iter().find(|c| c.name == current).unwrap();
        let cluster_name = context.context.as_ref().unwrap().cluster.clone();
        let cluster = kc.clusters.iter().find(|c| c.name == cluster_name).unwrap();
        let server = cluster.cluster.as_ref().unwrap().server.clone().unwrap();
        let authority = server
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let addr: std::net::SocketAddr = authority.parse().unwrap_or_else(|_| {
            panic!("the traffic test forwards the API server into the node namespace: it must be on this machine's loopback as IP:port (kind, k3d), not {server}")
        });
        assert!(
            addr.ip().is_loopback(),
            "API server {addr} is not on loopback"
        );
        (self.kubeconfig.clone(), addr)
    }

    fn unexpected(&self) -> Vec<String> {
        Vec::new()
    }

    fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<serde_json::Value> {
        use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &resource);
        let obj = self.run(api.get_opt(name)).unwrap()?;
        Some(serde_json::to_value(obj).unwrap())
    }
}

/// Service traffic through proxies whose control plane reads a real API
/// server: the same test as tests/kubernetes_mode.rs runs on the stand-in.
/// Needs root (network namespaces) besides the cluster.
#[test]
#[ignore = "needs cluster"]
fn service_traffic_crosses_the_mesh_on_a_real_cluster() {
    netns::require_root();
    let mut cluster = Cluster::connect();
    cluster.apply_crds();
    cluster.apply_gateway_api_crds();
    service_traffic::service_traffic_crosses_the_mesh(
        &mut cluster,
        service_traffic::Identities::Classical,
    );
}
