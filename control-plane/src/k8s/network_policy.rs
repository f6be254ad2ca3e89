//! Whether the cluster's NetworkPolicies let proxies reach each other.
//!
//! Meshed traffic crosses as QUIC on UDP 4143, whatever TCP port the app
//! dialled. A NetworkPolicy written for the app (`TCP 8080 from the
//! frontend`) therefore blocks the mesh while looking right: the classic
//! silent breakage of QUIC meshes. Policies are additive, so the question is
//! asked per meshed pod and direction: among the policies that select it,
//! does some rule open anything at all (else the isolation is deliberate)
//! and none open UDP 4143? Peers (`from`/`to`) are not second-guessed; only
//! ports are. Pure: tested on objects, no cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The direction a policy restricts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    /// Traffic to the pod (the serving proxy's QUIC port).
    Ingress,
    /// Traffic from the pod (to peers' QUIC ports).
    Egress,
}

impl Direction {
    /// The word Kubernetes uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// A meshed pod whose policies open some ports but not a UDP port the
/// proxies need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// `namespace/name` of the pod.
    pub pod: String,
    /// Which way.
    pub direction: Direction,
    /// The UDP port not opened: peers' QUIC, or (egress) the control plane's.
    pub port: u16,
    /// The policies that select it that way (`namespace/name`).
    pub policies: Vec<String>,
}

/// Whether `selector` selects a pod with `labels` (`None` or empty: every pod).
pub fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    let by_label = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expression = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // An operator this code does not know selects nothing (the API
            // server refuses such selectors anyway).
            _ => false,
        }
    });
    by_label && by_expression
}

/// The directions a policy restricts: its `policyTypes`, else ingress
/// always and egress when it has egress rules (the API's defaulting).
fn directions(policy: &NetworkPolicy) -> Vec<Direction> {
    let Some(spec) = &policy.spec else {
        return Vec::new();
    };
    match &spec.policy_types {
        Some(types) => types
            .iter()
            .filter_map(|t| match t.as_str() {
                "Ingress" => Some(Direction::Ingress),
                "Egress" => Some(Direction::Egress),
                _ => None,
            })
            .collect(),
        None if spec.egress.is_some() => vec![Direction::Ingress, Direction::Egress],
        None => vec![Direction::Ingress],
    }
}

/// Each rule's port list that way (`None`: the rule opens every port).
fn rules(policy: &NetworkPolicy, direction: Direction) -> Vec<Option<&[NetworkPolicyPort]>> {
    let Some(spec) = &policy.spec else {
        return Vec::new();
    };
    match direction {
        Direction::Ingress => spec
            .ingress
            .iter()
            .flatten()
            .map(|r| r.ports.as_deref().filter(|p| !p.is_empty()))
            .collect(),
        Direction::Egress => spec
            .egress
            .iter()
            .flatten()
            .map(|r| r.ports.as_deref().filter(|p| !p.is_empty()))
            .collect(),
    }
}

/// Whether `port` opens UDP `quic` (by number, range, or the injected
/// container port's name `quic_name`).
fn opens(port: &NetworkPolicyPort, quic: u16, quic_name: &str) -> bool {
    if port.protocol.as_deref().unwrap_or("TCP") != "UDP" {
        return false;
    }
    let quic = i32::from(quic);
    match &port.port {
        None => true,
        Some(IntOrString::String(name)) => name == quic_name,
        Some(IntOrString::Int(p)) => match port.end_port {
            Some(end) => (*p..=end).contains(&quic),
            None => *p == quic,
        },
    }
}

/// The meshed `pods` whose NetworkPolicies open some traffic but not UDP
/// `quic` (the proxies' port, named `quic_name` in injected pods; a pod's
/// `phoenix.dev/quic-port` annotation overrides it for its ingress) or, for
/// egress, UDP `control` (the control plane, where proxies subscribe).
pub fn blocked(
    policies: &[NetworkPolicy],
    pods: &[Pod],
    quic: u16,
    quic_name: &str,
    control: u16,
) -> Vec<Blocked> {
    let mut out = Vec::new();
    for pod in pods {
        let (Some(ns), Some(name)) = (
            pod.metadata.namespace.as_deref(),
            pod.metadata.name.as_deref(),
        ) else {
            continue;
        };
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let own_quic = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(super::QUIC_PORT_ANNOTATION))
            .and_then(|p| p.parse().ok())
            .unwrap_or(quic);
        let selecting: Vec<&NetworkPolicy> = policies
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
            .filter(|p| {
                p.spec
                    .as_ref()
                    .is_some_and(|s| selects(s.pod_selector.as_ref(), &labels))
            })
            .collect();
        for direction in [Direction::Ingress, Direction::Egress] {
            let that_way: Vec<&NetworkPolicy> = selecting
                .iter()
                .copied()
                .filter(|p| directions(p).contains(&direction))
                .collect();
            let all_rules: Vec<Option<&[NetworkPolicyPort]>> =
                that_way.iter().flat_map(|p| rules(p, direction)).collect();
            if all_rules.is_empty() {
                // Unrestricted, or isolated on purpose (nothing opens).
                continue;
            }
            let needed: &[u16] = match direction {
                Direction::Ingress => &[own_quic],
                Direction::Egress => &[quic, control],
            };
            for &port in needed {
                let open = all_rules.iter().any(|ports| match ports {
                    None => true,
                    Some(ports) => ports.iter().any(|p| opens(p, port, quic_name)),
                });
                if !open {
                    out.push(Blocked {
                        pod: format!("{ns}/{name}"),
                        direction,
                        port,
                        policies: that_way
                            .iter()
                            .filter_map(|p| p.metadata.name.as_deref())
                            .map(|n| format!("{ns}/{n}"))
                            .collect(),
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(ns: &str, name: &str, spec: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": spec,
        }))
        .unwrap()
    }

    fn pod(ns: &str, name: &str, labels: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"namespace": ns, "name": name, "labels": labels}}),
        )
        .unwrap()
    }

    #[test]
    fn a_policy_for_the_apps_tcp_port_blocks_the_mesh_and_says_where() {
        let web = pod("shop", "web-0", json!({"app": "web"}));
        let db = pod("shop", "db-0", json!({"app": "db"}));
        let other = pod("blog", "web-0", json!({"app": "web"}));
        let tcp_only = policy(
            "shop",
            "web-from-frontend",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
                   "ingress": [{"ports": [{"port": 8080}]}]}),
        );
        let found = blocked(
            std::slice::from_ref(&tcp_only),
            &[web.clone(), db.clone(), other.clone()],
            4143,
            "phoenix-quic",
            4180,
        );
        assert_eq!(
            found,
            vec![Blocked {
                pod: "shop/web-0".into(),
                direction: Direction::Ingress,
                port: 4143,
                policies: vec!["shop/web-from-frontend".into()],
            }]
        );

        // Policies add up: another one opening UDP 4143 (by number, range or
        // the injected port's name) fixes it.
        for port in [
            json!({"protocol": "UDP", "port": 4143}),
            json!({"protocol": "UDP", "port": 4000, "endPort": 5000}),
            json!({"protocol": "UDP", "port": "phoenix-quic"}),
            json!({"protocol": "UDP"}),
        ] {
            let quic = policy(
                "shop",
                "mesh",
                json!({"podSelector": {}, "ingress": [{"ports": [port]}]}),
            );
            assert_eq!(
                blocked(
                    &[tcp_only.clone(), quic],
                    std::slice::from_ref(&web),
                    4143,
                    "phoenix-quic",
                    4180
                ),
                vec![],
                "{port}"
            );
        }
        // TCP 4143 is not QUIC; a rule without ports opens everything.
        let wrong = policy(
            "shop",
            "tcp",
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 4143}]}]}),
        );
        assert_eq!(
            blocked(
                &[wrong],
                std::slice::from_ref(&web),
                4143,
                "phoenix-quic",
                4180
            )
            .len(),
            1
        );
        let open = policy(
            "shop",
            "all",
            json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
        );
        assert_eq!(
            blocked(
                &[tcp_only.clone(), open],
                std::slice::from_ref(&web),
                4143,
                "phoenix-quic",
                4180
            ),
            vec![]
        );
        // Deny-all isolation is deliberate: nothing opens, nothing to say.
        let deny = policy(
            "shop",
            "deny",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        );
        assert_eq!(
            blocked(
                &[deny],
                std::slice::from_ref(&web),
                4143,
                "phoenix-quic",
                4180
            ),
            vec![]
        );
        // Egress rules that open DNS only cut the client proxy off its peers.
        let egress = policy(
            "shop",
            "dns-only",
            json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]},
                   "policyTypes": ["Egress"],
                   "egress": [{"ports": [{"protocol": "UDP", "port": 53}]}]}),
        );
        let found = blocked(
            std::slice::from_ref(&egress),
            &[web, db.clone()],
            4143,
            "phoenix-quic",
            4180,
        );
        let what: Vec<_> = found
            .iter()
            .map(|b| (b.pod.as_str(), b.direction, b.port))
            .collect();
        assert_eq!(
            what,
            [
                ("shop/db-0", Direction::Egress, 4143),
                ("shop/db-0", Direction::Egress, 4180)
            ],
            "cut off from its peers and from the control plane"
        );
        // Opening peers' QUIC but not the control plane still strands it.
        let quic_out = policy(
            "shop",
            "quic-out",
            json!({"podSelector": {}, "policyTypes": ["Egress"],
                   "egress": [{"ports": [{"protocol": "UDP", "port": 4143}]}]}),
        );
        let found = blocked(
            &[egress, quic_out],
            std::slice::from_ref(&db),
            4143,
            "phoenix-quic",
            4180,
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].port, 4180);
        // A pod's own QUIC port (annotation) is the one its ingress needs.
        let mut moved = pod("shop", "web-1", json!({"app": "web"}));
        moved.metadata.annotations =
            Some([("phoenix.dev/quic-port".to_owned(), "5143".to_owned())].into());
        let only_4143 = policy(
            "shop",
            "quic-in",
            json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP", "port": 4143}]}]}),
        );
        let found = blocked(&[only_4143], &[moved], 4143, "phoenix-quic", 4180);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].port, 5143);
    }

    #[test]
    fn selectors_match_as_the_api_server_does() {
        let labels: BTreeMap<String, String> = [
            ("app".to_owned(), "web".to_owned()),
            ("tier".to_owned(), "front".to_owned()),
        ]
        .into();
        let sel = |v: serde_json::Value| serde_json::from_value::<LabelSelector>(v).unwrap();
        assert!(selects(None, &labels));
        assert!(selects(Some(&sel(json!({}))), &labels));
        assert!(selects(
            Some(&sel(json!({"matchLabels": {"app": "web"}}))),
            &labels
        ));
        assert!(!selects(
            Some(&sel(json!({"matchLabels": {"app": "db"}}))),
            &labels
        ));
        for (op, values, expected) in [
            ("In", json!(["web", "api"]), true),
            ("NotIn", json!(["web"]), false),
            ("Exists", json!(null), true),
            ("DoesNotExist", json!(null), false),
            ("Sideways", json!(null), false),
        ] {
            let e = sel(
                json!({"matchExpressions": [{"key": "app", "operator": op, "values": values}]}),
            );
            assert_eq!(selects(Some(&e), &labels), expected, "{op}");
        }
        let missing = sel(
            json!({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}),
        );
        assert!(
            selects(Some(&missing), &labels),
            "NotIn admits an absent label"
        );
    }
}
