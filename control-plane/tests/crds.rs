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
        // The Gateway API's kinds: no offline CEL for CRDs Phoenix does
        // not generate; instead, what Phoenix itself makes of them (read
        // into the generated types, checked as the control plane checks
        // them: a route Phoenix would refuse is no example).
        Some(kind @ ("HTTPRoute" | "GRPCRoute")) => {
            use phoenix_api::route::RouteKind;
            use phoenix_control_plane::gateway::{GrpcRoute, HttpRoute};
            use phoenix_control_plane::k8s::routes::RouteRecord;
            let ns = doc.object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default");
            let record = if kind == "HTTPRoute" {
                let r: HttpRoute =
                    serde_json::from_value(doc.object.clone()).map_err(|e| e.to_string())?;
                RouteRecord::new(RouteKind::Http, ns, &r.metadata, &r.spec)
            } else {
                let r: GrpcRoute =
                    serde_json::from_value(doc.object.clone()).map_err(|e| e.to_string())?;
                RouteRecord::new(RouteKind::Grpc, ns, &r.metadata, &r.spec)
            };
            record.rules.map(drop).map_err(|e| e.to_string())
        }
        Some("ReferenceGrant") => serde_json::from_value::<
            phoenix_control_plane::gateway::ReferenceGrant,
        >(doc.object.clone())
        .map(drop)
        .map_err(|e| e.to_string()),
        other => panic!("{}: unexpected kind {other:?}", doc.file.display()),
    }
}

/// What check-jsonschema (PyPI) says about `doc` against the CRD's
/// `openAPIV3Schema` (it checks types, enums and patterns; it ignores CEL).
/// A Gateway API kind is checked against both channels' schemas.
fn schema_verdict(doc: &Doc, schemas: &Path) -> Result<(), String> {
    let kind = doc.object["kind"].as_str().unwrap();
    let channels: &[&str] = if doc.object["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with("gateway.networking.k8s.io/"))
    {
        &[".standard", ".experimental"]
    } else {
        &[""]
    };
    // Gateway API schemas are per served version (`.v1`, `.v1beta1`).
    let version = match channels {
        [""] => String::new(),
        _ => format!(
            ".{}",
            doc.object["apiVersion"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
        ),
    };
    for channel in channels {
        check_schema(
            doc,
            &schemas.join(format!("{kind}{channel}{version}.json")),
            schemas,
        )?;
    }
    Ok(())
}

fn check_schema(doc: &Doc, schema: &Path, schemas: &Path) -> Result<(), String> {
    let instance = schemas.join("instance.json");
    std::fs::write(&instance, serde_json::to_vec(&doc.object).unwrap()).unwrap();
    let out = std::process::Command::new("check-jsonschema")
        .arg("--schemafile")
        .arg(schema)
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
    // The Gateway API's, as vendored (v1.5.1, both channels, every version).
    for channel in ["standard", "experimental"] {
        let vendored = repo().join(format!("manifests/gateway-api/v1.5.1/{channel}"));
        for kind in ["httproutes", "grpcroutes", "referencegrants"] {
            let text = std::fs::read_to_string(
                vendored.join(format!("gateway.networking.k8s.io_{kind}.yaml")),
            )
            .unwrap();
            let c: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
            for v in c["spec"]["versions"].as_array().unwrap() {
                std::fs::write(
                    dir.path().join(format!(
                        "{}.{channel}.{}.json",
                        c["spec"]["names"]["kind"].as_str().unwrap(),
                        v["name"].as_str().unwrap()
                    )),
                    serde_json::to_vec(&v["schema"]["openAPIV3Schema"]).unwrap(),
                )
                .unwrap();
            }
        }
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
                panic!("{name}: first line must be `# expect (cel|phoenix|schema): <message>`")
            });
        let verdict = match layer {
            // `phoenix`: what the control plane refuses of a Gateway API
            // route (reported in its status) that the schema lets in.
            "cel" | "phoenix" => {
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

/// The README's Kubernetes canary is the example file itself (which the
/// tests above check against the schemas and Phoenix's own rules).
#[test]
fn the_readme_shows_the_route_example_as_it_is() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let example =
        std::fs::read_to_string(repo().join("manifests/examples/httproute-canary.yaml")).unwrap();
    assert!(
        readme.contains(&format!("```yaml\n{example}```")),
        "README.md's canary differs from manifests/examples/httproute-canary.yaml: paste the file"
    );
}
