//! The control plane's RBAC: exactly the calls it makes, one rule per need.
//!
//! `manifests/rbac/` is generated from these rules (a test fails when it
//! drifts), and the chart renders the same objects, so the permissions a
//! cluster grants are the ones listed here with the reason for each.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use kube::api::ObjectMeta;

/// Name of the control plane's ServiceAccount, roles and bindings.
pub const NAME: &str = "phoenix-control-plane";

/// One permission and why it is needed.
struct Rule {
    group: &'static str,
    resources: &'static [&'static str],
    /// Only these objects (empty: all of the kind).
    names: &'static [&'static str],
    verbs: &'static [&'static str],
    #[allow(dead_code)] // documentation kept beside the rule it explains
    why: &'static str,
}

/// Cluster-wide: what the watches and TokenReview need.
const CLUSTER_RULES: &[Rule] = &[
    Rule {
        group: "",
        resources: &["services", "pods", "namespaces"],
        names: &[],
        verbs: &["list", "watch"],
        why: "watches (k8s/watch.rs): Services, meshed Pods, namespace default policies",
    },
    Rule {
        group: "discovery.k8s.io",
        resources: &["endpointslices"],
        names: &[],
        verbs: &["list", "watch"],
        why: "watch of endpoints (k8s/watch.rs)",
    },
    Rule {
        group: "phoenix.dev",
        resources: &["meshconfigs", "trafficpolicies"],
        names: &[],
        verbs: &["get", "list", "watch"],
        why: "watch of Phoenix resources (k8s/watch.rs); get: MeshConfig default's identityAlgorithm for a root made at first start (k8s/run.rs)",
    },
    Rule {
        group: "phoenix.dev",
        resources: &["meshconfigs/status", "trafficpolicies/status"],
        names: &[],
        verbs: &["patch"],
        why: "Accepted/ResolvedRefs conditions, written by the leader (k8s/status.rs)",
    },
    Rule {
        group: "gateway.networking.k8s.io",
        resources: &["httproutes", "grpcroutes", "referencegrants"],
        names: &[],
        verbs: &["get", "list", "watch"],
        why: "watch of Gateway API routes and grants (k8s/watch.rs; GAMMA); get: a route's status as it is before Phoenix writes its own entries (k8s/status.rs)",
    },
    Rule {
        group: "gateway.networking.k8s.io",
        resources: &["httproutes/status", "grpcroutes/status"],
        names: &[],
        verbs: &["patch"],
        why: "routes' parents[] Accepted/ResolvedRefs conditions, written by the leader (k8s/status.rs)",
    },
    Rule {
        group: "admissionregistration.k8s.io",
        resources: &["mutatingwebhookconfigurations"],
        names: &["phoenix-proxy-injector"],
        verbs: &["get", "update"],
        why: "the injection webhook's caBundle, kept equal to the mesh roots (k8s/webhook_config.rs)",
    },
    Rule {
        group: "",
        resources: &["configmaps"],
        names: &[],
        verbs: &["get", "create", "update"],
        why: "the mesh roots in every namespace, for injected proxies to start from (k8s/trust_bundle.rs)",
    },
    Rule {
        group: "authentication.k8s.io",
        resources: &["tokenreviews"],
        names: &[],
        verbs: &["create"],
        why: "proxy identity from ServiceAccount tokens (k8s/token_review.rs)",
    },
];

/// In the control plane's namespace only.
const NAMESPACE_RULES: &[Rule] = &[
    Rule {
        group: "",
        resources: &["secrets"],
        names: &[],
        verbs: &["get", "create"],
        why: "the CA root Secret, created when absent (k8s/ca_secret.rs)",
    },
    Rule {
        group: "coordination.k8s.io",
        resources: &["leases"],
        names: &[],
        verbs: &["get", "create", "update"],
        why: "leader election among replicas (k8s/leader.rs)",
    },
];

fn rules(rules: &[Rule]) -> Vec<PolicyRule> {
    rules
        .iter()
        .map(|r| PolicyRule {
            api_groups: Some(vec![r.group.to_owned()]),
            resources: Some(r.resources.iter().map(|s| (*s).to_owned()).collect()),
            verbs: r.verbs.iter().map(|s| (*s).to_owned()).collect(),
            resource_names: (!r.names.is_empty())
                .then(|| r.names.iter().map(|s| (*s).to_owned()).collect()),
            ..PolicyRule::default()
        })
        .collect()
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(BTreeMap::from([
            ("app.kubernetes.io/name".to_owned(), NAME.to_owned()),
            ("app.kubernetes.io/part-of".to_owned(), "phoenix".to_owned()),
        ])),
        ..ObjectMeta::default()
    }
}

fn subject(namespace: &str) -> Vec<Subject> {
    vec![Subject {
        kind: "ServiceAccount".into(),
        name: NAME.into(),
        namespace: Some(namespace.to_owned()),
        ..Subject::default()
    }]
}

/// The ServiceAccount, ClusterRole, ClusterRoleBinding, Role and
/// RoleBinding, as JSON values in apply order.
pub fn objects(namespace: &str) -> Vec<serde_json::Value> {
    let sa = ServiceAccount {
        metadata: meta(NAME, Some(namespace)),
        ..ServiceAccount::default()
    };
    let cluster_role = ClusterRole {
        metadata: meta(NAME, None),
        rules: Some(rules(CLUSTER_RULES)),
        ..ClusterRole::default()
    };
    let cluster_binding = ClusterRoleBinding {
        metadata: meta(NAME, None),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: NAME.into(),
        },
        subjects: Some(subject(namespace)),
    };
    let role = Role {
        metadata: meta(NAME, Some(namespace)),
        rules: Some(rules(NAMESPACE_RULES)),
    };
    let binding = RoleBinding {
        metadata: meta(NAME, Some(namespace)),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: NAME.into(),
        },
        subjects: Some(subject(namespace)),
    };
    // k8s-openapi writes apiVersion and kind itself; these types always serialize.
    [
        serde_json::to_value(&sa),
        serde_json::to_value(&cluster_role),
        serde_json::to_value(&cluster_binding),
        serde_json::to_value(&role),
        serde_json::to_value(&binding),
    ]
    .into_iter()
    .filter_map(Result::ok)
    .collect()
}
