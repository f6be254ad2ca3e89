//! The real control plane in Kubernetes mode against the API server
//! stand-in (tests/support/apiserver.rs): it must start, lead, keep its CA
//! Secret and trust bundles, and serve a real proxy the cluster's
//! Services, without asking anything the stand-in does not serve.
//!
//! Needs the workspace binaries: `cargo build --workspace --bins --all-features`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "support/harness.rs"]
mod harness;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use apiserver::ApiServer;
use harness::{Proc, bin, eventually, get};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// Service `name` in `shop` (port 80 `http` → 8080) at `vip`, its
/// EndpointSlice, and the meshed pod `<name>-0` at `ip` behind it.
fn seed_service(api: &ApiServer, name: &str, vip: &str, ip: &str) {
    let pod = format!("{name}-0");
    api.apply(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": "shop", "name": pod,
                     "labels": {"app": name, "phoenix.dev/meshed": "true"}},
        "spec": {"serviceAccountName": name, "nodeName": "node-0",
                 "containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }));
    api.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "shop", "name": name},
        "spec": {"type": "ClusterIP", "clusterIP": vip, "clusterIPs": [vip], "selector": {"app": name},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    }));
    api.apply(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "shop", "name": format!("{name}-abcde"),
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false},
                       "targetRef": {"kind": "Pod", "namespace": "shop", "name": pod}}],
    }));
}

fn config(admin: SocketAddr) -> Value {
    serde_json::from_str(&get(admin, "/config").1).unwrap()
}

#[test]
fn the_control_plane_runs_against_the_api_server_stand_in() {
    let api = ApiServer::start();
    for ns in ["phoenix-system", "shop"] {
        api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    seed_service(&api, "web", "10.96.0.10", "127.0.0.2");

    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin("phoenix-control-plane"));
    cmd.arg("kubernetes")
        .args(["--namespace", "phoenix-system", "--pod-name", "cp-0"])
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg("--no-webhook")
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("KUBECONFIG", api.kubeconfig(dir.path()))
        // kube-rs would send an http:// server through a proxy named here.
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy");
    let cp = Proc::spawn("control-plane", cmd);
    let bound: Value = serde_json::from_str(&cp.line(WAIT)).unwrap();
    let admin: SocketAddr = bound["admin"].as_str().unwrap().parse().unwrap();
    let stderr = || cp.stderr.lock().unwrap().clone();

    eventually(WAIT, "control plane ready (every kind listed)", || {
        (get(admin, "/ready").0 == 200).then_some(())
    });
    let secret = api
        .get("v1", "Secret", "phoenix-system", "phoenix-ca")
        .expect("the CA Secret was created");
    assert!(secret["data"]["ca.crt"].is_string() && secret["data"]["ca.key"].is_string());
    eventually(WAIT, "the Lease taken by cp-0", || {
        let lease = api.get(
            "coordination.k8s.io/v1",
            "Lease",
            "phoenix-system",
            "phoenix-control-plane",
        )?;
        (lease["spec"]["holderIdentity"] == "cp-0").then_some(())
    });
    let anchor = std::fs::read_to_string(bound["trustAnchor"].as_str().unwrap()).unwrap();
    for ns in ["shop", "phoenix-system"] {
        let bundle = eventually(WAIT, "the trust bundle ConfigMap", || {
            api.get("v1", "ConfigMap", ns, "phoenix-trust-bundle")
        });
        assert_eq!(
            bundle["data"]["ca.crt"],
            anchor.as_str(),
            "{ns}'s bundle holds the roots"
        );
    }
    // Its own /config says it leads and publishes the mesh settings and one
    // upstream (web.shop:80); it lists no resources, so...
    eventually(WAIT, "the control plane leads with web published", || {
        let c = config(admin);
        (c["source"] == "kubernetes" && c["leader"] == true && c["sharedResources"] == 2)
            .then_some(())
    });

    // ...a real proxy of `client`, authenticated by TokenReview, gets it.
    api.add_token("client-token", "shop", "client", &["phoenix"]);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "client-token").unwrap();
    let mut cmd = Command::new(bin("phoenix-proxy"));
    cmd.arg("--control-plane")
        .arg(bound["control"].as_str().unwrap())
        .arg("--control-plane-identity")
        .arg(bound["identity"].as_str().unwrap())
        .arg("--trust-anchor")
        .arg(bound["trustAnchor"].as_str().unwrap())
        .arg("--token-file")
        .arg(&token_file);
    let proxy = Proc::spawn("proxy", cmd);
    let proxy_bound: Value = serde_json::from_str(&proxy.line(WAIT)).unwrap();
    let proxy_admin: SocketAddr = proxy_bound["admin"].as_str().unwrap().parse().unwrap();
    let upstream = |name: &str| {
        let key = format!("upstream/{name}.shop:80");
        eventually(WAIT, &format!("the proxy receives {key}"), || {
            config(proxy_admin)["config"]["resources"]
                .get(&key)
                .cloned()
        })
    };
    let web = upstream("web");
    assert_eq!(web["addresses"], json!(["10.96.0.10:80"]));
    assert_eq!(web["endpoints"][0]["address"], "127.0.0.2:4143");
    assert_eq!(
        web["endpoints"][0]["identity"],
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    assert_eq!(
        config(proxy_admin)["certificate"]["identity"],
        "spiffe://cluster.local/ns/shop/sa/client",
        "the certificate names the token's ServiceAccount"
    );

    // A change reaches both through the watches.
    seed_service(&api, "api", "10.96.0.11", "127.0.0.3");
    let second = upstream("api");
    assert_eq!(second["endpoints"][0]["address"], "127.0.0.3:4143");
    eventually(WAIT, "the control plane publishes two upstreams", || {
        (config(admin)["sharedResources"] == 3).then_some(())
    });
    let gone = |name: &str| {
        let key = format!("upstream/{name}.shop:80");
        eventually(WAIT, &format!("{key} leaves the proxy's view"), || {
            config(proxy_admin)["config"]["resources"]
                .get(&key)
                .is_none()
                .then_some(())
        })
    };
    // A deletion the watches see: web's endpoints leave, so does its upstream.
    api.delete("discovery.k8s.io/v1", "EndpointSlice", "shop", "web-abcde");
    gone("web");
    // One they miss: the watchers get 410 Gone when they come back, relist,
    // and find the Service gone.
    api.change_unwatched(|api| {
        api.delete("v1", "Service", "shop", "api");
    });
    gone("api");
    // (Its log says so; the copy of its stderr may lag a little.)
    eventually(WAIT, "the relist removed what it no longer found", || {
        stderr().contains("removed=1").then_some(())
    });

    // The leader writes a TrafficPolicy's status (a merge patch of /status)...
    api.apply(json!({
        "apiVersion": "phoenix.dev/v1alpha1", "kind": "TrafficPolicy",
        "metadata": {"namespace": "shop", "name": "web"},
        "spec": {"targetRef": {"group": "", "kind": "Service", "name": "web"},
                 "allow": [{"serviceAccount": "client"}]},
    }));
    let status = eventually(WAIT, "the policy's status written", || {
        let p = api.get("phoenix.dev/v1alpha1", "TrafficPolicy", "shop", "web")?;
        (p["status"]["conditions"].as_array()?.len() == 2).then(|| p["status"].clone())
    });
    assert_eq!(status["observedGeneration"], 1);
    // ...and renews its Lease (a replace carrying the version it read).
    let lease = |field: &str| {
        let l = api.get(
            "coordination.k8s.io/v1",
            "Lease",
            "phoenix-system",
            "phoenix-control-plane",
        );
        l.unwrap()["spec"][field].clone()
    };
    let taken = lease("renewTime");
    eventually(WAIT, "the Lease renewed", || {
        (lease("renewTime") != taken).then_some(())
    });
    assert_eq!(lease("holderIdentity"), "cp-0");

    let requests = api.requests();
    eprintln!("the control plane asked:\n{}", requests.join("\n"));
    assert!(
        api.unexpected().is_empty(),
        "the stand-in did not serve {:?}; control plane stderr:\n{}",
        api.unexpected(),
        stderr()
    );
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("POST /apis/authentication.k8s.io/v1/tokenreviews")),
        "the proxy's token was reviewed"
    );
    drop(proxy);
    cp.terminate();
}
