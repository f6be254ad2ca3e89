//! The CRDs in `manifests/crds/` are generated from the Rust types; the
//! examples in `manifests/examples/` must pass the same CEL rules the API
//! server runs (offline, through kube's `cel` feature). `UPDATE_GOLDEN=1`
//! rewrites the generated files.
#![cfg(feature = "kubernetes")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use phoenix_control_plane::crd;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn generated_crds_match_the_committed_manifests() {
    // The manifests, and the same files as the phoenix-crds chart's templates.
    for dir in [
        repo().join("manifests/crds"),
        repo().join("charts/phoenix-crds/templates"),
    ] {
        for c in crd::all() {
            let yaml = crd::to_yaml(&c).unwrap();
            phoenix_testkit::golden::check(&dir.join(crd::file_name(&c)), &yaml);
        }
    }
}

#[test]
fn generated_rbac_matches_the_committed_manifest() {
    let path = repo().join("manifests/rbac/control-plane.yaml");
    let mut yaml = String::from(
        "# Generated from control-plane/src/k8s/rbac.rs; do not edit.\n# The control plane's ServiceAccount and exactly the permissions it uses.\n",
    );
    for object in phoenix_control_plane::k8s::rbac::objects("phoenix-system") {
        yaml.push_str("---\n");
        yaml.push_str(&serde_saphyr::to_string(&object).unwrap());
    }
    phoenix_testkit::golden::check(&path, &yaml);
}

/// A manifest document: which CRD, and the object.
struct Doc {
    file: PathBuf,
    object: serde_json::Value,
}

fn docs(dir: &Path) -> Vec<Doc> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML in {}", dir.display());
    files
        .into_iter()
        .flat_map(|file| {
            let text = std::fs::read_to_string(&file).unwrap();
            let objects: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            objects.into_iter().map(move |object| Doc {
                file: file.clone(),
                object,
            })
        })
        .collect()
}

/// What the API server's CEL rules say about `doc` (offline, same rules).
fn cel_verdict(doc: &Doc) -> Result<(), String> {
    match doc.object["kind"].as_str() {
        Some("MeshConfig") => {
            let typed: crd::MeshConfig =
                serde_json::from_value(doc.object.clone()).map_err(|e| e.to_string())?;
            typed.validate_cel().map_err(|e| e.to_string())
        }
        Some("TrafficPolicy") => {
            let typed: crd::TrafficPolicy =
                serde_json::from_value(doc.object.clone()).map_err(|e| e.to_string())?;
            typed.validate_cel().map_err(|e| e.to_string())
        }
        other => panic!("{}: unexpected kind {other:?}", doc.file.display()),
    }
}

/// What check-jsonschema (PyPI) says about `doc` against the CRD's
/// `openAPIV3Schema` (it checks types, enums and patterns; it ignores CEL).
fn schema_verdict(doc: &Doc, schemas: &Path) -> Result<(), String> {
    let kind = doc.object["kind"].as_str().unwrap();
    let schema = schemas.join(format!("{kind}.json"));
    let instance = schemas.join("instance.json");
    std::fs::write(&instance, serde_json::to_vec(&doc.object).unwrap()).unwrap();
    let out = std::process::Command::new("check-jsonschema")
        .arg("--schemafile")
        .arg(&schema)
        .arg(&instance)
        .output()
        .expect(
            "check-jsonschema is needed: scripts/test installs it (pip install check-jsonschema)",
        );
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Writes each CRD's `openAPIV3Schema` as a JSON Schema file named by kind.
fn write_schemas() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for c in crd::all() {
        let schema = c.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .unwrap();
        std::fs::write(
            dir.path().join(format!("{}.json", c.spec.names.kind)),
            serde_json::to_vec(schema).unwrap(),
        )
        .unwrap();
    }
    dir
}

#[test]
fn examples_pass_the_schema_and_the_cel_rules() {
    let schemas = write_schemas();
    for doc in docs(&repo().join("manifests/examples")) {
        let name = doc.file.display().to_string();
        cel_verdict(&doc).unwrap_or_else(|e| panic!("{name}: CEL refused: {e}"));
        schema_verdict(&doc, schemas.path())
            .unwrap_or_else(|e| panic!("{name}: schema refused: {e}"));
    }
}

#[test]
fn invalid_resources_are_refused_with_a_message_that_names_the_problem() {
    let schemas = write_schemas();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    for doc in docs(&dir) {
        let name = doc.file.display().to_string();
        let text = std::fs::read_to_string(&doc.file).unwrap();
        let header = text.lines().next().unwrap();
        let (layer, expected) = header
            .strip_prefix("# expect (")
            .and_then(|r| r.split_once("): "))
            .unwrap_or_else(|| {
                panic!("{name}: first line must be `# expect (cel|schema): <message>`")
            });
        let verdict = match layer {
            "cel" => {
                // CEL-only problems pass the structural schema: the API
                // server needs the rules to refuse them.
                schema_verdict(&doc, schemas.path())
                    .unwrap_or_else(|e| panic!("{name}: the schema alone already refuses it: {e}"));
                cel_verdict(&doc)
            }
            "schema" => schema_verdict(&doc, schemas.path()),
            other => panic!("{name}: unknown layer {other}"),
        };
        let error = verdict.expect_err(&format!("{name}: accepted, but must be refused"));
        assert!(
            error.contains(expected),
            "{name}: refused, but the message does not say `{expected}`: {error}"
        );
    }
}
