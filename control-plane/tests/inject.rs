//! Sidecar injection: golden JSON patches for real manifests, the patched
//! objects checked as Kubernetes types, re-injection changing nothing, and
//! the webhook's AdmissionReview handling (good, malformed, refused).
//! Refresh the goldens with `UPDATE_GOLDEN=1 cargo test`.
#![cfg(feature = "kubernetes")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use phoenix_control_plane::admission::{self, AdmissionError};
use phoenix_control_plane::inject::{self, Injector};
use serde_json::{Value, json};

fn injector() -> Injector {
    Injector {
        image: "ghcr.io/phoenix-mesh/phoenix-proxy:0.1.0".into(),
        control_plane: "phoenix-control-plane.phoenix-system.svc:4180".into(),
        control_plane_identity: "spiffe://cluster.local/ns/phoenix-system/sa/phoenix-control-plane"
            .into(),
        version: "0.1.0".into(),
    }
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/inject")
}

fn load(case: &str) -> Value {
    let text = std::fs::read_to_string(dir().join(format!("{case}.yaml"))).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

/// Compares `actual` with the golden file (see `phoenix_testkit::golden`).
fn golden(name: &str, actual: &str) {
    let path = dir().join(name);
    phoenix_testkit::golden::check(&path, actual);
}

#[test]
fn manifests_are_injected_as_the_goldens_say_and_only_once() {
    for case in ["pod", "deployment", "cronjob"] {
        let mut doc = load(case);
        let base = inject::template_path(doc["kind"].as_str().unwrap()).unwrap();
        let patch = injector().patch(&doc, base).unwrap();
        golden(
            &format!("{case}.patch.json"),
            &(serde_json::to_string_pretty(&patch).unwrap() + "\n"),
        );
        json_patch::patch(&mut doc, &patch).unwrap();

        // The result is a valid pod template in Kubernetes' own types.
        let template = doc.pointer(base).unwrap().clone();
        let spec = if case == "pod" {
            serde_json::from_value::<Pod>(template)
                .unwrap()
                .spec
                .unwrap()
        } else {
            serde_json::from_value::<PodTemplateSpec>(template)
                .unwrap()
                .spec
                .unwrap()
        };
        let init: Vec<&str> = spec
            .init_containers
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(&init[..2], ["phoenix-init", "phoenix-proxy"], "{case}");
        if case == "deployment" {
            assert_eq!(
                init[2], "migrate",
                "the app's init containers run after the proxy"
            );
        }
        let proxy = &spec.init_containers.as_ref().unwrap()[1];
        assert_eq!(
            proxy.restart_policy.as_deref(),
            Some("Always"),
            "a native sidecar"
        );
        assert!(proxy.startup_probe.is_some());
        assert!(
            spec.volumes
                .unwrap()
                .iter()
                .any(|v| v.name == inject::TOKEN_VOLUME)
        );
        assert_eq!(
            doc.pointer(&format!("{base}/metadata/labels/phoenix.dev~1meshed")),
            Some(&json!("true"))
        );
        // Injecting again changes nothing.
        let again = injector().patch(&doc, base).unwrap();
        assert!(again.0.is_empty(), "{case}: {again:?}");
    }
}

#[test]
fn only_the_apps_probe_ports_are_open_to_the_kubelet() {
    let spec = json!({
        "initContainers": [{"name": "sidecar", "restartPolicy": "Always",
                            "startupProbe": {"grpc": {"port": 9090}}}],
        "containers": [
            {"name": "web", "ports": [{"name": "http", "containerPort": 8080}],
             "readinessProbe": {"httpGet": {"path": "/", "port": "http"}},
             "livenessProbe": {"httpGet": {"path": "/", "port": "8081"}}},
            // Exec probes open nothing; an unknown port name resolves to nothing.
            {"name": "worker", "livenessProbe": {"exec": {"command": ["true"]}},
             "readinessProbe": {"tcpSocket": {"port": "nope"}}},
            // The proxy's admin port is not the app's.
            {"name": "odd", "startupProbe": {"httpGet": {"port": 4191}}},
        ]
    });
    assert_eq!(inject::probe_ports(&spec), vec![8080, 8081, 9090]);

    let mut pod = load("pod");
    let patch = injector().patch(&pod, "").unwrap();
    json_patch::patch(&mut pod, &patch).unwrap();
    let proxy = &pod["spec"]["initContainers"][1];
    let env: BTreeMap<&str, &Value> = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    assert_eq!(env["PHOENIX_PROBE_PORTS"]["value"], "80");
    assert_eq!(
        env["PHOENIX_PROBE_SOURCES"]["valueFrom"]["fieldRef"]["fieldPath"], "status.hostIPs",
        "every node address (dual-stack nodes probe from either)"
    );
    // No probes: nothing is open to the node.
    let mut quiet = load("pod");
    quiet["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .retain(|k, _| !k.ends_with("Probe"));
    let quiet_patch = injector().patch(&quiet, "").unwrap();
    json_patch::patch(&mut quiet, &quiet_patch).unwrap();
    let names: Vec<&str> = quiet["spec"]["initContainers"][1]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"PHOENIX_PROBE_SOURCES"), "{names:?}");
    // Both injected containers run under the runtime's default seccomp profile.
    for c in pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .take(2)
    {
        assert_eq!(
            c["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{}",
            c["name"]
        );
    }
}

fn admission_review(pod: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "dryRun": false,
        }
    }))
    .unwrap()
}

fn response(body: &[u8]) -> kube::core::admission::AdmissionResponse {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body).unwrap();
    review.response.unwrap()
}

#[test]
fn the_webhook_patches_pods_that_ask_and_refuses_what_it_cannot_inject() {
    let none = |_: &str| BTreeMap::new();
    // A pod asking by annotation gets the golden patch.
    let body = admission::review(&admission_review(load("pod")), &injector(), none).unwrap();
    let r = response(&body);
    assert!(r.allowed);
    assert_eq!(r.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
    let patch: Value = serde_json::from_slice(r.patch.as_ref().unwrap()).unwrap();
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("pod.patch.json")).unwrap())
            .unwrap();
    assert_eq!(
        patch, golden,
        "the webhook and `phoenix inject` patch alike"
    );

    // A namespace label asks for every pod; `disabled` on the pod wins.
    let mut plain = load("pod");
    plain["metadata"]["annotations"] = json!({});
    let enabled = |_: &str| BTreeMap::from([("phoenix.dev/inject".into(), "enabled".into())]);
    let r = response(
        &admission::review(&admission_review(plain.clone()), &injector(), enabled).unwrap(),
    );
    assert!(r.allowed && r.patch.is_some());
    let r =
        response(&admission::review(&admission_review(plain.clone()), &injector(), none).unwrap());
    assert!(r.allowed && r.patch.is_none(), "not asked: unchanged");
    plain["metadata"]["annotations"] = json!({"phoenix.dev/inject": "disabled"});
    let r = response(&admission::review(&admission_review(plain), &injector(), enabled).unwrap());
    assert!(r.allowed && r.patch.is_none(), "disabled wins");

    // A host-network pod is refused: its rules would capture the node's TCP.
    let mut host = load("pod");
    host["spec"]["hostNetwork"] = json!(true);
    let r = response(&admission::review(&admission_review(host), &injector(), none).unwrap());
    assert!(!r.allowed);
    assert!(
        r.result.message.contains("hostNetwork"),
        "{}",
        r.result.message
    );

    // An app running as the proxy's UID would bypass it (init exempts that
    // UID): refused, whether the pod or the container sets it.
    for at in [
        "/spec/securityContext",
        "/spec/containers/0/securityContext",
    ] {
        let mut same_uid = load("pod");
        let (parent, _) = at.rsplit_once('/').unwrap();
        same_uid.pointer_mut(parent).unwrap()["securityContext"] = json!({"runAsUser": 2102});
        let r =
            response(&admission::review(&admission_review(same_uid), &injector(), none).unwrap());
        assert!(!r.allowed, "{at}");
        assert!(
            r.result.message.contains("container web runs as UID 2102"),
            "{}",
            r.result.message
        );
    }
    // A container's own user overrides the pod's.
    let mut overridden = load("pod");
    overridden["spec"]["securityContext"] = json!({"runAsUser": 2102});
    overridden["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": 1000});
    let r = response(&admission::review(&admission_review(overridden), &injector(), none).unwrap());
    assert!(r.allowed && r.patch.is_some());

    // Invalid Phoenix annotations refuse the pod with the reason.
    let mut bad = load("pod");
    bad["metadata"]["annotations"]["phoenix.dev/skip-outbound-ports"] = json!("smtp");
    let r = response(&admission::review(&admission_review(bad), &injector(), none).unwrap());
    assert!(!r.allowed);
    assert!(
        r.result.message.contains("phoenix.dev/skip-outbound-ports"),
        "{}",
        r.result.message
    );

    // Not an AdmissionReview: an error that says what was expected.
    let e = admission::review(b"{\"hello\":", &injector(), none).unwrap_err();
    assert!(matches!(e, AdmissionError::Malformed(_)));
    assert!(e.to_string().contains("AdmissionReview"), "{e}");
    let e = admission::review(
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
        &injector(),
        none,
    )
    .unwrap_err();
    assert!(matches!(e, AdmissionError::NoRequest), "{e}");
}

/// The webhook over real HTTPS, as the API server calls it: TLS verified
/// against the mesh root (the `caBundle`) under the Service's DNS name.
#[tokio::test]
async fn the_webhook_answers_over_https_with_a_certificate_for_its_service() {
    use std::sync::Arc;

    use phoenix_control_plane::ca::Ca;
    use phoenix_control_plane::k8s::webhook::{self, Webhook};
    use phoenix_tls::Credentials;

    let ca = Ca::generate("cluster.local").unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let id = "spiffe://cluster.local/ns/phoenix-system/sa/phoenix-control-plane"
        .parse()
        .unwrap();
    let host = "phoenix-control-plane.phoenix-system.svc";
    let pem = ca
        .issue_with_dns(
            &key,
            &id,
            &[host.to_owned()],
            std::time::Duration::from_secs(60),
        )
        .unwrap();
    let credentials = Arc::new(Credentials::default());
    let provider =
        phoenix_tls::provider::provider(phoenix_api::tls_policy::KeyExchange::PqPreferred, &[]);
    credentials.store(Credentials::parse(&pem, &key.serialize_pem(), &provider).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hook = Arc::new(Webhook {
        injector: arc_swap::ArcSwap::from_pointee(injector()),
    });
    let tls = webhook::tls_config(credentials).unwrap();
    let server = tokio::spawn(webhook::serve(listener, tls, hook));

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ca.crt");
    std::fs::write(&root, ca.root_pem()).unwrap();
    let review = dir.path().join("review.json");
    std::fs::write(&review, admission_review(load("pod"))).unwrap();
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "{\"kind\": 7").unwrap();
    // A pod that asks nothing itself: its namespace's label decides, as the
    // API server's selector routed it (one webhook entry per path).
    let mut plain = load("pod");
    plain["metadata"]["annotations"] = json!({});
    let huge = dir.path().join("huge.json");
    std::fs::write(&huge, vec![b' '; 5 * 1024 * 1024]).unwrap();
    let unasked = dir.path().join("unasked.json");
    std::fs::write(&unasked, admission_review(plain)).unwrap();
    // curl: a real TLS client verifying the chain and the DNS name.
    let curl = move |method: &str, path: &str, body: Option<&std::path::Path>| {
        let mut c = std::process::Command::new("curl");
        c.args([
            "-s",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
        ])
        .arg("--cacert")
        .arg(&root)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .arg(format!("https://{host}:{port}{path}"));
        if let Some(b) = body {
            c.args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(format!("@{}", b.display()));
        }
        let out = c.output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.parse::<u16>().unwrap_or(0), body.to_owned())
    };
    let (r, g, m, n, by_ns, by_pod, big) = tokio::task::spawn_blocking(move || {
        (
            curl("POST", "/inject", Some(&review)),
            curl("POST", "/inject", Some(&garbage)),
            curl("GET", "/inject", None),
            curl("POST", "/elsewhere", None),
            curl("POST", webhook::NAMESPACE_PATH, Some(&unasked)),
            curl("POST", webhook::PATH, Some(&unasked)),
            curl("POST", webhook::PATH, Some(&huge)),
        )
    })
    .await
    .unwrap();
    assert_eq!(r.0, 200, "{}", r.1);
    let resp = response(r.1.as_bytes());
    assert!(resp.allowed && resp.patch.is_some());
    let resp = response(by_ns.1.as_bytes());
    assert!(
        resp.allowed && resp.patch.is_some(),
        "an enabled namespace's pod is injected"
    );
    let resp = response(by_pod.1.as_bytes());
    assert!(
        resp.allowed && resp.patch.is_none(),
        "neither the pod nor its namespace asks"
    );
    assert_eq!(g.0, 400);
    assert!(g.1.contains("AdmissionReview"), "{}", g.1);
    assert_eq!(m.0, 405);
    assert_eq!(big.0, 413, "a body over 4 MiB is refused: {}", big.1);
    assert_eq!(n.0, 404);
    server.abort();
}
