//! Gateway API routes in file mode, end to end: a mesh file's `routes:`
//! (the `HTTPRoute` / `GRPCRoute` spec shape) reach the client's proxy
//! through the real control plane, and real clients (curl, a grpcio
//! channel) see each route's effect at real apps: a weighted split
//! measured over 1,000 requests, a header match to a canary, path-prefix
//! precedence, a redirect, header modifiers, a per-route timeout and
//! retry, a backend with no endpoints failing only its share, a route
//! change taking new requests while one in flight finishes, a GRPCRoute by
//! method, and the route metrics counted by value.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

#[path = "support/harness.rs"]
mod harness;
#[path = "support/http_app.rs"]
mod http_app;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use harness::{Manual, curl_status, eventually, metric, metric_or_absent};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

/// An app named `name`: it answers with a JSON line naming itself and
/// what it got (path, the `x-route` and `x-drop` headers). `?ms=N`
/// answers after N ms; `/flaky` answers 503 to every other request, the
/// first included.
fn app(name: &'static str) -> SocketAddr {
    let flaky = Arc::new(AtomicU64::new(0));
    http_app::spawn(move |req: hyper::Request<hyper::body::Incoming>| {
        let flaky = flaky.clone();
        async move {
            if let Some(ms) = req.uri().query().and_then(|q| q.strip_prefix("ms=")) {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            }
            let header = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
            let json = serde_json::json!({
                "app": name,
                "path": req.uri().path(),
                "xRoute": header("x-route"),
                "xDrop": header("x-drop"),
            });
            let status = if req.uri().path() == "/flaky"
                && flaky.fetch_add(1, Ordering::SeqCst).is_multiple_of(2)
            {
                503
            } else {
                200
            };
            Ok::<_, std::convert::Infallible>(
                hyper::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(format!("{json}\n"))).boxed_unsync())
                    .unwrap(),
            )
        }
    })
}

/// Which app answered each JSON line of `out` (`"<status>"` lines, as
/// `-w` writes them for a response without a body, count as themselves).
fn answered_by(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match serde_json::from_str::<serde_json::Value>(l) {
            Ok(v) if v.get("app").is_some() => v["app"].as_str().unwrap().to_owned(),
            _ => l.trim().to_owned(),
        })
        .collect()
}

fn count(of: &[String], what: &str) -> usize {
    of.iter().filter(|s| *s == what).count()
}

const ROUTES: &str = "\
routes:
  - kind: HTTPRoute
    name: web
    spec:
      parentRefs: [{name: web}]
      rules:
        - matches: [{headers: [{name: x-canary, value: \"1\"}]}]
          backendRefs: [{name: web-v2}]
        - matches: [{path: {type: PathPrefix, value: /split}}]
          backendRefs: [{name: web-v1, weight: 90}, {name: web-v2, weight: 10}]
        - matches: [{path: {type: PathPrefix, value: /api}}]
          backendRefs: [{name: web-v1}]
        - matches: [{path: {type: PathPrefix, value: /api/v2}}]
          backendRefs: [{name: web-v2}]
        - matches: [{path: {type: Exact, value: /old}}]
          filters:
            - type: RequestRedirect
              requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 301}
        - matches: [{path: {value: /modified}}]
          filters:
            - type: RequestHeaderModifier
              requestHeaderModifier: {set: [{name: x-route, value: modified}], remove: [x-drop]}
            - type: ResponseHeaderModifier
              responseHeaderModifier: {add: [{name: x-served-by-route, value: \"yes\"}]}
          backendRefs: [{name: web-v1}]
        - matches: [{path: {value: /slow}}]
          timeouts: {request: 300ms}
          backendRefs: [{name: web-v1}]
        - matches: [{path: {value: /flaky}}]
          retry: {codes: [503], attempts: 2}
          backendRefs: [{name: web-v1}]
        - matches: [{path: {value: /half-gone}}]
          backendRefs: [{name: web-v1, weight: 50}, {name: web-gone, weight: 50}]
";

fn mesh(v1: SocketAddr, v2: SocketAddr, routes: &str) -> String {
    let gone = harness::closed_port();
    format!(
        "trustDomain: phoenix.local\nstateDir: state\nworkloads:\n  \
           - name: client\n    upstreams: [{{service: web, listen: \"127.0.0.1:0\", protocol: http1}}]\n  \
           - name: web-v1\n    serve: [{{service: web, target: \"{v1}\"}}, {{service: web-v1, target: \"{v1}\"}}]\n  \
           - name: web-v2\n    serve: [{{service: web-v2, target: \"{v2}\"}}]\n  \
           - name: web-gone\n    serve: [{{service: web-gone, target: \"{gone}\"}}]\n{routes}"
    )
}

/// How many endpoints the client's proxy knows for `service`.
fn endpoints(m: &Manual, service: &str) -> Option<usize> {
    Some(
        m.config("client")["config"]["resources"][format!("upstream/{service}")]["endpoints"]
            .as_array()?
            .len(),
    )
}

fn route_requests(metrics: &str, backend: &str) -> f64 {
    metric_or_absent(
        metrics,
        "route_request_total",
        &[
            ("route_name", "web"),
            ("route_namespace", "default"),
            ("route_kind", "HTTPRoute"),
            ("backend", backend),
        ],
    )
}

#[test]
fn http_routes_split_match_redirect_modify_time_out_and_retry() {
    let (v1, v2) = (app("web-v1"), app("web-v2"));
    let yaml = mesh(v1, v2, ROUTES);
    // web-gone's proxy is never started: its service has no endpoints.
    let mut m = Manual::new(&yaml, &["client", "web-v1", "web-v2"]);
    m.start_control_plane("127.0.0.1:0");
    for w in ["web-v1", "web-v2", "client"] {
        m.start_proxy(w, &[]);
    }
    eventually(Duration::from_secs(20), "backends known", || {
        (endpoints(&m, "web-v1") == Some(1)
            && endpoints(&m, "web-v2") == Some(1)
            && endpoints(&m, "web-gone") == Some(0))
        .then_some(())
    });
    let url = format!("http://{}", m.outbound("client", "web"));

    // A 90/10 split, per request, over 1,000 requests on one keep-alive
    // connection (curl reuses it across a URL glob).
    let (out, code) = curl_status(&[&format!("{url}/split/[1-1000]")]);
    assert_eq!(code, 0, "{out}");
    let by = answered_by(&out);
    assert_eq!(by.len(), 1000);
    let canary = count(&by, "web-v2");
    assert_eq!(canary + count(&by, "web-v1"), 1000, "{by:?}");
    assert!(
        (70..=130).contains(&canary),
        "the canary took {canary} of 1000 (want 7% to 13%)"
    );
    let metrics = m.metrics("client");
    assert_eq!(route_requests(&metrics, "web-v2"), canary as f64);
    assert_eq!(route_requests(&metrics, "web-v1"), (1000 - canary) as f64);

    // A header match sends any path to the canary; without it, a path no
    // rule takes is a 404 (counted), never the parent service.
    let (out, _) = curl_status(&["-H", "x-canary: 1", &format!("{url}/anything")]);
    assert_eq!(answered_by(&out), ["web-v2"]);
    let (out, _) = curl_status(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{url}/anything"),
    ]);
    assert_eq!(out, "404");
    assert_eq!(
        metric(
            &m.metrics("client"),
            "http_errors_total",
            &[("direction", "outbound"), ("reason", "route_not_found")]
        ),
        1.0
    );

    // The longest prefix wins, by whole segments.
    for (path, want) in [
        ("/api/x", "web-v1"),
        ("/api/v2/x", "web-v2"),
        ("/api/v2", "web-v2"),
        ("/api/v2x", "web-v1"),
    ] {
        let (out, _) = curl_status(&[&format!("{url}{path}")]);
        assert_eq!(answered_by(&out), [want], "{path}");
    }

    // A redirect, answered by the proxy, keeping the authority.
    let (out, _) = curl_status(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        &format!("{url}/old?x=1"),
    ]);
    assert_eq!(out, format!("301 {url}/new?x=1"));

    // Header modifiers: the app sees the set header and not the removed
    // one; the client sees the added response header.
    let (out, _) = curl_status(&[
        "-D",
        "-",
        "-H",
        "x-drop: secret",
        "-H",
        "x-route: client-said",
        &format!("{url}/modified"),
    ]);
    let body = out.lines().last().unwrap();
    let seen: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(seen["xRoute"], "modified", "{out}");
    assert_eq!(seen["xDrop"], serde_json::Value::Null, "{out}");
    assert!(
        out.to_ascii_lowercase().contains("x-served-by-route: yes"),
        "{out}"
    );

    // The route's request timeout (300 ms) ends a 3 s request with 504.
    let started = Instant::now();
    let (out, _) = curl_status(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{url}/slow?ms=3000"),
    ]);
    assert_eq!(out, "504");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // The route's retry turns the flaky app's 503 into a 200.
    let (out, _) = curl_status(&["-w", "%{http_code}", &format!("{url}/flaky")]);
    assert!(out.ends_with("200"), "{out}");
    assert_eq!(
        metric(&m.metrics("client"), "retry_total", &[("service", "web")]),
        1.0
    );

    // Half the requests go to a backend with no endpoints: they alone
    // fail (503), the other half reach web-v1.
    let (out, _) = curl_status(&[
        "-w",
        "\n%{http_code}\n",
        &format!("{url}/half-gone/[1-200]"),
    ]);
    let by = answered_by(&out);
    let ok = count(&by, "web-v1");
    let codes: Vec<&String> = by
        .iter()
        .filter(|s| s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    let failed = codes.iter().filter(|c| c.as_str() == "503").count();
    let succeeded = codes.iter().filter(|c| c.as_str() == "200").count();
    assert_eq!(ok, succeeded, "every 200 came from web-v1: {by:?}");
    assert_eq!(succeeded + failed, 200, "{by:?}");
    assert!((60..=140).contains(&failed), "{failed} of 200 failed");
    let metrics = m.metrics("client");
    assert_eq!(
        metric(
            &metrics,
            "http_errors_total",
            &[("direction", "outbound"), ("reason", "backend_unavailable")]
        ),
        failed as f64
    );
    assert_eq!(
        metric_or_absent(
            &metrics,
            "route_response_total",
            &[
                ("route_name", "web"),
                ("backend", "web-gone"),
                ("status_code", "503"),
                ("classification", "failure"),
            ]
        ),
        failed as f64
    );

    // A route change applies to new requests; one in flight finishes.
    let in_flight = {
        let url = url.clone();
        std::thread::spawn(move || {
            curl_status(&["-w", " %{http_code}", &format!("{url}/split/long?ms=1500")])
        })
    };
    eventually(
        Duration::from_secs(10),
        "the long request in flight",
        || {
            (metric_or_absent(
                &m.metrics("client"),
                "request_total",
                &[("direction", "outbound"), ("service", "web")],
            ) >= 1211.0)
                .then_some(())
        },
    );
    let all_canary = ROUTES.replace(
        "[{name: web-v1, weight: 90}, {name: web-v2, weight: 10}]",
        "[{name: web-v1, weight: 0}, {name: web-v2, weight: 100}]",
    );
    std::fs::write(&m.mesh_path, mesh(v1, v2, &all_canary)).unwrap();
    eventually(Duration::from_secs(10), "the new split installed", || {
        let routes = m.config("client")["config"]["resources"]["upstream/web"]["routes"].clone();
        (routes[0]["rules"][1]["backends"][0]["weight"] == 0).then_some(())
    });
    let (out, _) = curl_status(&[&format!("{url}/split/[1-50]")]);
    assert_eq!(count(&answered_by(&out), "web-v2"), 50, "{out}");
    let (out, code) = in_flight.join().unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.ends_with(" 200"),
        "the request in flight finished: {out}"
    );
}

/// A GRPCRoute on `echo` sends `/echo.Echo/Unary` to echo-v2 and the
/// service's other methods to echo-v1: one grpcio channel's calls split by
/// method, streams and trailers intact.
#[test]
fn grpc_routes_pick_the_backend_by_method() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/grpc_echo.py");
    let mut servers = Vec::new();
    let mut ports = Vec::new();
    for name in ["v1", "v2"] {
        let mut cmd = Command::new("python3");
        cmd.args([script, "serve", name]);
        let server = harness::Proc::spawn("grpc server", cmd);
        ports.push(server.line(Duration::from_secs(30)).trim().to_owned());
        servers.push(server);
    }
    let yaml = format!(
        "trustDomain: phoenix.local\nstateDir: state\nworkloads:\n  \
           - name: client\n    upstreams: [{{service: echo, listen: \"127.0.0.1:0\"}}]\n  \
           - name: echo-v1\n    serve: [{{service: echo, target: \"127.0.0.1:{p1}\", protocol: http2}}, {{service: echo-v1, target: \"127.0.0.1:{p1}\", protocol: http2}}]\n  \
           - name: echo-v2\n    serve: [{{service: echo-v2, target: \"127.0.0.1:{p2}\", protocol: http2}}]\n\
         routes:\n  \
           - kind: GRPCRoute\n    name: echo\n    spec:\n      parentRefs: [{{name: echo}}]\n      rules:\n        \
               - matches: [{{method: {{service: echo.Echo, method: Unary}}}}]\n          backendRefs: [{{name: echo-v2}}]\n        \
               - matches: [{{method: {{service: echo.Echo}}}}]\n          backendRefs: [{{name: echo-v1}}]\n",
        p1 = ports[0],
        p2 = ports[1],
    );
    let mut m = Manual::new(&yaml, &["client", "echo-v1", "echo-v2"]);
    m.start_control_plane("127.0.0.1:0");
    for w in ["echo-v1", "echo-v2", "client"] {
        m.start_proxy(w, &[]);
    }
    eventually(Duration::from_secs(20), "backends known", || {
        (endpoints(&m, "echo-v1") == Some(1) && endpoints(&m, "echo-v2") == Some(1)).then_some(())
    });
    let addr = m.outbound("client", "echo").to_string();
    let out = Command::new("python3")
        .args([script, "call", &addr, "20"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["served"], serde_json::json!({"v2": 20}), "{got}");
    assert_eq!(got["trailersOk"], 20);
    assert_eq!(got["streamServedBy"], serde_json::json!(["v1"]), "{got}");
    assert_eq!(got["bidiServedBy"], serde_json::json!(["v1"]), "{got}");
    assert_eq!(got["stream"], serde_json::json!(["0", "1", "2", "3", "4"]));
    let metrics = m.metrics("client");
    let routed = |backend: &str| {
        metric_or_absent(
            &metrics,
            "route_request_total",
            &[("route_kind", "GRPCRoute"), ("backend", backend)],
        )
    };
    // 20 unary calls and the failing one; a stream and a bidi call.
    assert_eq!(routed("echo-v2"), 21.0);
    assert_eq!(routed("echo-v1"), 2.0);
    drop(servers);
}
