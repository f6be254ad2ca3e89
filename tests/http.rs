//! HTTP through real proxies: requests carried one by one on HTTP/3
//! streams between the proxies, balanced per request, authorized per
//! request, counted in the golden metrics, with curl as the client and
//! hyper servers as the apps.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

#[path = "support/harness.rs"]
mod harness;
#[path = "support/http_app.rs"]
mod http_app;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use harness::{Up, curl_status, eventually, metric, metric_or_absent};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use sha2::{Digest, Sha256};

/// An app named `name` speaking HTTP/1.1 and h2c on one port: it answers
/// every request with a JSON description of what it received (its name,
/// method, path, HTTP version, the headers a test checks, and the body's
/// length and SHA-256). Some paths misbehave on purpose: `/fail` answers
/// 503; `/flaky` answers 503 to every other request (the first included);
/// `/slow?ms=N` answers after N ms; `/stall` sends its head and one chunk,
/// then nothing, forever; `/big` answers [`BIG`] bytes; `/upgrade`
/// switches to the protocol `echo` (bytes back as they come) when asked to.
/// An app named `slow-*` takes 200 ms per request, one named `broken-*`
/// answers every request with 503.
fn app(name: &'static str) -> SocketAddr {
    let flaky = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stalled = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    http_app::spawn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (flaky, stalled) = (flaky.clone(), stalled.clone());
        async move {
            if req.uri().path() == "/upgrade" {
                return Ok(upgrade_echo(req));
            }
            let (parts, body) = req.into_parts();
            if parts.uri.path() == "/big" {
                let big: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
                return Ok::<_, std::convert::Infallible>(hyper::Response::new(
                    Full::new(Bytes::from(big)).boxed_unsync(),
                ));
            }
            if parts.uri.path() == "/stall" {
                let (mut tx, body) =
                    http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(1);
                let _ = tx.send_data(Bytes::from_static(b"first chunk")).await;
                // Never dropped: the body never ends.
                stalled.lock().unwrap().push(tx);
                return Ok::<_, std::convert::Infallible>(hyper::Response::new(
                    body.boxed_unsync(),
                ));
            }
            if name.starts_with("slow-") {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if let Some(ms) = parts.uri.query().and_then(|q| q.strip_prefix("ms=")) {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            }
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let header = |n: &str| {
                parts
                    .headers
                    .get_all(n)
                    .iter()
                    .map(|v| v.to_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
            };
            let mesh_headers: Vec<String> = parts
                .headers
                .keys()
                .map(|k| k.as_str().to_owned())
                .filter(|k| k.starts_with("phoenix-") && k != "phoenix-client-id")
                .collect();
            let json = serde_json::json!({
                "app": name,
                "method": parts.method.as_str(),
                "path": parts.uri.path(),
                "version": format!("{:?}", parts.version),
                "host": header("host"),
                "authority": parts.uri.authority().map(|a| a.to_string()),
                "clientId": header("phoenix-client-id"),
                "traceparent": header("traceparent"),
                "otherMeshHeaders": mesh_headers,
                "len": body.len(),
                "sha256": hex(&Sha256::digest(&body)),
            });
            let flaked = parts.uri.path() == "/flaky"
                && flaky.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 2 == 0;
            let status = if parts.uri.path() == "/fail" || flaked || name.starts_with("broken-") {
                503
            } else {
                200
            };
            Ok::<_, std::convert::Infallible>(
                hyper::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(json.to_string())).boxed_unsync())
                    .unwrap(),
            )
        }
    })
}

/// `/upgrade`: 101 to `Upgrade: echo`, then every byte back; 426 to a
/// request that does not ask.
fn upgrade_echo(
    mut req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>> {
    let empty = || Full::new(Bytes::new()).boxed_unsync();
    if req.headers().get("upgrade").is_none_or(|v| v != "echo") {
        return hyper::Response::builder()
            .status(426)
            .body(empty())
            .unwrap();
    }
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on.await {
            let (mut r, mut w) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    hyper::Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(empty())
        .unwrap()
}

/// The size of `/big`'s answer, and of the big upload: 64 MiB.
const BIG: usize = 64 * 1024 * 1024;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs curl with `args`; its stdout.
fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The JSON objects in `text` (one per response, as the apps answer).
fn responses(text: &str) -> Vec<serde_json::Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<serde_json::Value>()
        .map(Result::unwrap)
        .collect()
}

fn mesh(workloads: &str) -> String {
    format!("trustDomain: phoenix.local\nstateDir: state\nworkloads:\n{workloads}")
}

const CLIENT_ID: &str = "spiffe://phoenix.local/ns/default/sa/client";

/// HTTP/1.1 on a port declared `http1`: a keep-alive connection's requests and a
/// chunked upload reach the app intact, with the client's verified
/// identity (a spoofed one dropped), the client's `Host` and trace headers,
/// and the golden metrics count exactly what curl sent.
#[test]
fn http1_requests_cross_with_identity_headers_and_golden_metrics() {
    let target = app("web");
    let up = Up::start(&mesh(&format!(
        "  - name: client\n    upstreams: [{{service: web, listen: \"127.0.0.1:0\", protocol: http1}}]\n  \
           - name: web\n    serve: [{{service: web, target: \"{target}\", allow: [client], protocol: http1}}]\n"
    )));
    let url = format!("http://{}", up.outbound("client", "web"));
    // Three requests on one keep-alive connection, the last a chunked
    // 1 MiB upload.
    let upload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let upload_path = up.dir.path().join("upload.bin");
    std::fs::write(&upload_path, &upload).unwrap();
    let out = curl(&[
        "-H",
        "Host: web.example",
        "-H",
        "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "-H",
        "phoenix-client-id: spiffe://phoenix.local/ns/default/sa/admin",
        "-H",
        "phoenix-dst-service: other",
        &format!("{url}/a"),
        &format!("{url}/b"),
        "--next",
        "-H",
        "Host: web.example",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &format!("@{}", upload_path.display()),
        &format!("{url}/upload"),
        "-w",
        "\n%{num_connects}\n",
    ]);
    let (json, connects) = out
        .rsplit_once('\n')
        .map(|(a, _)| a.rsplit_once('\n').unwrap())
        .unwrap();
    let got = responses(json);
    assert_eq!(got.len(), 3, "{out}");
    for r in &got {
        assert_eq!(r["app"], "web");
        assert_eq!(
            r["clientId"],
            serde_json::json!([CLIENT_ID]),
            "the verified identity, the spoofed one gone: {r}"
        );
        assert_eq!(
            r["host"],
            serde_json::json!(["web.example"]),
            "Host kept: {r}"
        );
        assert_eq!(
            r["otherMeshHeaders"],
            serde_json::json!([]),
            "no mesh header reaches the app: {r}"
        );
        assert_eq!(
            r["version"], "HTTP/1.1",
            "the app is spoken to as the client spoke: {r}"
        );
    }
    assert_eq!(
        got[0]["traceparent"],
        serde_json::json!(["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"])
    );
    assert_eq!(got[2]["method"], "POST");
    assert_eq!(got[2]["len"], upload.len());
    assert_eq!(got[2]["sha256"], hex(&Sha256::digest(&upload)));
    assert_eq!(
        connects.trim(),
        "0",
        "the upload reused the keep-alive connection"
    );

    let client = up.metrics("client");
    let out_labels = [("direction", "outbound"), ("service", "web")];
    assert_eq!(metric(&client, "request_total", &out_labels), 3.0);
    assert_eq!(
        metric(
            &client,
            "response_total",
            &[
                ("direction", "outbound"),
                ("status_code", "200"),
                ("classification", "success"),
                ("peer_identity", "spiffe://phoenix.local/ns/default/sa/web")
            ]
        ),
        3.0
    );
    assert_eq!(
        metric(&client, "response_latency_seconds_count", &out_labels),
        3.0
    );
    assert_eq!(
        metric_or_absent(&client, "protocol_detect_total", &[("result", "http1")]),
        0.0,
        "a declared port detects nothing"
    );
    let web = up.metrics("web");
    assert_eq!(
        metric(
            &web,
            "request_total",
            &[("direction", "inbound"), ("service", "web")]
        ),
        3.0
    );
    assert_eq!(
        metric(
            &web,
            "response_total",
            &[
                ("direction", "inbound"),
                ("peer_identity", CLIENT_ID),
                ("classification", "success")
            ]
        ),
        3.0
    );
    // HTTP went over the HTTP/3 connection, not the tunnel's.
    assert_eq!(
        metric_or_absent(&client, "tcp_open_total", &[("direction", "outbound")]),
        0.0
    );
}

/// A service whose allow-list does not name the client answers every
/// request with 403 at the server's proxy, counted there and at the client.
#[test]
fn a_denied_identity_gets_403_per_request() {
    let target = app("web");
    let up = Up::start(&mesh(&format!(
        "  - name: client\n    upstreams: [{{service: web, listen: \"127.0.0.1:0\", protocol: http1}}]\n  \
           - name: web\n    serve: [{{service: web, target: \"{target}\", allow: [someone-else], protocol: http1}}]\n  \
           - name: someone-else\n"
    )));
    let url = format!("http://{}/", up.outbound("client", "web"));
    let out = curl(&[
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\n",
        &url,
        &url,
    ]);
    assert_eq!(out, "403\n403\n");
    let web = up.metrics("web");
    assert_eq!(
        metric(
            &web,
            "http_errors_total",
            &[("direction", "inbound"), ("reason", "denied")]
        ),
        2.0
    );
    assert_eq!(
        metric(&web, "authz_deny_total", &[("client_id", CLIENT_ID)]),
        2.0
    );
    let client = up.metrics("client");
    assert_eq!(
        metric(
            &client,
            "response_total",
            &[("direction", "outbound"), ("status_code", "403")]
        ),
        2.0
    );
}

/// A server-first service (an SMTP-like banner) on a `detect` port gets
/// its banner: detection gives up on the silent client after its bound
/// (counted as `timeout`; the bound itself is tested on tokio's paused
/// clock in `proxy/src/http/detect.rs`), and on a port declared opaque
/// nothing is read or counted at all.
#[test]
fn a_server_first_banner_arrives_on_detect_and_opaque_ports() {
    let banner = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let mut s = s.unwrap();
                s.write_all(b"220 banner ready\r\n").unwrap();
                let mut line = [0u8; 64];
                let n = s.read(&mut line).unwrap_or(0);
                let _ = s.write_all(&line[..n]);
            }
        });
        addr
    };
    let (detect, opaque) = (banner(), banner());
    let up = Up::start(&mesh(&format!(
        "  - name: client\n    upstreams: [{{service: mail, listen: \"127.0.0.1:0\"}}, {{service: db, listen: \"127.0.0.1:0\", protocol: opaque}}]\n  \
           - name: server\n    serve: [{{service: mail, target: \"{detect}\"}}, {{service: db, target: \"{opaque}\", protocol: opaque}}]\n"
    )));
    for service in ["mail", "db"] {
        let mut c = TcpStream::connect(up.outbound("client", service)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = [0u8; 18];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"220 banner ready\r\n", "{service}");
        c.write_all(b"QUIT\r\n").unwrap();
        let mut echo = [0u8; 6];
        c.read_exact(&mut echo).unwrap();
        assert_eq!(
            &echo, b"QUIT\r\n",
            "{service}: the client's bytes flow after the banner"
        );
    }
    let client = up.metrics("client");
    assert_eq!(
        metric(&client, "protocol_detect_total", &[("result", "timeout")]),
        1.0,
        "only the detect port waited"
    );
    assert_eq!(
        metric(&client, "protocol_detect_total", &[]),
        1.0,
        "the opaque port read nothing"
    );
    assert_eq!(
        metric(&client, "tcp_open_total", &[("direction", "outbound")]),
        2.0,
        "both went through the tunnel"
    );
}

/// A real WebSocket client and server (PyPI websockets) through the mesh,
/// on a port that detects and on one declared `http1`: the upgrade (the
/// connection's first request) sends the connection on as bytes, and text
/// messages and a 1 MiB binary one come back whole.
#[test]
fn websocket_clients_upgrade_and_echo_both_ways() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/ws_echo.py");
    let mut cmd = Command::new("python3");
    cmd.args([script, "serve"]);
    let server = harness::Proc::spawn("websocket server", cmd);
    let port = server.line(Duration::from_secs(30)).trim().to_owned();
    let up = Up::start(&mesh(&format!(
        "  - name: client\n    upstreams: [{{service: ws, listen: \"127.0.0.1:0\"}}, {{service: ws-h1, listen: \"127.0.0.1:0\", protocol: http1}}]\n  \
           - name: server\n    serve: [{{service: ws, target: \"127.0.0.1:{port}\"}}, {{service: ws-h1, target: \"127.0.0.1:{port}\", protocol: http1}}]\n"
    )));
    for service in ["ws", "ws-h1"] {
        let url = format!("ws://{}/chat", up.outbound("client", service));
        let out = run(Command::new("python3").args([script, "call", &url, "20"]));
        let got: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(
            got,
            serde_json::json!({"text": 20, "binary": 1, "bytes": 1 << 20}),
            "{service}"
        );
    }
    let client = up.metrics("client");
    assert_eq!(
        metric(&client, "protocol_detect_total", &[("result", "upgrade")]),
        2.0
    );
    eventually(
        Duration::from_secs(5),
        "the tunnel counted both connections",
        || {
            (metric(
                &up.metrics("client"),
                "tcp_open_total",
                &[("direction", "outbound")],
            ) == 2.0)
                .then_some(())
        },
    );
}

/// Reads one HTTP/1.1 response head from `c`, and its body when it has a
/// `content-length`; the head.
fn read_response(c: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        c.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).unwrap();
    head
}

/// A client that upgrades on a later request of a keep-alive connection
/// (its first was a plain GET, carried over HTTP/3): the upgrading request
/// goes to the app on a tunnel stream, the app's 101 reaches the client
/// with its `Upgrade`, and from then on bytes flow both ways on the same
/// client connection. A request asking for no upgrade on that path stays
/// an ordinary response (426 here) and the connection goes on.
#[test]
fn an_upgrade_on_a_later_keep_alive_request_goes_on_as_bytes() {
    let web = app("web");
    let up = Up::start(&mesh(&format!(
        "  - name: client\n    upstreams: [{{service: web, listen: \"127.0.0.1:0\"}}]\n  \
           - name: server\n    serve: [{{service: web, target: \"{web}\"}}]\n"
    )));
    let mut c = TcpStream::connect(up.outbound("client", "web")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /a HTTP/1.1\r\nHost: web\r\n\r\n")
        .unwrap();
    assert!(read_response(&mut c).starts_with("http/1.1 200"));
    c.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: web\r\nUpgrade: other\r\nConnection: upgrade\r\n\r\n",
    )
    .unwrap();
    assert!(read_response(&mut c).starts_with("http/1.1 426"));
    c.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: web\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\n",
    )
    .unwrap();
    let head = read_response(&mut c);
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for round in 0..3 {
        let bytes = format!("bytes after the upgrade, round {round}\r\n\r\n");
        c.write_all(bytes.as_bytes()).unwrap();
        let mut echo = vec![0u8; bytes.len()];
        c.read_exact(&mut echo).unwrap();
        assert_eq!(echo, bytes.as_bytes());
    }
    let client = up.metrics("client");
    assert_eq!(
        metric(&client, "protocol_detect_total", &[("result", "http1")]),
        1.0,
        "the connection started as HTTP"
    );
    eventually(Duration::from_secs(5), "three responses counted", || {
        let client = up.metrics("client");
        let count = |code: &str| {
            metric_or_absent(
                &client,
                "response_total",
                &[("direction", "outbound"), ("status_code", code)],
            )
        };
        (count("200") == 1.0 && count("426") == 1.0 && count("101") == 1.0).then_some(())
    });
}

/// Waits until `workload`'s proxy knows `n` endpoints of `service`.
fn wait_endpoints(up: &Up, workload: &str, service: &str, n: usize) {
    eventually(
        Duration::from_secs(20),
        &format!("{workload} knows {n} endpoints of {service}"),
        || {
            let config: serde_json::Value =
                serde_json::from_str(&harness::get(up.admin(workload), "/config").1).ok()?;
            let eps = config["config"]["resources"][format!("upstream/{service}")]["endpoints"]
                .as_array()?
                .len();
            (eps == n).then_some(())
        },
    );
}

/// Waits until the client proxy of a hand-started mesh knows `n`
/// endpoints of `service`.
fn wait_manual_endpoints(m: &harness::Manual, service: &str, n: usize) {
    eventually(
        Duration::from_secs(20),
        &format!("client knows {n} endpoints of {service}"),
        || {
            let eps = m.config("client")["config"]["resources"][format!("upstream/{service}")]
                ["endpoints"]
                .as_array()?
                .len();
            (eps == n).then_some(())
        },
    );
}

/// Runs `cmd`; its stdout (it must succeed).
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// One HTTP/2 connection (h2load, prior knowledge, 10 streams at a time)
/// to a service with three endpoints, on a `detect` port: its 60 requests
/// are spread over all three, the app is spoken to in HTTP/2 as the
/// client spoke, and a 503 from the app is a counted failure.
#[test]
fn one_http2_connection_is_balanced_per_request_over_every_endpoint() {
    let (a, b, c) = (app("web-a"), app("web-b"), app("web-c"));
    let up = Up::start(&mesh(&format!(
        "  - name: client\n    upstreams: [{{service: web, listen: \"127.0.0.1:0\"}}]\n  \
           - name: web-a\n    serve: [{{service: web, target: \"{a}\"}}]\n  \
           - name: web-b\n    serve: [{{service: web, target: \"{b}\"}}]\n  \
           - name: web-c\n    serve: [{{service: web, target: \"{c}\"}}]\n"
    )));
    wait_endpoints(&up, "client", "web", 3);
    let url = format!("http://{}/spread", up.outbound("client", "web"));
    let out = run(Command::new("h2load").args(["-n", "60", "-c", "1", "-m", "10", &url]));
    assert!(
        out.contains("60 succeeded, 0 failed") && out.contains("status codes: 60 2xx"),
        "{out}"
    );
    let mut total = 0.0;
    for w in ["web-a", "web-b", "web-c"] {
        let n = metric_or_absent(
            &up.metrics(w),
            "request_total",
            &[("direction", "inbound"), ("service", "web")],
        );
        assert!(n >= 5.0, "{w} took {n} of 60 requests");
        total += n;
    }
    assert_eq!(total, 60.0);
    let client = up.metrics("client");
    assert_eq!(
        metric(&client, "protocol_detect_total", &[("result", "http2")]),
        1.0,
        "one connection, detected once"
    );
    assert_eq!(
        metric(
            &client,
            "response_total",
            &[("direction", "outbound"), ("classification", "success")]
        ),
        60.0
    );

    let url = format!("http://{}", up.outbound("client", "web"));
    let got = responses(&curl(&["--http2-prior-knowledge", &format!("{url}/one")]));
    assert_eq!(got[0]["version"], "HTTP/2.0", "{got:?}");
    assert_eq!(got[0]["clientId"], serde_json::json!([CLIENT_ID]));
    let status = curl(&[
        "--http2-prior-knowledge",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{url}/fail"),
    ]);
    assert_eq!(status, "503");
    assert_eq!(
        metric(
            &up.metrics("client"),
            "response_total",
            &[
                ("direction", "outbound"),
                ("status_code", "503"),
                ("classification", "failure")
            ]
        ),
        1.0
    );
}

/// A real gRPC client and servers (PyPI grpcio): 300 unary calls on one
/// channel to a service with three endpoints go to all three (Kubernetes
/// alone sends them all to one), a server stream and a bidirectional
/// stream arrive whole with their trailers, and a failing call's status
/// and message reach the client (a Trailers-Only response) and its
/// `grpc_status` is counted.
#[test]
fn grpc_calls_on_one_channel_are_balanced_and_streams_keep_their_trailers() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/grpc_echo.py");
    let mut servers = Vec::new();
    let mut ports = Vec::new();
    for name in ["a", "b", "c"] {
        let mut cmd = Command::new("python3");
        cmd.args([script, "serve", name]);
        let server = harness::Proc::spawn("grpc server", cmd);
        ports.push(server.line(Duration::from_secs(30)).trim().to_owned());
        servers.push(server);
    }
    let up = Up::start(&mesh(&format!(
        "  - name: client\n    upstreams: [{{service: echo, listen: \"127.0.0.1:0\"}}]\n  \
           - name: echo-a\n    serve: [{{service: echo, target: \"127.0.0.1:{}\", protocol: http2}}]\n  \
           - name: echo-b\n    serve: [{{service: echo, target: \"127.0.0.1:{}\", protocol: http2}}]\n  \
           - name: echo-c\n    serve: [{{service: echo, target: \"127.0.0.1:{}\", protocol: http2}}]\n",
        ports[0], ports[1], ports[2]
    )));
    wait_endpoints(&up, "client", "echo", 3);
    let addr = up.outbound("client", "echo").to_string();
    let out = run(Command::new("python3").args([script, "call", &addr, "300"]));
    let got: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for s in ["a", "b", "c"] {
        let n = got["served"][s].as_u64().unwrap_or(0);
        // Peak-EWMA follows latency, so the shares follow how fast each
        // server answers on this noisy machine (37 to 143 seen); the point
        // is that none is starved, where Kubernetes alone gives 300/0/0.
        assert!(n >= 20, "{s} served {n} of 300: {got}");
    }
    assert_eq!(got["trailersOk"], 300, "every call's trailers: {got}");
    assert_eq!(got["stream"], serde_json::json!(["0", "1", "2", "3", "4"]));
    assert_eq!(got["bidi"], serde_json::json!(["a", "b", "c"]));
    assert_eq!(
        got["failed"],
        serde_json::json!({"code": "NOT_FOUND", "details": "no such thing"})
    );
    let client = up.metrics("client");
    let grpc = |status: &str| {
        metric_or_absent(
            &client,
            "response_total",
            &[("direction", "outbound"), ("grpc_status", status)],
        )
    };
    assert_eq!(grpc("0"), 302.0, "300 unary calls and two streams");
    assert_eq!(grpc("5"), 1.0, "NOT_FOUND");
    assert_eq!(
        metric(
            &client,
            "response_total",
            &[("direction", "outbound"), ("classification", "failure")]
        ),
        1.0
    );
}

/// A rolling upgrade: a peer from before HTTP/3 (a proxy run with
/// `--inbound-http3 false`, which offers only the tunnel ALPN, exactly as
/// earlier versions did) still gets HTTP requests, each inside a tunnel
/// stream, while an upgraded peer of the same service gets them over
/// HTTP/3. One HTTP/2 connection spreads over both, and HTTP/1.1
/// requests, a POST body among them, reach either intact.
#[test]
fn http_reaches_a_peer_from_before_http3_inside_tunnel_streams() {
    let (new, old) = (app("web-new"), app("web-old"));
    let yaml = mesh(&format!(
        "  - name: client\n    upstreams: [{{service: web, listen: \"127.0.0.1:0\"}}, {{service: old, listen: \"127.0.0.1:0\"}}]\n  \
           - name: web-new\n    serve: [{{service: web, target: \"{new}\"}}]\n  \
           - name: web-old\n    serve: [{{service: web, target: \"{old}\"}}, {{service: old, target: \"{old}\"}}]\n"
    ));
    let mut m = harness::Manual::new(&yaml, &["client", "web-new", "web-old"]);
    m.start_control_plane("127.0.0.1:0");
    m.start_proxy("web-new", &[]);
    m.start_proxy("web-old", &["--inbound-http3", "false"]);
    m.start_proxy("client", &[]);
    let addr = m.outbound("client", "web");
    wait_manual_endpoints(&m, "web", 2);
    let url = format!("http://{addr}/mixed");
    let out = run(Command::new("h2load").args(["-n", "40", "-c", "1", "-m", "4", &url]));
    assert!(out.contains("40 succeeded, 0 failed"), "{out}");
    let served_new = metric_or_absent(
        &m.metrics("web-new"),
        "request_total",
        &[("direction", "inbound")],
    );
    // The old peer counts each stream as it connects to its app.
    let served_old = eventually(Duration::from_secs(10), "old peer's streams", || {
        let n = metric_or_absent(
            &m.metrics("web-old"),
            "tcp_open_total",
            &[("direction", "inbound")],
        );
        (n + served_new == 40.0).then_some(n)
    });
    // Both take requests; the balancer, comparing latency and requests in
    // flight, favours the upgraded peer, whose requests finish sooner.
    assert!(
        served_new >= 1.0 && served_old >= 1.0,
        "both peers served: new {served_new}, old {served_old}"
    );
    let old_metrics = m.metrics("web-old");
    assert_eq!(
        metric_or_absent(&old_metrics, "request_total", &[("direction", "inbound")]),
        0.0,
        "the old peer saw bytes, not HTTP"
    );

    // HTTP/1.1 to the old peer alone: keep-alive, a POST body.
    let old_addr = m.outbound("client", "old");
    let body = "x".repeat(100_000);
    let mut args = vec![
        "-H".to_owned(),
        "phoenix-client-id: spiffe://phoenix.local/ns/default/sa/admin".to_owned(),
    ];
    for i in 0..8 {
        args.push(format!("http://{old_addr}/get{i}"));
    }
    args.extend([
        "--next".to_owned(),
        "--data-binary".to_owned(),
        body.clone(),
        format!("http://{old_addr}/post"),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let got = responses(&curl(&args));
    assert_eq!(got.len(), 9);
    for r in &got {
        assert_eq!(r["app"], "web-old");
        assert_eq!(r["version"], "HTTP/1.1", "{r}");
        assert_eq!(r["path"].as_str().map(|p| p.starts_with('/')), Some(true));
        assert_eq!(r["otherMeshHeaders"], serde_json::json!([]), "{r}");
        // The old peer adds no identity; the spoofed one is gone.
        assert_eq!(r["clientId"], serde_json::json!([]), "{r}");
    }
    assert_eq!(got[8]["method"], "POST");
    assert_eq!(got[8]["len"], body.len());
    assert_eq!(got[8]["sha256"], hex(&Sha256::digest(body.as_bytes())));
    assert_eq!(
        metric(
            &m.metrics("client"),
            "response_total",
            &[("direction", "outbound"), ("classification", "success")]
        ),
        49.0
    );
}

/// A service's `requestTimeout` ends a slow request with 504 at the
/// client's proxy, and a gRPC client's `grpc-timeout` wins when shorter
/// (DEADLINE_EXCEEDED, trailers-only). After the head, a stalled body is
/// cut at the deadline: gRPC gets DEADLINE_EXCEEDED trailers, plain HTTP a
/// reset (never a short body taken as whole). Each is counted.
#[test]
fn request_timeouts_and_grpc_deadlines_are_enforced() {
    let target = app("web");
    let up = Up::start(&mesh(&format!(
        "  - name: client\n    upstreams: [{{service: web, listen: \"127.0.0.1:0\", requestTimeout: 800ms}}]\n  \
           - name: web\n    serve: [{{service: web, target: \"{target}\"}}]\n"
    )));
    let url = format!("http://{}", up.outbound("client", "web"));
    let timed = |args: &[&str]| {
        let start = std::time::Instant::now();
        let out = curl_status(args);
        (out, start.elapsed())
    };
    // Within the timeout: answered.
    let ((out, code), _) = timed(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{url}/slow?ms=10"),
    ]);
    assert_eq!((out.as_str(), code), ("200", 0));
    // Past it: 504 at 800 ms, long before the app's 5 s.
    let ((out, code), took) = timed(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{url}/slow?ms=5000"),
    ]);
    assert_eq!((out.as_str(), code), ("504", 0));
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(4000),
        "{took:?}"
    );
    // A shorter grpc-timeout wins: DEADLINE_EXCEEDED as trailers-only.
    let ((out, _), took) = timed(&[
        "--http2-prior-knowledge",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        "content-type: application/grpc",
        "-H",
        "grpc-timeout: 200m",
        &format!("{url}/slow?ms=5000"),
    ]);
    assert!(out.contains("grpc-status: 4"), "{out}");
    assert!(took < Duration::from_millis(700), "{took:?}");
    // A body that stalls after its head: plain HTTP is cut (curl sees the
    // stream fail), gRPC ends with DEADLINE_EXCEEDED trailers.
    let ((out, code), _) = timed(&["--http2-prior-knowledge", &format!("{url}/stall")]);
    assert_ne!(code, 0, "a cut body must not look whole: {out}");
    assert_eq!(out, "first chunk");
    // nghttp prints every frame, trailers included.
    let out = run(Command::new("nghttp").args([
        "-v",
        "-H",
        "content-type: application/grpc",
        &format!("{url}/stall"),
    ]));
    let trailers = out
        .split("First response header")
        .nth(1)
        .unwrap_or_default();
    assert!(
        trailers.contains("grpc-status: 4"),
        "trailers: {out}\n{}",
        up.proc.stderr.lock().unwrap()
    );
    let client = up.metrics("client");
    assert_eq!(
        metric(
            &client,
            "http_errors_total",
            &[("direction", "outbound"), ("reason", "timeout")]
        ),
        4.0
    );
    assert_eq!(
        metric(
            &client,
            "response_total",
            &[("direction", "outbound"), ("classification", "failure")]
        ),
        4.0
    );
}

/// Retries on a flaky service (every other response a 503): every GET
/// succeeds, each 503 retried once, within the budget; a POST is never
/// retried. A service that always fails gets at most its budget's share
/// of retries (20%, no per-second allowance here), the rest counted as
/// skipped, and its clients get the 503s.
#[test]
fn retries_recover_a_flaky_service_within_a_budget() {
    let (flaky, failing) = (app("flaky"), app("failing"));
    let up = Up::start(&mesh(&format!(
        "  - name: client\n    upstreams:\n      \
             - {{service: flaky, listen: \"127.0.0.1:0\", retry: {{statusCodes: [503], budget: {{percent: 100}}}}}}\n      \
             - {{service: failing, listen: \"127.0.0.1:0\", retry: {{statusCodes: [503], maxRetries: 2, budget: {{percent: 20, minPerSecond: 0}}}}}}\n  \
           - name: flaky\n    serve: [{{service: flaky, target: \"{flaky}\"}}]\n  \
           - name: failing\n    serve: [{{service: failing, target: \"{failing}\"}}]\n"
    )));
    let url = format!("http://{}/flaky", up.outbound("client", "flaky"));
    let urls = vec![url.as_str(); 10];
    let mut get = vec!["-w", "%{http_code}\n"];
    for u in &urls {
        get.extend(["-o", "/dev/null", u]);
    }
    let (out, _) = curl_status(&get);
    assert_eq!(out, "200\n".repeat(10), "every GET succeeded");
    let client = up.metrics("client");
    let retries = metric(&client, "retry_total", &[("service", "flaky")]);
    let flaky_503 = metric(
        &up.metrics("flaky"),
        "response_total",
        &[("direction", "inbound"), ("status_code", "503")],
    );
    assert_eq!(retries, flaky_503, "each 503 the app sent was retried");
    assert!(retries >= 10.0, "{retries}");

    // A POST is not idempotent: its 503 reaches the client.
    let post = |n: usize| {
        let mut args = vec!["-w".to_owned(), "%{http_code}\n".to_owned()];
        for _ in 0..n {
            args.extend([
                "-o".into(),
                "/dev/null".into(),
                "-d".into(),
                "x".into(),
                url.clone(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl_status(&args).0
    };
    let out = post(2);
    assert_eq!(out.lines().filter(|l| *l == "503").count(), 1, "{out}");
    assert_eq!(
        metric(
            &up.metrics("client"),
            "retry_total",
            &[("service", "flaky")]
        ),
        retries,
        "no POST retried"
    );

    // Always failing: retries stay within 20% of 50 requests.
    let url = format!("http://{}/fail", up.outbound("client", "failing"));
    let mut get = vec!["-w", "%{http_code}\n"];
    let urls = vec![url.as_str(); 50];
    for u in &urls {
        get.extend(["-o", "/dev/null", u]);
    }
    let (out, _) = curl_status(&get);
    assert_eq!(out, "503\n".repeat(50));
    let client = up.metrics("client");
    let retried = metric_or_absent(&client, "retry_total", &[("service", "failing")]);
    let skipped = metric(
        &client,
        "retry_skipped_total",
        &[("service", "failing"), ("reason", "budget")],
    );
    // Each retry costs five requests' deposits: about one request in five
    // is retried, every other failure ends on a skipped retry.
    assert!(retried <= 11.0, "{retried} retries for 50 requests");
    assert!(retried >= 5.0, "the budget allows some: {retried}");
    assert!(skipped >= 40.0, "{skipped} skipped");
    let served = metric(
        &up.metrics("failing"),
        "request_total",
        &[("direction", "inbound")],
    );
    assert_eq!(
        served,
        50.0 + retried,
        "the service saw only the budgeted extra load"
    );
}

/// The balancer learns: sequential requests (never two in flight, so
/// outstanding counts alone would split them evenly) avoid an endpoint
/// that takes 200 ms where the others take about one (peak-EWMA, whose
/// peaks fade over seconds: a fast endpoint's slower first request, which
/// opens its proxy's connection to the app, still costs far less), and an endpoint that answers every request with 503 is set
/// aside after a few failures in a row (failure accrual), so the clients
/// barely see it.
#[test]
fn the_balancer_avoids_slow_and_failing_endpoints() {
    let (a, b, slow, broken) = (app("web-a"), app("web-b"), app("slow-c"), app("broken-d"));
    let up = Up::start(&mesh(&format!(
        "  - name: client\n    upstreams: [{{service: web, listen: \"127.0.0.1:0\"}}, {{service: api, listen: \"127.0.0.1:0\"}}]\n  \
           - name: web-a\n    serve: [{{service: web, target: \"{a}\"}}, {{service: api, target: \"{a}\"}}]\n  \
           - name: web-b\n    serve: [{{service: web, target: \"{b}\"}}, {{service: api, target: \"{b}\"}}]\n  \
           - name: slow-c\n    serve: [{{service: web, target: \"{slow}\"}}]\n  \
           - name: broken-d\n    serve: [{{service: api, target: \"{broken}\"}}]\n"
    )));
    wait_endpoints(&up, "client", "web", 3);
    wait_endpoints(&up, "client", "api", 3);
    let served = |w: &str, service: &str| {
        metric_or_absent(
            &up.metrics(w),
            "request_total",
            &[("direction", "inbound"), ("service", service)],
        )
    };
    let url = format!("http://{}/seq", up.outbound("client", "web"));
    let out = run(Command::new("h2load").args(["-n", "60", "-c", "1", "-m", "1", &url]));
    assert!(out.contains("60 succeeded"), "{out}");
    let slow_share = served("slow-c", "web");
    assert!(
        slow_share <= 5.0,
        "the slow endpoint took {slow_share} of 60 sequential requests (an even split is 20)"
    );
    assert_eq!(
        served("web-a", "web") + served("web-b", "web") + slow_share,
        60.0
    );

    let url = format!("http://{}/any", up.outbound("client", "api"));
    let out = run(Command::new("h2load").args(["-n", "200", "-c", "1", "-m", "4", &url]));
    let broken = served("broken-d", "api");
    assert!(
        broken <= 20.0,
        "the failing endpoint took {broken} of 200 requests (a third is 67): {out}"
    );
    assert!(served("web-a", "api") + served("web-b", "api") >= 180.0);
}

/// Sends `raw` on a fresh connection to `addr`; everything the proxy sent
/// back before closing it, and whether it closed it.
fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> (String, bool) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(raw).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match c.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// Bad HTTP never reaches the app: conflicting lengths, an unknown
/// transfer coding, a malformed header and a head over the limit are
/// answered by the client's proxy (400, 431) and their connection closed;
/// a request framed both ways (Content-Length and chunked) is read as
/// chunked with the connection closed after its response (RFC 9112 §6.3),
/// so a request smuggled behind it is never read. Each refusal is counted.
#[test]
fn malformed_and_smuggled_requests_never_reach_the_app() {
    let target = app("web");
    let up = Up::start(&mesh(&format!(
        "  - name: client\n    upstreams: [{{service: web, listen: \"127.0.0.1:0\", protocol: http1}}]\n  \
           - name: web\n    serve: [{{service: web, target: \"{target}\"}}]\n"
    )));
    let addr = up.outbound("client", "web");
    let big = format!(
        "GET /big HTTP/1.1\r\nHost: web\r\nx-big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let refused: [(&str, &[u8], &str); 4] = [
        (
            "conflicting Content-Length",
            b"POST /a HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            "HTTP/1.1 400 ",
        ),
        (
            "unknown transfer coding",
            b"POST /b HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: gzip\r\n\r\nxx",
            "HTTP/1.1 400 ",
        ),
        (
            "malformed header",
            b"GET /c HTTP/1.1\r\nHost: web\r\nBad Header: x\r\n\r\n",
            "HTTP/1.1 400 ",
        ),
        ("a head over 64 KiB", big.as_bytes(), "HTTP/1.1 431 "),
    ];
    for (what, raw, want) in refused {
        let (out, closed) = raw_exchange(addr, raw);
        assert!(out.starts_with(want), "{what}: {out:.80}");
        assert!(closed, "{what}: the connection is closed");
    }
    let (out, closed) = raw_exchange(
        addr,
        b"POST /framed-twice HTTP/1.1\r\nHost: web\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 200 "), "{out:.80}");
    assert!(out.contains("\"len\":0"), "read as chunked: {out}");
    assert!(!out.contains("smuggled"), "{out}");
    assert!(closed, "closed after the response");
    let (out, _) = raw_exchange(
        addr,
        b"GET /fine HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 200 "), "{out:.80}");
    assert_eq!(
        metric(
            &up.metrics("web"),
            "request_total",
            &[("direction", "inbound")]
        ),
        2.0,
        "the app saw only the two good requests"
    );
    assert_eq!(
        metric(
            &up.metrics("client"),
            "http_errors_total",
            &[("direction", "outbound"), ("reason", "bad_request")]
        ),
        4.0
    );
}

/// Graceful drain: a proxy told to stop (SIGTERM) says GOAWAY and lets the
/// requests in flight finish. A server's proxy does so over HTTP/3: its
/// slow request completes and the client's next requests go to the other
/// endpoint, none failing. A client's proxy does so over HTTP/2 to the
/// app: the app hears GOAWAY, its request in flight completes, and the
/// proxy exits once it has, long before its drain grace.
#[test]
fn a_stopping_proxy_says_goaway_and_finishes_what_is_in_flight() {
    let (a, b) = (app("web-a"), app("web-b"));
    let yaml = mesh(&format!(
        "  - name: client\n    upstreams: [{{service: web, listen: \"127.0.0.1:0\"}}]\n  \
           - name: web-a\n    serve: [{{service: web, target: \"{a}\"}}]\n  \
           - name: web-b\n    serve: [{{service: web, target: \"{b}\"}}]\n"
    ));
    let mut m = harness::Manual::new(&yaml, &["client", "web-a", "web-b"]);
    m.start_control_plane("127.0.0.1:0");
    m.start_proxy("web-a", &["--drain-grace", "30s"]);
    m.start_proxy("web-b", &["--drain-grace", "30s"]);
    m.start_proxy("client", &["--drain-grace", "30s"]);
    let addr = m.outbound("client", "web");
    wait_manual_endpoints(&m, "web", 2);
    let slow = |url: String| {
        std::thread::spawn(move || {
            let out = Command::new("nghttp")
                .args(["-v", &url])
                .output()
                .expect("nghttp runs");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    let in_flight = |m: &harness::Manual| {
        eventually(
            Duration::from_secs(10),
            "the slow request in flight",
            || {
                ["web-a", "web-b"].into_iter().find(|w| {
                    metric_or_absent(&m.metrics(w), "request_total", &[("direction", "inbound")])
                        == 1.0
                })
            },
        )
    };

    // The server's proxy stops mid-request.
    let request = slow(format!("http://{addr}/slow?ms=1500"));
    let serving = in_flight(&m);
    let other = if serving == "web-a" { "web-b" } else { "web-a" };
    let started = std::time::Instant::now();
    m.proxies[serving].0.terminate();
    let out = request.join().unwrap();
    assert!(
        out.contains(":status: 200"),
        "the request in flight finished: {out}"
    );
    let status = m
        .proxies
        .get_mut(serving)
        .unwrap()
        .0
        .wait(Duration::from_secs(20));
    assert!(status.success(), "{serving} exited cleanly");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{serving} exited once its request ended, not after its grace: {:?}",
        started.elapsed()
    );
    let url = format!("http://{addr}/after");
    let out = run(Command::new("h2load").args(["-n", "20", "-c", "1", "-m", "4", &url]));
    assert!(out.contains("20 succeeded, 0 failed"), "{out}");
    assert_eq!(
        metric(
            &m.metrics(other),
            "request_total",
            &[("direction", "inbound")]
        ),
        20.0
    );

    // The client's proxy stops mid-request: GOAWAY to the app.
    let request = slow(format!("http://{addr}/slow?ms=1500"));
    eventually(
        Duration::from_secs(10),
        "the second slow request in flight",
        || {
            (metric_or_absent(
                &m.metrics(other),
                "request_total",
                &[("direction", "inbound")],
            ) == 21.0)
                .then_some(())
        },
    );
    let started = std::time::Instant::now();
    m.proxies["client"].0.terminate();
    let out = request.join().unwrap();
    assert!(out.contains("recv GOAWAY"), "the app heard GOAWAY: {out}");
    assert!(out.contains(":status: 200"), "and got its response: {out}");
    let status = m
        .proxies
        .get_mut("client")
        .unwrap()
        .0
        .wait(Duration::from_secs(20));
    assert!(status.success());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// 64 MiB each way over HTTP/1.1 (chunked upload) and HTTP/2, checksummed:
/// bodies stream through both proxies and HTTP/3 intact.
#[test]
fn a_64_mib_body_crosses_both_ways_intact() {
    let target = app("web");
    let up = Up::start(&mesh(&format!(
        "  - name: client\n    upstreams: [{{service: web, listen: \"127.0.0.1:0\"}}]\n  \
           - name: web\n    serve: [{{service: web, target: \"{target}\"}}]\n"
    )));
    let url = format!("http://{}", up.outbound("client", "web"));
    let upload: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
    let sha = hex(&Sha256::digest(&upload));
    let path = up.dir.path().join("big.bin");
    std::fs::write(&path, &upload).unwrap();
    let data = format!("@{}", path.display());
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let mut args = vec![version, "--data-binary", &data];
        if version == "--http1.1" {
            args.extend(["-H", "Transfer-Encoding: chunked"]);
        }
        let up_url = format!("{url}/upload");
        args.push(&up_url);
        let got = responses(&curl(&args));
        assert_eq!(got[0]["len"], BIG, "{version}");
        assert_eq!(got[0]["sha256"], sha, "{version}");
        let out = up.dir.path().join("down.bin");
        let out_arg = out.display().to_string();
        let down_url = format!("{url}/big");
        curl(&[version, "-o", &out_arg, &down_url]);
        let down = std::fs::read(&out).unwrap();
        assert_eq!(down.len(), BIG, "{version}");
        assert_eq!(hex(&Sha256::digest(&down)), sha, "{version}");
    }
}
