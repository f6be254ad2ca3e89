//! Metrics as Prometheus users consume them: the OpenMetrics parser of the
//! reference Python client accepts the output, and a real Prometheus server
//! scrapes every proxy and the control plane and can query the series.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

#[path = "support/harness.rs"]
mod harness;

use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::{Proc, Up, client_echo_mesh, echo_server, eventually, get, get_full, ping};

fn traffic(up: &Up) {
    let mut c = TcpStream::connect(up.outbound("client", "echo")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    ping(&mut c, b"metrics please");
}

#[test]
fn the_openmetrics_parser_accepts_every_admin_endpoint() {
    let up = Up::start(&client_echo_mesh(echo_server(), ""));
    traffic(&up);
    let cp_admin = up.report["controlPlane"]["admin"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    for (name, admin) in [
        ("client", up.admin("client")),
        ("echo", up.admin("echo")),
        ("control plane", cp_admin),
    ] {
        let (status, head, body) = get_full(admin, "/metrics");
        assert_eq!(status, 200);
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text"),
            "{name}: {head}"
        );
        assert!(
            body.ends_with("# EOF\n"),
            "{name}: OpenMetrics ends with # EOF"
        );
        let mut py = Command::new("python3")
            .args([
                "-c",
                "import sys\n\
                 from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\n\
                 names = sorted(f.name for f in parse(sys.stdin.read()))\n\
                 print(' '.join(names))",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 is needed (scripts/test installs prometheus_client)");
        py.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
        let out = py.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{name}: OpenMetrics parser refused the output: {}\n{body}",
            String::from_utf8_lossy(&out.stderr)
        );
        let families = String::from_utf8(out.stdout).unwrap();
        for family in [
            "tls_handshakes",
            "config_version",
            "certificate_expiry_timestamp_seconds",
        ] {
            assert!(
                families.split_whitespace().any(|f| f == family),
                "{name} lacks {family}: {families}"
            );
        }
        if name != "control plane" {
            for family in [
                "tcp_open",
                "tcp_close",
                "tcp_open_connections",
                "tcp_read_bytes",
                "tcp_write_bytes",
                "quic_connections_open",
                "quic_streams_open",
                "config_refused",
            ] {
                assert!(
                    families.split_whitespace().any(|f| f == family),
                    "{name} lacks {family}: {families}"
                );
            }
        }
    }
}

#[test]
fn a_real_prometheus_scrapes_the_mesh() {
    let up = Up::start(&client_echo_mesh(echo_server(), ""));
    traffic(&up);
    let targets: Vec<String> = vec![
        up.admin("client").to_string(),
        up.admin("echo").to_string(),
        up.report["controlPlane"]["admin"]
            .as_str()
            .unwrap()
            .to_owned(),
    ];
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\n\
             scrape_configs:\n  - job_name: phoenix\n    static_configs:\n      - targets: {targets:?}\n"
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={listen}"));
    let _prom = Proc::spawn("prometheus", cmd);
    let addr = listen.parse().unwrap();
    eventually(
        Duration::from_secs(60),
        "every target up in Prometheus",
        || {
            let (status, body) = std::panic::catch_unwind(|| get(addr, "/api/v1/targets")).ok()?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let active = v["data"]["activeTargets"].as_array()?;
            (status == 200 && active.len() == 3 && active.iter().all(|t| t["health"] == "up"))
                .then_some(())
        },
    );
    let series = eventually(
        Duration::from_secs(30),
        "handshake series queryable",
        || {
            let (_, body) = get(
                addr,
                "/api/v1/query?query=tls_handshakes_total%7Bkx_group%3D%22X25519MLKEM768%22%7D",
            );
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let r = v["data"]["result"].as_array()?.clone();
            (!r.is_empty()).then_some(r)
        },
    );
    assert!(series.iter().any(|s| s["metric"]["side"] == "client"));
    assert!(series.iter().any(|s| s["metric"]["side"] == "server"));
}
