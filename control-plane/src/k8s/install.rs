//! What `phoenix install` prints: the same objects as `helm template` of
//! `charts/phoenix-crds` and `charts/phoenix` with default values (a test
//! renders the charts with the real helm and compares). No Rust crate renders
//! Helm templates, so the two are written twice and kept as one truth by
//! that test. Neither renders a key: the control plane creates the CA root
//! Secret and fills in the webhook's `caBundle` itself.

use serde_json::{Value, json};

use super::rbac;
use crate::inject;

/// Chart values `phoenix install` renders with (the chart's defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Values {
    /// The release namespace.
    pub namespace: String,
    /// Image tag of both images (the Phoenix version).
    pub version: String,
    /// Control-plane image repository.
    pub control_plane_image: String,
    /// Proxy image repository (what the injector puts in pods).
    pub proxy_image: String,
    /// Control-plane replicas.
    pub replicas: u32,
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// `Fail` or `Ignore`.
    pub failure_policy: String,
}

impl Default for Values {
    fn default() -> Self {
        Self {
            namespace: "phoenix-system".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            control_plane_image: "ghcr.io/phoenix-mesh/phoenix-control-plane".into(),
            proxy_image: "ghcr.io/phoenix-mesh/phoenix-proxy".into(),
            replicas: 2,
            trust_domain: "cluster.local".into(),
            failure_policy: "Fail".into(),
        }
    }
}

/// The control plane's Service, Deployment and webhook name.
pub const NAME: &str = rbac::NAME;
/// The webhook configuration's name.
pub const WEBHOOK_CONFIG: &str = "phoenix-proxy-injector";
/// UID the control plane runs as.
pub const CONTROL_PLANE_UID: i64 = 2103;

fn labels(v: &Values) -> Value {
    json!({
        "app.kubernetes.io/name": NAME,
        "app.kubernetes.io/part-of": "phoenix",
        "app.kubernetes.io/version": v.version,
    })
}

/// The CRDs (`charts/phoenix-crds`).
pub fn crds() -> Vec<Value> {
    crate::crd::all()
        .into_iter()
        .filter_map(|c| serde_json::to_value(c).ok())
        .collect()
}

/// The control plane (`charts/phoenix`).
pub fn control_plane(v: &Values) -> Vec<Value> {
    let ns = v.namespace.as_str();
    let mut out: Vec<Value> = rbac::objects(ns)
        .into_iter()
        .filter_map(|o| serde_json::to_value(o).ok())
        .collect();
    let selector = json!({"app.kubernetes.io/name": NAME});
    out.push(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": NAME, "namespace": ns, "labels": labels(v)},
        "spec": {
            "selector": selector,
            "ports": [
                {"name": "control", "port": 4180, "targetPort": 4180, "protocol": "UDP"},
                {"name": "webhook", "port": 443, "targetPort": 9443, "protocol": "TCP"},
                {"name": "admin", "port": 9990, "targetPort": 9990, "protocol": "TCP"},
            ],
        },
    }));
    let env = |name: &str, value: &str| json!({"name": name, "value": value});
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let probe = |path: &str| json!({"httpGet": {"path": path, "port": 9990}, "periodSeconds": 10});
    out.push(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": ns, "labels": labels(v)},
        "spec": {
            "replicas": v.replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": labels(v),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": "9990",
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "serviceAccountName": NAME,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": CONTROL_PLANE_UID, "runAsGroup": CONTROL_PLANE_UID, "seccompProfile": {"type": "RuntimeDefault"}},
                    // Replicas on different nodes where there are several.
                    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                        "weight": 100,
                        "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": selector}},
                    }]}},
                    "containers": [{
                        "name": NAME,
                        "image": format!("{}:{}", v.control_plane_image, v.version),
                        "imagePullPolicy": "IfNotPresent",
                        "args": ["kubernetes"],
                        "env": [
                            field("PHOENIX_NAMESPACE", "metadata.namespace"),
                            field("POD_NAME", "metadata.name"),
                            env("PHOENIX_TRUST_DOMAIN", &v.trust_domain),
                            env("PHOENIX_PROXY_IMAGE", &format!("{}:{}", v.proxy_image, v.version)),
                            env("PHOENIX_WEBHOOK_CONFIG", WEBHOOK_CONFIG),
                            env("PHOENIX_LOG_FORMAT", "json"),
                        ],
                        "ports": [
                            {"name": "control", "containerPort": 4180, "protocol": "UDP"},
                            {"name": "webhook", "containerPort": 9443, "protocol": "TCP"},
                            {"name": "admin", "containerPort": 9990, "protocol": "TCP"},
                        ],
                        "readinessProbe": probe("/ready"),
                        "livenessProbe": probe("/live"),
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [{"name": "state", "mountPath": "/var/run/phoenix"}],
                    }],
                    "volumes": [{"name": "state", "emptyDir": {}}],
                },
            },
        },
    }));
    if v.replicas > 1 {
        // One stays up through node drains: with failurePolicy Fail,
        // meshed namespaces admit no pod while none is.
        out.push(json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": NAME, "namespace": ns, "labels": labels(v)},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": selector}},
        }));
    }
    // Three entries; the API server picks by labels as it admits the pod
    // (see the chart's webhook.yaml). Never the control plane's own
    // namespace (its pods must start when the webhook is down) nor the
    // system's. The annotation catch-all is Ignore: failing closed there
    // would stop every pod of the cluster while the control plane is down.
    let entry = |name: &str,
                 path: &str,
                 policy: &str,
                 ns: (&str, &[&str]),
                 pod: (&str, &[&str])| {
        json!({
            "name": name,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": policy,
            "reinvocationPolicy": "Never",
            "timeoutSeconds": 10,
            "clientConfig": {"service": {"name": NAME, "namespace": v.namespace, "path": path, "port": 443}},
            "rules": [{
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }],
            "namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "kube-node-lease", v.namespace]},
                {"key": inject::INJECT, "operator": ns.0, "values": ns.1},
            ]},
            "objectSelector": {"matchExpressions": [
                {"key": inject::INJECT, "operator": pod.0, "values": pod.1},
            ]},
        })
    };
    let asked_nothing: (&str, &[&str]) = ("NotIn", &["enabled", "disabled"]);
    out.push(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_CONFIG, "labels": labels(v)},
        "webhooks": [
            entry("namespace.inject.phoenix.dev", super::webhook::NAMESPACE_PATH, &v.failure_policy, ("In", &["enabled"]), ("NotIn", &["disabled"])),
            entry("pod.inject.phoenix.dev", super::webhook::PATH, &v.failure_policy, asked_nothing, ("In", &["enabled"])),
            entry("inject.phoenix.dev", super::webhook::PATH, "Ignore", asked_nothing, asked_nothing),
        ],
    }));
    out.push(json!({
        "apiVersion": "phoenix.dev/v1alpha1",
        "kind": "MeshConfig",
        "metadata": {"name": "default", "labels": labels(v)},
        "spec": {"trustDomain": v.trust_domain},
    }));
    out
}

/// Every object as multi-document YAML, CRDs first (what `kubectl apply`
/// must create before the MeshConfig).
pub fn to_yaml(objects: &[Value]) -> Result<String, serde_saphyr::SerializeError> {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(o)?);
    }
    Ok(out)
}
