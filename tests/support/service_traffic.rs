//! Service traffic through a meshed Kubernetes cluster, end to end: the
//! body of tests/kubernetes_mode.rs (against the API server stand-in) and of
//! the cluster test in tests/kubernetes.rs (against a real API server), so
//! both modes send the same traffic and check the same things.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::{Proc, bin, eventually, metric};
use crate::netns::*;
use serde_json::{Value, json};

const TRUST_DOMAIN: &str = "cluster.local";
const CP_NAMESPACE: &str = "phoenix-system";
/// The control plane's QUIC port on the node (the chart's Service port).
const CP_PORT: u16 = 4180;
/// Two Services named `web` on port 80, in two namespaces: `web.shop:80`
/// and `web.team:80` must not collide. (A real cluster allocates its own.)
const SHOP_VIP: &str = "10.96.0.10";
const TEAM_VIP: &str = "10.96.0.20";

/// What the mesh is built from: the stand-in, or a real cluster.
pub trait MeshApi {
    /// A namespace for this run named after `base` (created).
    fn namespace(&mut self, base: &str) -> String;
    /// Creates `obj` and returns it as stored (a Pod's status included).
    fn apply(&mut self, obj: Value) -> Value;
    /// A ServiceAccount token with audience `phoenix`, as projected into pods.
    fn token(&mut self, namespace: &str, service_account: &str) -> String;
    /// A kubeconfig the control plane uses, and the API server's address
    /// (on this machine's loopback: it is forwarded into the node namespace).
    fn kubeconfig(&self, dir: &Path) -> (PathBuf, SocketAddr);
    /// Requests the control plane made that the API did not serve.
    fn unexpected(&self) -> Vec<String>;
    /// The object as stored now, if it exists.
    fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value>;
}

/// The conditions Phoenix wrote on route `name` for its parent `service`:
/// `(type, status, reason, message)` each.
fn route_conditions(
    cluster: &dyn MeshApi,
    ns: &str,
    name: &str,
    service: &str,
) -> Vec<(String, String, String, String)> {
    let route = cluster
        .get("gateway.networking.k8s.io/v1", "HTTPRoute", ns, name)
        .unwrap_or_default();
    route["status"]["parents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["controllerName"] == "phoenix.dev/mesh" && p["parentRef"]["name"] == service)
        .flat_map(|p| p["conditions"].as_array().cloned().unwrap_or_default())
        .map(|c| {
            let s = |f: &str| c[f].as_str().unwrap_or_default().to_owned();
            (s("type"), s("status"), s("reason"), s("message"))
        })
        .collect()
}

/// Waits until route `name`'s condition `type_` for `service` has `status`
/// and `reason`; returns its message.
fn await_condition(
    cluster: &dyn MeshApi,
    ns: &str,
    name: &str,
    service: &str,
    (type_, status, reason): (&str, &str, &str),
) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let conditions = route_conditions(cluster, ns, name, service);
        if let Some(c) = conditions
            .iter()
            .find(|c| c.0 == type_ && c.1 == status && c.2 == reason)
        {
            return c.3.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "HTTPRoute {ns}/{name}: wanted {type_}={status} ({reason}) for {service}; has {conditions:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A meshed pod as the injector leaves it: labelled, with its IP in status.
/// No kubelet runs it (its node does not exist); its "containers" are the
/// processes this test starts in the pod's network namespace.
fn pod(ns: &str, name: &str, sa: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": ns, "name": name,
                     "labels": {"app": name, "phoenix.dev/meshed": "true"}},
        "spec": {"nodeName": "phoenix-test-node", "serviceAccountName": sa,
                 "containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })
}

/// Service `name` in `ns` on port 80 (named `http`) to target port 8080,
/// with its ClusterIP, and the EndpointSlice that puts `pod` at `ip` behind it.
fn service(
    cluster: &mut dyn MeshApi,
    ns: &str,
    name: &str,
    vip: &str,
    pod: &str,
    ip: &str,
) -> String {
    let svc = cluster.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": ns, "name": name},
        "spec": {"clusterIP": vip, "clusterIPs": [vip], "type": "ClusterIP",
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    }));
    cluster.apply(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": ns, "name": format!("{name}-1"),
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true, "serving": true},
                       "targetRef": {"kind": "Pod", "namespace": ns, "name": pod}}],
    }));
    svc["spec"]["clusterIP"].as_str().unwrap().to_owned()
}

/// The real control plane in Kubernetes mode, in the node namespace.
fn control_plane(t: &Topology, cp_ns: &str, kubeconfig: &Path, state: &Path) -> (Proc, Value) {
    let mut cmd = t.command("node", &[]);
    cmd.arg(bin("phoenix-control-plane"))
        .arg("kubernetes")
        .args(["--namespace", cp_ns])
        .args(["--service-account", "phoenix-control-plane"])
        .args(["--trust-domain", TRUST_DOMAIN])
        .args(["--listen", &format!("{NODE_IP}:{CP_PORT}")])
        .args(["--admin", "127.0.0.1:0"])
        .arg("--no-webhook")
        .arg("--state-dir")
        .arg(state)
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAME", "phoenix-control-plane-0")
        // kube-rs would send the API server's traffic through a proxy named here.
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy");
    let cp = Proc::spawn("control-plane", cmd);
    let bound: Value = serde_json::from_str(&cp.line(Duration::from_secs(60)))
        .expect("the control plane prints its addresses as JSON");
    (cp, bound)
}

/// The proxy of `pod` as the injector runs it: its UID, the token file
/// and trust anchor of its projected volume, the redirect listeners init
/// programmed, its pod IPs, JSON logs.
fn proxy(t: &Topology, cp_ns: &str, pod: &str, token: &str, anchor: &Path, dir: &Path) -> Proc {
    let token_file = dir.join(format!("token-{pod}"));
    std::fs::write(&token_file, token).unwrap();
    let mut cmd = t.proxy_command(pod);
    cmd.env("PHOENIX_CONTROL_PLANE", format!("{NODE_IP}:{CP_PORT}"))
        .env(
            "PHOENIX_CONTROL_PLANE_IDENTITY",
            format!("spiffe://{TRUST_DOMAIN}/ns/{cp_ns}/sa/phoenix-control-plane"),
        )
        .env("PHOENIX_TRUST_ANCHOR", anchor)
        .env("PHOENIX_TOKEN_FILE", &token_file)
        .env("PHOENIX_INBOUND", "[::]:4143")
        .env("PHOENIX_ADMIN", "[::]:4191")
        .env("PHOENIX_OUTBOUND_REDIRECT", "[::]:4140")
        .env("PHOENIX_INBOUND_REDIRECT", "[::]:4141")
        .env("PHOENIX_POD_IPS", t.ip(pod))
        .env("PHOENIX_LOG_FORMAT", "json");
    Proc::spawn(&format!("proxy-{pod}"), cmd)
}

/// Python's http.server in `pod` on 8080, serving a file that says `body`.
fn web(t: &Topology, pod: &str, root: &Path, body: &str) -> Proc {
    let dir = root.join(pod);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.txt"), body.repeat(100)).unwrap();
    let mut cmd = t.command(
        pod,
        &[
            "python3",
            "-m",
            "http.server",
            "8080",
            "--bind",
            "0.0.0.0",
            "--directory",
        ],
    );
    cmd.arg(&dir);
    Proc::spawn(&format!("http.server-{pod}"), cmd)
}

/// Which identities the mesh under test has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identities {
    /// The default: ECDSA P-256 certificates.
    Classical,
    /// MeshConfig `identityAlgorithm: ml-dsa-65` and `authPolicy: pq-only`
    /// before the control plane first starts: its CA Secret is ML-DSA.
    PostQuantum,
}

/// Sends the traffic and checks what crossed, against `cluster`.
pub fn service_traffic_crosses_the_mesh(cluster: &mut dyn MeshApi, identities: Identities) {
    let t = Topology::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();

    // The cluster: client pod `curl` in shop; `web` in shop (pod b) and
    // another `web` in team (pod c), both on port 80.
    let cp_ns = cluster.namespace(CP_NAMESPACE);
    if identities == Identities::PostQuantum {
        cluster.apply(json!({
            "apiVersion": "phoenix.dev/v1alpha1", "kind": "MeshConfig",
            "metadata": {"name": "default"},
            "spec": {"trustDomain": TRUST_DOMAIN, "identityAlgorithm": "ml-dsa-65",
                     "authPolicy": "pq-only"},
        }));
    }
    let shop = cluster.namespace("shop");
    let team = cluster.namespace("team");
    cluster.apply(pod(&shop, "curl-0", "curl", CLIENT_IP));
    cluster.apply(pod(&shop, "web-0", "web", SERVER_IP));
    cluster.apply(pod(&team, "web-0", "web", OUTSIDER_IP));
    let shop_vip = service(cluster, &shop, "web", SHOP_VIP, "web-0", SERVER_IP);
    let team_vip = service(cluster, &team, "web", TEAM_VIP, "web-0", OUTSIDER_IP);

    // The node routes ClusterIPs as kube-proxy does: DNAT to the endpoint.
    // Meshed pods never use it (their proxy takes the connection first), so
    // a connection that did would show up as TCP in the client's capture.
    t.exec("node", &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    for (vip, ip) in [(&shop_vip, SERVER_IP), (&team_vip, OUTSIDER_IP)] {
        t.exec(
            "node",
            &[
                "iptables",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-d",
                vip,
                "-p",
                "tcp",
                "--dport",
                "80",
                "-j",
                "DNAT",
                "--to-destination",
                &format!("{ip}:8080"),
            ],
        );
    }

    // The control plane in the node namespace, reaching the API server on
    // the host's loopback through a forwarder.
    let (kubeconfig, api) = cluster.kubeconfig(dir.path());
    forward_into(&t.ns("node"), api, api);
    let (cp, bound) = control_plane(&t, &cp_ns, &kubeconfig, &state);
    let cp_admin: SocketAddr = bound["admin"].as_str().unwrap().parse().unwrap();
    // Its admin port is on the node's loopback.
    eventually(Duration::from_secs(60), "control plane ready", || {
        t.get(&format!("http://{cp_admin}/ready")).map(|_| ())
    });
    let anchor = PathBuf::from(bound["trustAnchor"].as_str().unwrap());

    // The apps, init, and the proxies.
    let shop_body = format!("shop-{:016x}", rand::random::<u64>());
    let team_body = format!("team-{:016x}", rand::random::<u64>());
    let _shop_web = web(&t, "b", dir.path(), &shop_body);
    let _team_web = web(&t, "c", dir.path(), &team_body);
    let proxy_bin = bin("phoenix-proxy");
    for p in ["a", "b", "c"] {
        t.exec(p, &[proxy_bin.to_str().unwrap(), "init"]);
    }
    let _pa = proxy(
        &t,
        &cp_ns,
        "a",
        &cluster.token(&shop, "curl"),
        &anchor,
        dir.path(),
    );
    let _pb = proxy(
        &t,
        &cp_ns,
        "b",
        &cluster.token(&shop, "web"),
        &anchor,
        dir.path(),
    );
    let _pc = proxy(
        &t,
        &cp_ns,
        "c",
        &cluster.token(&team, "web"),
        &anchor,
        dir.path(),
    );
    for p in ["a", "b", "c"] {
        eventually(Duration::from_secs(30), "proxy ready", || {
            t.get(&format!("http://{}:4191/ready", t.ip(p))).map(|_| ())
        });
    }
    // The client's proxy knows both Services, by their Kubernetes names.
    let wanted = [
        format!("upstream/web.{shop}:80"),
        format!("upstream/web.{team}:80"),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let config: Value = loop {
        // `/config` answers loopback clients only: ask from inside the pod.
        let c: Value = curl(&t, "a", "http://127.0.0.1:4191/config")
            .and_then(|c| serde_json::from_str(&c).ok())
            .unwrap_or_default();
        let known = &c["config"]["resources"];
        if wanted.iter().all(|w| known.get(w).is_some()) {
            break c;
        }
        let keys: Vec<&String> = known
            .as_object()
            .into_iter()
            .flat_map(|m| m.keys())
            .collect();
        assert!(
            std::time::Instant::now() < deadline,
            "the client should know {wanted:?}; after 30s it knows {keys:?}; the control plane logged:\n{}",
            cp.stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        config["certificate"]["identity"],
        format!("spiffe://{TRUST_DOMAIN}/ns/{shop}/sa/curl"),
        "the client's identity is its ServiceAccount's"
    );

    // Unmodified curl to both ClusterIPs and to a pod IP, captured.
    let pcap = dir.path().join("client.pcap");
    let tcpdump = capture(&t, "a", &pcap);
    for (url, body, what) in [
        (
            format!("http://{shop_vip}/index.txt"),
            &shop_body,
            "shop's ClusterIP",
        ),
        (
            format!("http://{team_vip}/index.txt"),
            &team_body,
            "team's ClusterIP (same port)",
        ),
        (
            format!("http://{SERVER_IP}:8080/index.txt"),
            &shop_body,
            "a pod IP",
        ),
    ] {
        let got = eventually(Duration::from_secs(20), what, || curl(&t, "a", &url));
        assert_eq!(got, body.repeat(100), "{what}: the right Service answered");
    }
    // Bytes that are not HTTP cross as an opaque stream (the tunnel, with
    // the Service's name in its header): the app's own 400 page comes back.
    let raw = python(
        &t,
        "a",
        "raw-client",
        &format!(
            "import socket\n\
             s = socket.create_connection(('{shop_vip}', 80), timeout=10)\n\
             s.sendall(b'HELLO PHOENIX\\r\\n\\r\\n'); data = b''\n\
             while b'Error code: 400' not in data:\n\
             \x20   chunk = s.recv(4096)\n\
             \x20   if not chunk: break\n\
             \x20   data += chunk\n\
             print('answered' if b'Error code: 400' in data else repr(data))\n"
        ),
    );
    assert_eq!(raw.line(Duration::from_secs(15)), "answered");
    // A later request of a keep-alive connection that asks to upgrade
    // takes a tunnel stream of its own, named by the Service (the path
    // `http/upgrade.rs` adds); the app (http.server) ignores `Upgrade` and
    // answers it like any GET, which comes back as an ordinary response.
    let later = python(
        &t,
        "a",
        "upgrade-client",
        &format!(
            "import socket\n\
             s = socket.create_connection(('{shop_vip}', 80), timeout=10)\n\
             f = s.makefile('rb')\n\
             def get(extra):\n\
             \x20   s.sendall(b'GET /index.txt HTTP/1.1\\r\\nHost: shop\\r\\n' + extra + b'\\r\\n')\n\
             \x20   status = f.readline(); length = 0\n\
             \x20   while True:\n\
             \x20       line = f.readline()\n\
             \x20       if line in (b'\\r\\n', b''): break\n\
             \x20       if line.lower().startswith(b'content-length:'): length = int(line.split(b':')[1])\n\
             \x20   return status, f.read(length)\n\
             a = get(b''); b = get(b'Connection: Upgrade\\r\\nUpgrade: echo\\r\\n')\n\
             print('both' if a[0].startswith(b'HTTP/1.1 200') and b[0].startswith(b'HTTP/1.1 200') and a[1] == b[1] == b'{shop_body}' * 100 else repr((a, b)))\n"
        ),
    );
    assert_eq!(later.line(Duration::from_secs(15)), "both");
    stop_capture_asserting_no_tcp(tcpdump, &pcap);
    let quic = packets(&pcap, "udp port 4143");
    assert!(!quic.is_empty(), "the traffic crossed as QUIC");
    for secret in [&shop_body, &team_body] {
        let raw = std::fs::read(&pcap).unwrap();
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "payload crossed in the clear"
        );
    }

    // Post-quantum on every side; streams connected, none refused.
    let metrics = |ip: &str| t.get(&format!("http://{ip}:4191/metrics")).unwrap();
    // The scheme of the peer's handshake signature, on each side.
    let scheme = match identities {
        Identities::Classical => "ECDSA_NISTP256_SHA256",
        Identities::PostQuantum => "ML_DSA_65",
    };
    let assert_signatures = |text: &str, side: &str| {
        let n = metric(
            text,
            "tls_handshakes_total",
            &[
                ("side", side),
                ("sig_scheme", scheme),
                ("result", "success"),
            ],
        );
        assert!(
            n >= 1.0,
            "{side}: {n} handshakes authenticated with {scheme}"
        );
    };
    let client = metrics(CLIENT_IP);
    assert_pq_handshakes(&client, "client");
    assert_signatures(&client, "client");
    // HTTP crossed request by request (HTTP/3), the rest as tunnel streams.
    let requests = metric(
        &client,
        "response_total",
        &[("direction", "outbound"), ("classification", "success")],
    );
    assert!(requests >= 3.0, "{requests} HTTP requests answered");
    let outbound = metric(
        &client,
        "tunnel_streams_total",
        &[("direction", "outbound"), ("status", "connected")],
    );
    assert!(outbound >= 1.0, "{outbound} outbound streams connected");
    for ip in [SERVER_IP, OUTSIDER_IP] {
        let server = metrics(ip);
        assert_pq_handshakes(&server, "server");
        assert_signatures(&server, "server");
        let inbound = metric(
            &server,
            "response_total",
            &[("direction", "inbound"), ("classification", "success")],
        );
        assert!(inbound >= 1.0, "{ip}: {inbound} HTTP requests served");
        assert!(
            !server.contains("reason=\"no_route\""),
            "{ip}: a request named no service here"
        );
        assert!(
            !server.contains("status=\"bad_request\""),
            "{ip}: a tunnel header was refused"
        );
    }
    assert!(!client.contains("status=\"bad_request\""));

    routes_steer_the_traffic(
        cluster,
        &t,
        &shop,
        &team,
        (&shop_vip, &shop_body),
        (&team_vip, &team_body),
    );
    assert_eq!(
        cluster.unexpected(),
        Vec::<String>::new(),
        "requests the API did not serve"
    );
    drop(cp);
}

/// One HTTP exchange by curl in `pod`: status, response head, body.
fn exchange(t: &Topology, pod: &str, url: &str, headers: &[&str]) -> Option<(u16, String, String)> {
    let mut args = vec!["curl", "-gs", "-i", "--max-time", "5"];
    for h in headers {
        args.extend(["-H", h]);
    }
    args.push(url);
    let out = t.command(pod, &args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, head.to_ascii_lowercase(), body.to_owned()))
}

/// Gateway API routes (GAMMA) in Kubernetes mode, crossing the same mesh:
/// a producer HTTPRoute on shop's `web` sends a header canary to team's
/// `web` (500 until a ReferenceGrant in team allows it, then team's
/// answer), a consumer HTTPRoute in shop changes how shop's clients reach
/// team's `web`, and the client's proxy counts each by route and backend.
fn routes_steer_the_traffic(
    cluster: &mut dyn MeshApi,
    t: &Topology,
    shop: &str,
    team: &str,
    (shop_vip, shop_body): (&str, &str),
    (team_vip, team_body): (&str, &str),
) {
    let svc = |name: &str, ns: &str| json!({"group": "", "kind": "Service", "name": name, "namespace": ns, "port": 80});
    let tag = |value: &str| {
        json!([{"type": "ResponseHeaderModifier",
        "responseHeaderModifier": {"add": [{"name": "x-phoenix-route", "value": value}]}}])
    };
    cluster.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"namespace": shop, "name": "web-split"},
        "spec": {
            "parentRefs": [svc("web", shop)],
            "rules": [
                {"matches": [{"headers": [{"type": "Exact", "name": "x-canary", "value": "team"}]}],
                 "backendRefs": [svc("web", team)]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                 "filters": tag("producer"),
                 "backendRefs": [svc("web", shop)]},
            ],
        },
    }));
    let shop_url = format!("http://{shop_vip}/index.txt");
    let team_url = format!("http://{team_vip}/index.txt");
    let (_, _, body) = eventually(
        Duration::from_secs(20),
        "the producer route in force",
        || {
            exchange(t, "a", &shop_url, &[])
                .filter(|(s, h, _)| *s == 200 && h.contains("x-phoenix-route: producer"))
        },
    );
    assert_eq!(
        body,
        shop_body.repeat(100),
        "the route's default rule keeps shop's web"
    );
    // No ReferenceGrant in team yet: the canary's backend may not be
    // reached, and its requests (only those) get 500.
    let (status, _, _) = exchange(t, "a", &shop_url, &["x-canary: team"]).unwrap();
    assert_eq!(
        status, 500,
        "a backend in another namespace needs a ReferenceGrant"
    );
    // The route's status says so, under Phoenix's controller name.
    await_condition(
        &*cluster,
        shop,
        "web-split",
        "web",
        ("Accepted", "True", "Accepted"),
    );
    let why = await_condition(
        &*cluster,
        shop,
        "web-split",
        "web",
        ("ResolvedRefs", "False", "RefNotPermitted"),
    );
    assert!(why.contains("ReferenceGrant"), "{why}");
    cluster.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"namespace": team, "name": "from-shop"},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": shop}],
                 "to": [{"group": "", "kind": "Service", "name": "web"}]},
    }));
    let (_, _, body) = eventually(Duration::from_secs(20), "the canary granted", || {
        exchange(t, "a", &shop_url, &["x-canary: team"]).filter(|(s, ..)| *s == 200)
    });
    assert_eq!(body, team_body.repeat(100), "the canary reached team's web");
    await_condition(
        &*cluster,
        shop,
        "web-split",
        "web",
        ("ResolvedRefs", "True", "ResolvedRefs"),
    );

    // What Phoenix does not carry out is refused, said in status, and
    // changes no traffic.
    cluster.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"namespace": shop, "name": "rewrite"},
        "spec": {"parentRefs": [svc("web", shop)],
                 "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
                            "filters": [{"type": "URLRewrite",
                                         "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}}],
                            "backendRefs": [svc("web", shop)]}]},
    }));
    let why = await_condition(
        &*cluster,
        shop,
        "rewrite",
        "web",
        ("Accepted", "False", "UnsupportedValue"),
    );
    assert!(why.contains("URLRewrite"), "{why}");
    let (status, head, _) = exchange(t, "a", &shop_url, &[]).unwrap();
    assert!(
        status == 200 && head.contains("x-phoenix-route: producer"),
        "{status} {head}"
    );

    // A consumer route: in shop, parented to team's web, for shop's clients.
    cluster.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"namespace": shop, "name": "team-web"},
        "spec": {"parentRefs": [svc("web", team)],
                 "rules": [{"filters": tag("consumer"), "backendRefs": [svc("web", team)]}]},
    }));
    let (_, _, body) = eventually(
        Duration::from_secs(20),
        "the consumer route in force",
        || {
            exchange(t, "a", &team_url, &[])
                .filter(|(s, h, _)| *s == 200 && h.contains("x-phoenix-route: consumer"))
        },
    );
    assert_eq!(body, team_body.repeat(100));
    let whom = await_condition(
        &*cluster,
        shop,
        "team-web",
        "web",
        ("Accepted", "True", "Accepted"),
    );
    assert!(
        whom.contains(&format!("clients in namespace {shop}")),
        "{whom}"
    );

    // Counted by route and backend on the client's proxy.
    let m = t.get(&format!("http://{CLIENT_IP}:4191/metrics")).unwrap();
    let routed = |route: &str, backend: &str| {
        metric(
            &m,
            "route_request_total",
            &[
                ("route_name", route),
                ("route_namespace", shop),
                ("route_kind", "HTTPRoute"),
                ("backend", backend),
            ],
        )
    };
    assert!(routed("web-split", &format!("web.{team}:80")) >= 1.0, "{m}");
    assert!(
        routed("web-split", "unresolved.phoenix.invalid") >= 1.0,
        "the ungranted request is counted"
    );
    assert!(routed("web-split", &format!("web.{shop}:80")) >= 1.0);
    assert!(routed("team-web", &format!("web.{team}:80")) >= 1.0);
}
