//! Phoenix's custom resources, group `phoenix.dev`, version `v1alpha1`.
//!
//! The Rust types are the source of truth: `manifests/crds/` is generated
//! from them (`phoenix-control-plane crds`, or `UPDATE_GOLDEN=1 cargo test`),
//! and a test fails when the committed YAML drifts. Validation lives in the
//! schema (enums, patterns, lengths, CEL rules), so `kubectl apply` refuses a
//! bad resource with the same message the tests check offline.

pub mod conditions;
pub mod mesh_config;
pub mod traffic_policy;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use mesh_config::{MeshConfig, MeshConfigSpec, MeshConfigStatus};
pub use traffic_policy::{TrafficPolicy, TrafficPolicySpec, TrafficPolicyStatus};

/// The API group of every Phoenix resource.
pub const GROUP: &str = "phoenix.dev";
/// Pattern of a duration as Phoenix writes it (`500ms`, `30s`, `1h30m`); CEL
/// `duration()` reads the same strings, so rules can compare them.
pub const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h))+$";

/// Every CRD, in the order they are applied.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![MeshConfig::crd(), TrafficPolicy::crd()]
}

/// The file a CRD is written to under `manifests/crds/` (kubebuilder's naming).
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// A CRD as YAML, with the header that says it is generated.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::SerializeError> {
    let body = serde_saphyr::to_string(crd)?;
    Ok(format!(
        "# Generated from control-plane/src/crd/ by `phoenix-control-plane crds`; do not edit.\n{body}"
    ))
}
