//! `phoenix check`: what a platform engineer asks before and after
//! installing, answered from the cluster, each answer with the fix.
//!
//! Pre-install: the API server answers, is new enough for native sidecars,
//! and the user may create what the install creates. Post-install: the CRDs,
//! the control plane, the webhook (configured, and injecting a dry-run pod),
//! the MeshConfig (a warning while `permissive`), and every meshed proxy:
//! ready, which key-exchange groups its handshakes used, and whether
//! handshakes time out, and whether NetworkPolicies open UDP 4143 to and
//! from meshed pods (a policy written for the app's TCP port silently breaks
//! QUIC; see [`super::network_policy`]).

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{ListParams, PostParams};

use super::install::{NAME, WEBHOOK_CONFIG};
use crate::crd::MeshConfig;
use crate::crd::mesh_config::{IdentityAlgorithmName, InboundMode};
use crate::inject;

/// The control plane's QUIC port (proxies subscribe there).
const CONTROL_PORT: u16 = 4180;
/// Oldest Kubernetes with native sidecars on by default.
pub const MIN_MINOR: u32 = 29;
/// Meshed pods whose metrics are read (the first ones listed).
const MAX_PROXIES_SCRAPED: usize = 50;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but look at it.
    Warn,
    /// Broken.
    Fail,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    /// The group it belongs to (printed as a heading).
    pub group: &'static str,
    /// What was checked, as a statement that holds when it passes.
    pub check: String,
    /// How it came out.
    pub status: Status,
    /// What was found, or what to do.
    pub detail: String,
}

/// The checks' outcomes.
#[derive(Debug, Default)]
pub struct Report {
    /// In the order they ran.
    pub outcomes: Vec<Outcome>,
}

impl Report {
    fn push(&mut self, group: &'static str, check: &str, status: Status, detail: String) {
        self.outcomes.push(Outcome {
            group,
            check: check.to_owned(),
            status,
            detail,
        });
    }

    /// Whether any check failed.
    pub fn failed(&self) -> bool {
        self.outcomes.iter().any(|o| o.status == Status::Fail)
    }

    /// The report as Linkerd prints its checks.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut group = "";
        for o in &self.outcomes {
            if o.group != group {
                group = o.group;
                out.push_str(&format!("\n{group}\n{}\n", "-".repeat(group.len())));
            }
            let mark = match o.status {
                Status::Ok => "√",
                Status::Warn => "‼",
                Status::Fail => "×",
            };
            out.push_str(&format!("{mark} {}\n", o.check));
            if !o.detail.is_empty() {
                out.push_str(&format!("    {}\n", o.detail));
            }
        }
        let verdict = if self.failed() {
            "Status check results are ×"
        } else {
            "Status check results are √"
        };
        out.push_str(&format!("\n{verdict}\n"));
        out
    }
}

/// The minor version from `minor` as the API server reports it (`"33"`,
/// `"33+"` on some providers).
pub fn minor(minor: &str) -> Option<u32> {
    minor.trim_end_matches('+').parse().ok()
}

/// What a proxy's handshake metrics say.
#[derive(Debug, Default, PartialEq)]
pub struct Handshakes {
    /// Successful handshakes by key-exchange group.
    pub groups: BTreeMap<String, f64>,
    /// Successful handshakes by the signature scheme that authenticated the
    /// peer (`none`: an anonymous client, which tunnels never accept).
    pub schemes: BTreeMap<String, f64>,
    /// Handshakes that timed out.
    pub timeouts: f64,
}

/// Handshake counts by key-exchange group and signature scheme, and
/// handshake timeouts, from a proxy's OpenMetrics text.
pub fn handshakes(metrics: &str) -> Handshakes {
    let mut out = Handshakes::default();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = name_labels.split_once('{').unwrap_or((name_labels, ""));
        let label = |key: &str| {
            labels
                .trim_end_matches('}')
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
        };
        match name {
            "tls_handshakes_total" if label("result").as_deref() == Some("success") => {
                if let Some(g) = label("kx_group") {
                    *out.groups.entry(g).or_insert(0.0) += value;
                }
                if let Some(s) = label("sig_scheme").filter(|s| s != "none") {
                    *out.schemes.entry(s).or_insert(0.0) += value;
                }
            }
            "tls_handshake_failures_total" if label("reason").as_deref() == Some("timeout") => {
                out.timeouts += value;
            }
            _ => {}
        }
    }
    out
}

/// Runs the checks against `client`: pre-install ones only with `pre`.
pub async fn run(client: kube::Client, namespace: &str, pre: bool) -> Report {
    let mut r = Report::default();
    const API: &str = "kubernetes-api";
    match client.apiserver_version().await {
        Ok(v) => {
            r.push(
                API,
                "can reach the Kubernetes API",
                Status::Ok,
                v.git_version.clone(),
            );
            match minor(&v.minor) {
                Some(m) if v.major == "1" && m >= MIN_MINOR => r.push(
                    API,
                    "Kubernetes has native sidecars",
                    Status::Ok,
                    String::new(),
                ),
                _ => r.push(
                    API,
                    "Kubernetes has native sidecars",
                    Status::Fail,
                    format!(
                        "{} is older than 1.{MIN_MINOR}: the proxy runs as a native sidecar (an init container with restartPolicy: Always); upgrade the cluster",
                        v.git_version
                    ),
                ),
            }
        }
        Err(error) => {
            r.push(
                API,
                "can reach the Kubernetes API",
                Status::Fail,
                format!("{error}; check KUBECONFIG and the current context"),
            );
            return r;
        }
    }
    if pre {
        for (group, resource, what) in [
            (
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                "the CRDs",
            ),
            (
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                "the injection webhook",
            ),
            ("rbac.authorization.k8s.io", "clusterroles", "the RBAC"),
        ] {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        group: Some(group.to_owned()),
                        resource: Some(resource.to_owned()),
                        verb: Some("create".to_owned()),
                        ..ResourceAttributes::default()
                    }),
                    ..SelfSubjectAccessReviewSpec::default()
                },
                ..SelfSubjectAccessReview::default()
            };
            let check = format!("can create {what}");
            let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
            match api.create(&PostParams::default(), &review).await {
                Ok(r2) if r2.status.as_ref().is_some_and(|s| s.allowed) => {
                    r.push("pre-install", &check, Status::Ok, String::new())
                }
                Ok(_) => r.push(
                    "pre-install",
                    &check,
                    Status::Fail,
                    format!("not allowed to create {resource}: install as a cluster admin"),
                ),
                Err(error) => r.push("pre-install", &check, Status::Fail, error.to_string()),
            }
        }
        return r;
    }
    post_install(&client, namespace, &mut r).await;
    r
}

async fn post_install(client: &kube::Client, namespace: &str, r: &mut Report) {
    const CP: &str = "phoenix-control-plane";
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut missing = Vec::new();
    for name in ["meshconfigs.phoenix.dev", "trafficpolicies.phoenix.dev"] {
        match crds.get_opt(name).await {
            Ok(Some(_)) => {}
            Ok(None) => missing.push(name),
            Err(error) => {
                r.push(
                    CP,
                    "the CRDs are installed",
                    Status::Fail,
                    error.to_string(),
                );
                return;
            }
        }
    }
    if missing.is_empty() {
        r.push(CP, "the CRDs are installed", Status::Ok, String::new());
    } else {
        r.push(
            CP,
            "the CRDs are installed",
            Status::Fail,
            format!(
                "missing {}: helm install phoenix-crds charts/phoenix-crds (or phoenix install --crds-only | kubectl apply -f -)",
                missing.join(", ")
            ),
        );
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    match deployments.get_opt(NAME).await {
        Ok(Some(d)) => {
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let ready = d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
            let (status, detail) = match ready {
                0 => (
                    Status::Fail,
                    format!("no replica is ready: kubectl -n {namespace} logs deploy/{NAME}"),
                ),
                n if n < want => (Status::Warn, format!("{n} of {want} replicas ready")),
                n => (Status::Ok, format!("{n} of {want} replicas ready")),
            };
            r.push(CP, "the control plane is ready", status, detail);
        }
        Ok(None) => r.push(
            CP,
            "the control plane is ready",
            Status::Fail,
            format!(
                "no Deployment {namespace}/{NAME}: helm install phoenix charts/phoenix -n {namespace}"
            ),
        ),
        Err(error) => r.push(
            CP,
            "the control plane is ready",
            Status::Fail,
            error.to_string(),
        ),
    }
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    match configs.get_opt(WEBHOOK_CONFIG).await {
        Ok(Some(c)) => {
            let hooks = c.webhooks.unwrap_or_default();
            let bundled = !hooks.is_empty()
                && hooks.iter().all(|h| {
                    h.client_config
                        .ca_bundle
                        .as_ref()
                        .is_some_and(|b| !b.0.is_empty())
                });
            if bundled {
                r.push(
                    CP,
                    "the injection webhook is configured",
                    Status::Ok,
                    String::new(),
                );
            } else {
                r.push(
                    CP,
                    "the injection webhook is configured",
                    Status::Fail,
                    "its caBundle is empty: the control plane's leader fills it in; check its logs"
                        .into(),
                );
            }
        }
        Ok(None) => r.push(
            CP,
            "the injection webhook is configured",
            Status::Fail,
            format!("no MutatingWebhookConfiguration {WEBHOOK_CONFIG}: install the phoenix chart"),
        ),
        Err(error) => r.push(
            CP,
            "the injection webhook is configured",
            Status::Fail,
            error.to_string(),
        ),
    }
    webhook_dry_run(client, r).await;
    let identities = mesh_config(client, r).await;
    proxies(client, identities, r).await;
    routes(client, r).await;
}

/// Gateway API routes parented to Services: the CRDs (optional: routes
/// are off without them), and every route whose Phoenix status is not
/// `Accepted` and `ResolvedRefs`, with the control plane's message.
async fn routes(client: &kube::Client, r: &mut Report) {
    const ROUTES: &str = "routes";
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut missing = Vec::new();
    let mut old = Vec::new();
    // The versions the control plane watches (every release since v1.1).
    for (name, version) in [
        ("httproutes.gateway.networking.k8s.io", "v1"),
        ("grpcroutes.gateway.networking.k8s.io", "v1"),
        ("referencegrants.gateway.networking.k8s.io", "v1beta1"),
    ] {
        match crds.get_opt(name).await {
            Ok(Some(crd)) => {
                if !crd
                    .spec
                    .versions
                    .iter()
                    .any(|v| v.name == version && v.served)
                {
                    old.push(format!("{name} does not serve {version}"));
                }
            }
            Ok(None) => missing.push(name),
            Err(error) => {
                r.push(
                    ROUTES,
                    "the Gateway API CRDs are installed",
                    Status::Fail,
                    error.to_string(),
                );
                return;
            }
        }
    }
    if !missing.is_empty() {
        r.push(
            ROUTES,
            "the Gateway API CRDs are installed",
            Status::Warn,
            format!(
                "missing {}: HTTPRoute and GRPCRoute are off; install Gateway API v1.5.1 (kubectl apply --server-side -f https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.5.1/standard-install.yaml, or experimental-install.yaml for retry)",
                missing.join(", ")
            ),
        );
        return;
    }
    if !old.is_empty() {
        r.push(
            ROUTES,
            "the Gateway API CRDs are installed",
            Status::Fail,
            format!(
                "{}, the version Phoenix watches: install Gateway API v1.5.1 (kubectl apply --server-side -f https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.5.1/standard-install.yaml)",
                old.join(", ")
            ),
        );
        return;
    }
    r.push(
        ROUTES,
        "the Gateway API CRDs are installed",
        Status::Ok,
        String::new(),
    );
    let mut problems = Vec::new();
    let mut seen = 0;
    for kind in ["HTTPRoute", "GRPCRoute"] {
        let resource = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            super::routes::GATEWAY_GROUP,
            "v1",
            kind,
        ));
        let api: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &resource);
        let list = match api.list(&ListParams::default()).await {
            Ok(l) => l,
            Err(error) => {
                r.push(
                    ROUTES,
                    "every mesh route is accepted",
                    Status::Fail,
                    error.to_string(),
                );
                return;
            }
        };
        for route in list.items {
            let name = format!(
                "{kind} {}/{}",
                route.metadata.namespace.as_deref().unwrap_or_default(),
                route.metadata.name.as_deref().unwrap_or_default()
            );
            problems.extend(route_problems(&name, &route.data));
            if mesh_parented(&route.data) {
                seen += 1;
            }
        }
    }
    if problems.is_empty() {
        r.push(
            ROUTES,
            "every mesh route is accepted",
            Status::Ok,
            format!("{seen} routes parented to Services"),
        );
    } else {
        r.push(
            ROUTES,
            "every mesh route is accepted",
            Status::Fail,
            problems.join("; "),
        );
    }
}

/// Whether a route names a Service among its parents (a mesh route).
fn mesh_parented(data: &serde_json::Value) -> bool {
    data["spec"]["parentRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p["kind"] == "Service" && p["group"].as_str().unwrap_or_default().is_empty())
}

/// What is wrong with one mesh route, from the conditions Phoenix wrote.
fn route_problems(name: &str, data: &serde_json::Value) -> Vec<String> {
    if !mesh_parented(data) {
        return Vec::new();
    }
    let ours: Vec<&serde_json::Value> = data["status"]["parents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["controllerName"] == super::routes::CONTROLLER_NAME)
        .collect();
    if ours.is_empty() {
        return vec![format!(
            "{name} has no status from Phoenix yet: is the control plane's leader running? (kubectl -n phoenix-system logs deploy/{NAME})"
        )];
    }
    ours.iter()
        .flat_map(|p| p["conditions"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["status"] != "True")
        .map(|c| {
            format!(
                "{name}: {} {} ({})",
                c["type"].as_str().unwrap_or_default(),
                c["reason"].as_str().unwrap_or_default(),
                c["message"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// The webhook, called by the API server for a dry-run pod that asks for
/// injection: reachable and injecting.
async fn webhook_dry_run(client: &kube::Client, r: &mut Report) {
    const CHECK: &str = "the webhook injects pods (server-side dry run)";
    let pod: Pod = match serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        // The label: the form whose webhook entry fails closed, so an
        // unreachable webhook shows as the API server's error.
        "metadata": {"generateName": "phoenix-check-", "labels": {inject::INJECT: "enabled"}},
        "spec": {"containers": [{"name": "check", "image": "phoenix-check"}]},
    })) {
        Ok(p) => p,
        Err(error) => {
            return r.push(
                "phoenix-control-plane",
                CHECK,
                Status::Fail,
                error.to_string(),
            );
        }
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    match pods.create(&params, &pod).await {
        Ok(created) => {
            let injected = created
                .spec
                .and_then(|s| s.init_containers)
                .is_some_and(|c| c.iter().any(|c| c.name == inject::PROXY_CONTAINER));
            if injected {
                r.push("phoenix-control-plane", CHECK, Status::Ok, String::new());
            } else {
                r.push(
                    "phoenix-control-plane",
                    CHECK,
                    Status::Fail,
                    "the pod came back without phoenix-proxy: is the namespace `default` labelled phoenix.dev/inject=disabled, or the webhook's failurePolicy Ignore with the webhook down?".into(),
                );
            }
        }
        Err(error) => r.push(
            "phoenix-control-plane",
            CHECK,
            Status::Fail,
            format!("{error}: the API server cannot call the webhook (Service, port 443 → 9443, NetworkPolicy)"),
        ),
    }
}

/// Checks the MeshConfig; returns the identity algorithm it asks for.
async fn mesh_config(client: &kube::Client, r: &mut Report) -> IdentityAlgorithmName {
    const MESH: &str = "mesh";
    let configs: Api<MeshConfig> = Api::all(client.clone());
    let found = configs.get_opt("default").await;
    let identities = match &found {
        Ok(Some(mc)) => mc.spec.identity_algorithm,
        _ => IdentityAlgorithmName::default(),
    };
    match found {
        Ok(Some(mc)) => match mc.spec.inbound_mode {
            InboundMode::Strict => r.push(
                MESH,
                "inbound mode is strict",
                Status::Ok,
                "plain TCP from outside the mesh is refused".into(),
            ),
            InboundMode::Permissive => r.push(
                MESH,
                "inbound mode is strict",
                Status::Warn,
                "permissive: plain TCP from outside the mesh reaches meshed apps (counted in tcp_plaintext_total); set inboundMode: strict in MeshConfig default once every client is meshed".into(),
            ),
        },
        Ok(None) => r.push(
            MESH,
            "MeshConfig default exists",
            Status::Warn,
            "absent: defaults apply (pq-only, permissive); kubectl apply -f manifests/examples/meshconfig.yaml".into(),
        ),
        Err(error) => r.push(MESH, "MeshConfig default exists", Status::Fail, error.to_string()),
    }
    identities
}

async fn proxies(client: &kube::Client, identities: IdentityAlgorithmName, r: &mut Report) {
    const DP: &str = "phoenix-data-plane";
    let pods: Api<Pod> = Api::all(client.clone());
    let list = match pods
        .list(&ListParams::default().labels(&format!("{}=true", inject::MESHED_LABEL)))
        .await
    {
        Ok(l) => l.items,
        Err(error) => {
            return r.push(
                DP,
                "meshed pods are listed",
                Status::Fail,
                error.to_string(),
            );
        }
    };
    let not_ready: Vec<String> = list
        .iter()
        .filter(|p| {
            !p.status
                .as_ref()
                .and_then(|s| s.init_container_statuses.as_ref())
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c.name == inject::PROXY_CONTAINER && c.ready)
                })
        })
        .filter_map(|p| {
            Some(format!(
                "{}/{}",
                p.metadata.namespace.as_deref()?,
                p.metadata.name.as_deref()?
            ))
        })
        .collect();
    if not_ready.is_empty() {
        r.push(
            DP,
            "every proxy is ready",
            Status::Ok,
            format!("{} meshed pods", list.len()),
        );
    } else {
        r.push(
            DP,
            "every proxy is ready",
            Status::Fail,
            format!(
                "not ready: {} (kubectl logs <pod> -c phoenix-proxy)",
                not_ready.join(", ")
            ),
        );
    }
    network_policies(client, &list, r).await;
    udp_services(client, &list, r).await;
    let mut groups: BTreeMap<String, f64> = BTreeMap::new();
    let mut schemes: BTreeMap<String, f64> = BTreeMap::new();
    let mut timeouts = 0.0;
    let mut unreadable = 0;
    for p in list.iter().take(MAX_PROXIES_SCRAPED) {
        let (Some(ns), Some(name)) = (p.metadata.namespace.as_deref(), p.metadata.name.as_deref())
        else {
            continue;
        };
        let path = format!(
            "/api/v1/namespaces/{ns}/pods/{name}:{}/proxy/metrics",
            inject::ADMIN_PORT
        );
        let text = match http::Request::get(path).body(Vec::new()) {
            Ok(req) => client.request_text(req).await.ok(),
            Err(_) => None,
        };
        let Some(text) = text else {
            unreadable += 1;
            continue;
        };
        let h = handshakes(&text);
        for (k, v) in h.groups {
            *groups.entry(k).or_insert(0.0) += v;
        }
        for (k, v) in h.schemes {
            *schemes.entry(k).or_insert(0.0) += v;
        }
        timeouts += h.timeouts;
    }
    let summary = groups
        .iter()
        .map(|(g, n)| format!("{g}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let classic = groups
        .iter()
        .any(|(g, n)| g != "X25519MLKEM768" && *n > 0.0);
    r.push(
        DP,
        "proxies' handshakes are post-quantum (X25519MLKEM768)",
        if classic { Status::Warn } else { Status::Ok },
        if unreadable > 0 {
            format!("{summary} ({unreadable} proxies' metrics unreadable)")
        } else {
            summary
        },
    );
    let classical: f64 = schemes
        .iter()
        .filter(|(s, _)| !s.starts_with("ML_DSA"))
        .map(|(_, n)| n)
        .sum();
    let detail = schemes
        .iter()
        .map(|(s, n)| format!("{s}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    match identities {
        IdentityAlgorithmName::MlDsa65 => r.push(
            DP,
            "proxies authenticate with ML-DSA (post-quantum signatures)",
            if classical > 0.0 { Status::Warn } else { Status::Ok },
            if classical > 0.0 {
                format!(
                    "{detail}: some peers still authenticate classically; they re-key once an ML-DSA root signs (phoenix-control-plane rotate-ca), and a proxy restart resets these counts"
                )
            } else {
                detail
            },
        ),
        IdentityAlgorithmName::EcdsaP256 => r.push(
            DP,
            "proxies' handshake signatures",
            Status::Ok,
            format!(
                "{detail} (identityAlgorithm ecdsa-p256: set ml-dsa-65 in MeshConfig default and rotate-ca for post-quantum authentication)"
            ),
        ),
    }
    r.push(
        DP,
        "proxies reach each other over UDP",
        if timeouts > 0.0 { Status::Warn } else { Status::Ok },
        if timeouts > 0.0 {
            format!(
                "{timeouts} handshakes timed out: a NetworkPolicy or firewall may allow TCP but not UDP {}; allow it between meshed pods",
                inject::QUIC_PORT
            )
        } else {
            String::new()
        },
    );
}

/// UDP ports of Services in namespaces with meshed pods: the mesh carries
/// UDP only through explicit listeners so far (not intercepted), so UDP
/// between pods passes in clear and outside `inboundMode`. Said, never
/// silent.
async fn udp_services(client: &kube::Client, meshed: &[Pod], r: &mut Report) {
    const CHECK: &str = "no UDP Service port of a meshed namespace passes in clear";
    let namespaces: std::collections::BTreeSet<&str> = meshed
        .iter()
        .filter_map(|p| p.metadata.namespace.as_deref())
        .collect();
    let services: Api<Service> = Api::all(client.clone());
    let list = match services.list(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(error) => {
            return r.push(
                "phoenix-data-plane",
                CHECK,
                Status::Warn,
                format!("cannot list Services ({error}); look for UDP ports by hand"),
            );
        }
    };
    let udp: Vec<String> = list
        .iter()
        .filter(|s| {
            s.metadata
                .namespace
                .as_deref()
                .is_some_and(|ns| namespaces.contains(ns))
        })
        .flat_map(|s| {
            let name = format!(
                "{}/{}",
                s.metadata.namespace.as_deref().unwrap_or_default(),
                s.metadata.name.as_deref().unwrap_or_default()
            );
            s.spec
                .iter()
                .flat_map(|spec| spec.ports.iter().flatten())
                .filter(|p| p.protocol.as_deref() == Some("UDP"))
                .map(move |p| format!("{name}:{}/UDP", p.port))
        })
        .collect();
    if udp.is_empty() {
        return r.push("phoenix-data-plane", CHECK, Status::Ok, String::new());
    }
    let more = udp.len().saturating_sub(5);
    r.push(
        "phoenix-data-plane",
        CHECK,
        Status::Warn,
        format!(
            "{}{}: the mesh does not intercept UDP yet, so these ports pass between pods in clear and outside inboundMode (TCP and HTTP are meshed); keep secrets off them, or reach them through a `transport: udp` upstream of a mesh file",
            udp[..udp.len().min(5)].join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() },
        ),
    );
}

/// NetworkPolicies that open some traffic to or from meshed pods but not
/// the proxies' UDP port.
async fn network_policies(client: &kube::Client, meshed: &[Pod], r: &mut Report) {
    const CHECK: &str = "NetworkPolicies let proxies reach each other (UDP 4143)";
    let policies: Api<NetworkPolicy> = Api::all(client.clone());
    let list = match policies.list(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(error) => {
            return r.push(
                "phoenix-data-plane",
                CHECK,
                Status::Warn,
                format!(
                    "cannot list NetworkPolicies ({error}); check them for UDP {} by hand",
                    inject::QUIC_PORT
                ),
            );
        }
    };
    let blocked = super::network_policy::blocked(
        &list,
        meshed,
        inject::QUIC_PORT,
        "phoenix-quic",
        CONTROL_PORT,
    );
    if blocked.is_empty() {
        return r.push("phoenix-data-plane", CHECK, Status::Ok, String::new());
    }
    let shown: Vec<String> = blocked
        .iter()
        .take(5)
        .map(|b| {
            format!(
                "{} ({} UDP {}: {})",
                b.pod,
                b.direction.as_str(),
                b.port,
                b.policies.join(", ")
            )
        })
        .collect();
    let more = blocked.len().saturating_sub(shown.len());
    r.push(
        "phoenix-data-plane",
        CHECK,
        Status::Fail,
        format!(
            "{}{}: meshed traffic crosses as QUIC on UDP {quic} (and proxies subscribe to the control plane on UDP {CONTROL_PORT}), which these policies do not open; add `- protocol: UDP` with that port to their ports. Opening UDP {quic} to the peers they admit lets those peers reach every port of the pod the mesh serves (each still under its service's allow-list)",
            shown.join("; "),
            if more > 0 { format!(" and {more} more") } else { String::new() },
            quic = inject::QUIC_PORT,
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_metrics_are_read_as_providers_print_them() {
        assert_eq!(minor("33"), Some(33));
        assert_eq!(minor("28+"), Some(28));
        assert_eq!(minor("x"), None);
        let text = "# TYPE tls_handshakes counter\n\
            tls_handshakes_total{side=\"client\",kx_group=\"X25519MLKEM768\",sig_scheme=\"ML_DSA_65\",result=\"success\"} 7\n\
            tls_handshakes_total{side=\"server\",kx_group=\"X25519\",sig_scheme=\"ECDSA_NISTP256_SHA256\",result=\"success\"} 2\n\
            tls_handshakes_total{side=\"server\",kx_group=\"none\",result=\"failure\"} 4\n\
            tls_handshake_failures_total{side=\"client\",reason=\"timeout\"} 3\n\
            tls_handshake_failures_total{side=\"client\",reason=\"unknown_ca\"} 1\n";
        let Handshakes {
            groups,
            schemes,
            timeouts,
        } = handshakes(text);
        assert_eq!(groups.get("X25519MLKEM768"), Some(&7.0));
        assert_eq!(groups.get("X25519"), Some(&2.0));
        assert_eq!(groups.get("none"), None, "failures are not groups in use");
        assert_eq!(schemes.get("ML_DSA_65"), Some(&7.0));
        assert_eq!(schemes.get("ECDSA_NISTP256_SHA256"), Some(&2.0));
        assert_eq!(schemes.get("none"), None);
        assert_eq!(timeouts, 3.0);
    }
}
