//! Installation artefacts with the real tools: `helm lint --strict` and
//! `helm template` (golden files) on both charts, `phoenix install` equal to
//! what helm renders with default values, every value documented, and the
//! rendered and injected manifests valid for Kubernetes 1.33
//! (kubernetes-validate) and the CRD schemas (check-jsonschema).
//! `scripts/test` installs helm into `target/tools/` and the validators from
//! PyPI. Refresh the goldens with `UPDATE_GOLDEN=1`.
#![cfg(feature = "kubernetes")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;

use harness::{bin, run_ok};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn helm() -> PathBuf {
    let path = std::env::var_os("PHOENIX_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/tools/helm/helm"));
    assert!(
        path.is_file(),
        "helm is needed at {}: scripts/test installs it (or set PHOENIX_HELM)",
        path.display()
    );
    path
}

fn template(chart: &str, set: &[&str]) -> String {
    let mut cmd = Command::new(helm());
    cmd.args(["template", chart])
        .arg(repo().join("charts").join(chart))
        .args(["--namespace", "phoenix-system"]);
    for s in set {
        cmd.args(["--set", s]);
    }
    run_ok(&mut cmd)
}

fn docs(yaml: &str) -> Vec<Value> {
    let mut docs: Vec<Value> = serde_saphyr::from_str_multiple(yaml).unwrap();
    docs.retain(|d| !d.is_null());
    docs.sort_by_key(|d| {
        format!(
            "{}/{}/{}/{}",
            d["apiVersion"], d["kind"], d["metadata"]["namespace"], d["metadata"]["name"]
        )
    });
    docs
}

fn golden(name: &str, actual: &str) {
    let path = repo().join("charts/golden").join(name);
    phoenix_testkit::golden::check(&path, actual);
}

#[test]
fn charts_lint_render_as_the_goldens_and_equal_phoenix_install() {
    for chart in ["phoenix-crds", "phoenix"] {
        run_ok(
            Command::new(helm())
                .args(["lint", "--strict"])
                .arg(repo().join("charts").join(chart)),
        );
        golden(&format!("{chart}.yaml"), &template(chart, &[]));
    }
    let helm_objects = docs(&(template("phoenix-crds", &[]) + &template("phoenix", &[])));
    let install = run_ok(Command::new(bin("phoenix")).args(["install"]));
    let ours = docs(&install);
    assert_eq!(
        ours.len(),
        helm_objects.len(),
        "phoenix install and helm template render different objects"
    );
    for (a, b) in ours.iter().zip(&helm_objects) {
        assert_eq!(a, b, "phoenix install differs from helm template");
    }
    // No key or certificate is ever rendered.
    assert!(!install.contains("PRIVATE KEY") && !install.contains("caBundle"));
}

#[test]
fn chart_values_are_documented_and_change_what_they_say() {
    let values = std::fs::read_to_string(repo().join("charts/phoenix/values.yaml")).unwrap();
    let mut documented = false;
    for line in values.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("# --") {
            documented = true;
        } else if trimmed.starts_with('#') || trimmed.is_empty() {
        } else if let Some((key, value)) = trimmed.split_once(':') {
            if !value.trim().is_empty() {
                assert!(documented, "values.yaml: `{key}` has no `# --` comment");
            }
            documented = false;
        }
    }
    let ignore = docs(&template("phoenix", &["webhook.failurePolicy=Ignore"]));
    let webhook = ignore
        .iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .unwrap();
    assert_eq!(webhook["webhooks"][0]["failurePolicy"], "Ignore");
    // By default the entries that pods ask by label fail closed; the
    // annotation catch-all never does (it sees every unlabelled pod).
    let defaults = docs(&template("phoenix", &[]));
    let hooks = &defaults
        .iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .unwrap()["webhooks"];
    let policies: Vec<(&str, &str)> = hooks
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["name"].as_str().unwrap(),
                h["failurePolicy"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        policies,
        [
            ("namespace.inject.phoenix.dev", "Fail"),
            ("pod.inject.phoenix.dev", "Fail"),
            ("inject.phoenix.dev", "Ignore"),
        ]
    );
    let custom = docs(&template(
        "phoenix",
        &["meshConfig=false", "podMonitor.enabled=true", "replicas=3"],
    ));
    assert!(!custom.iter().any(|d| d["kind"] == "MeshConfig"));
    let deployment = custom.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert!(custom.iter().any(|d| d["kind"] == "PodDisruptionBudget"));
    let single = docs(&template("phoenix", &["replicas=1"]));
    assert!(
        !single.iter().any(|d| d["kind"] == "PodDisruptionBudget"),
        "one replica: a PDB would block every drain"
    );
    // The PodMonitors name ports the scraped pods have: the control plane's
    // admin port, and the injected proxy's.
    let monitor = |name: &str| {
        let m = custom
            .iter()
            .find(|d| d["kind"] == "PodMonitor" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("PodMonitor {name}"));
        m["spec"]["podMetricsEndpoints"][0]["port"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let cp_ports: Vec<&str> = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(cp_ports.contains(&monitor("phoenix-control-plane").as_str()));
    let injected =
        std::fs::read_to_string(repo().join("control-plane/tests/golden/inject/pod.patch.json"))
            .unwrap();
    assert!(injected.contains(&format!("\"name\": \"{}\"", monitor("phoenix-proxies"))));
    let notes = run_ok(
        Command::new(helm())
            .args([
                "install",
                "phoenix",
                "--dry-run=client",
                "--namespace",
                "phoenix-system",
            ])
            .arg(repo().join("charts/phoenix")),
    );
    assert!(
        notes.contains("phoenix.dev/inject=enabled"),
        "NOTES.txt says what to run next"
    );
}

fn validate(file: &Path) {
    run_ok(
        Command::new("kubernetes-validate")
            .args(["-k", "1.33.0", "--strict", "--quiet"])
            .arg(file),
    );
}

#[test]
fn rendered_and_injected_manifests_are_valid_kubernetes() {
    let dir = tempfile::tempdir().unwrap();
    // The control plane chart (the MeshConfig is a custom resource: checked
    // against its CRD's schema below).
    let rendered = docs(&template("phoenix", &[]));
    let (custom, builtin): (Vec<&Value>, Vec<&Value>) =
        rendered.iter().partition(|d| d["kind"] == "MeshConfig");
    for (i, doc) in builtin.iter().enumerate() {
        let file = dir.path().join(format!("object-{i}.json"));
        std::fs::write(&file, serde_json::to_vec(doc).unwrap()).unwrap();
        validate(&file);
    }
    let crd = phoenix_control_plane::crd::all()
        .into_iter()
        .find(|c| c.spec.names.kind == "MeshConfig")
        .unwrap();
    let schema = dir.path().join("meshconfig.schema.json");
    std::fs::write(
        &schema,
        serde_json::to_vec(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let instance = dir.path().join("meshconfig.json");
    std::fs::write(&instance, serde_json::to_vec(custom[0]).unwrap()).unwrap();
    run_ok(
        Command::new("check-jsonschema")
            .arg("--schemafile")
            .arg(&schema)
            .arg(&instance),
    );
    // What the injector makes of real manifests is still valid Kubernetes.
    for case in ["pod", "deployment", "cronjob"] {
        let injected = run_ok(
            Command::new(bin("phoenix"))
                .args(["inject", "-f"])
                .arg(repo().join(format!("control-plane/tests/golden/inject/{case}.yaml"))),
        );
        let file = dir.path().join(format!("{case}.yaml"));
        std::fs::write(&file, injected).unwrap();
        validate(&file);
    }
}
