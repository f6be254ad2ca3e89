//! A fully post-quantum mesh with real processes: ML-DSA-65 identities
//! beside the X25519MLKEM768 key exchange, read from both sides of live
//! handshakes; classical peers refused under `authPolicy: pq-only`; and a
//! running mesh moved from ECDSA P-256 to ML-DSA-65 by a root rotation
//! without a stream lost.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

#[path = "support/harness.rs"]
mod harness;

use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use harness::{
    Manual, Ticker, bin, client_echo_mesh, connect, echo_server, eventually, get, metric,
    metric_or_absent, ping,
};
use phoenix_api::SpiffeId;
use phoenix_api::tls_policy::IdentityAlgorithm;
use phoenix_control_plane::ca::Ca;
use phoenix_tls::credentials::Credentials;
use phoenix_tls::handshake::TlsPolicy;

const PQ_MESH: &str = "identityAlgorithm: ml-dsa-65\nauthPolicy: pq-only\n";

fn certificate(m: &Manual, workload: &str) -> serde_json::Value {
    m.config(workload)["certificate"].clone()
}

fn cp_metrics(m: &Manual) -> String {
    let admin = m.cp_bound["admin"].as_str().unwrap().parse().unwrap();
    get(admin, "/metrics").1
}

#[test]
fn an_ml_dsa_mesh_authenticates_both_sides_with_ml_dsa_65() {
    let mut m = Manual::new(
        &client_echo_mesh(echo_server(), PQ_MESH),
        &["client", "echo"],
    );
    m.start_control_plane("127.0.0.1:0");
    // The root proxies bootstrap from is ML-DSA-65: their first key is too.
    let bundle = std::fs::read_to_string(m.cp_bound["trustAnchor"].as_str().unwrap()).unwrap();
    assert_eq!(
        phoenix_tls::spiffe::signer_algorithm(&bundle),
        Some(IdentityAlgorithm::MlDsa65)
    );
    m.start_proxy("client", &[]);
    m.start_proxy("echo", &[]);
    let mut c = connect(m.outbound("client", "echo"));
    ping(&mut c, b"post-quantum both ways");
    for w in ["client", "echo"] {
        let cert = certificate(&m, w);
        assert_eq!(cert["algorithm"], "ml-dsa-65", "{w}: {cert}");
        assert_eq!(cert["signatureScheme"], "ML_DSA_65", "{w}: {cert}");
    }
    // The live handshake, from each side: the client proxy verified the
    // server's ML-DSA-65 signature, the echo proxy the client's, and both
    // exchanged keys with X25519MLKEM768.
    let pq = |side| {
        [
            ("side", side),
            ("kx_group", "X25519MLKEM768"),
            ("sig_scheme", "ML_DSA_65"),
            ("result", "success"),
        ]
    };
    assert!(metric(&m.metrics("client"), "tls_handshakes_total", &pq("client")) >= 1.0);
    assert!(metric(&m.metrics("echo"), "tls_handshakes_total", &pq("server")) >= 1.0);
    for w in ["client", "echo"] {
        let text = m.metrics(w);
        assert_eq!(
            metric_or_absent(
                &text,
                "tls_handshakes_total",
                &[("sig_scheme", "ECDSA_NISTP256_SHA256")]
            ),
            0.0,
            "{w} saw a classical signature"
        );
        assert_eq!(
            metric_or_absent(&text, "tls_handshake_failures_total", &[]),
            0.0,
            "{w}"
        );
    }
    // The control plane saw the proxies' ML-DSA certificates on their
    // subscriptions (the first, anonymous connection of each has none).
    assert!(
        metric(
            &cp_metrics(&m),
            "tls_handshakes_total",
            &[("sig_scheme", "ML_DSA_65"), ("result", "success")]
        ) >= 2.0
    );
}

/// A client with a certificate from the mesh's own (ML-DSA) root for a
/// P-256 key: everything about it is genuine except that it authenticates
/// classically.
fn classical_client(m: &Manual) -> (quinn::Endpoint, phoenix_tls::TlsContext) {
    let state = m.dir.path().join("state");
    let (ca, _) = Ca::load_or_create(&state, "phoenix.local", IdentityAlgorithm::MlDsa65).unwrap();
    assert_eq!(ca.algorithm(), IdentityAlgorithm::MlDsa65);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let id: SpiffeId = "spiffe://phoenix.local/ns/default/sa/client"
        .parse()
        .unwrap();
    let pem = ca
        .issue_for_key(&key, &id, Duration::from_secs(600))
        .unwrap();
    let provider = phoenix_tls::provider::provider(Default::default(), &[]);
    let credentials = Arc::new(Credentials::default());
    credentials.store(Credentials::parse(&pem, &key.serialize_pem(), &provider).unwrap());
    let tls = phoenix_tls::TlsContext::new(ca.root_pem(), credentials).unwrap();
    let endpoint = phoenix_tls::endpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &phoenix_tls::endpoint::TransportSettings::default(),
        None,
    )
    .unwrap();
    (endpoint, tls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classical_peer_is_refused_under_pq_only() {
    let mut m = Manual::new(
        &client_echo_mesh(echo_server(), PQ_MESH),
        &["client", "echo"],
    );
    m.start_control_plane("127.0.0.1:0");
    m.start_proxy("echo", &[]);
    let inbound: std::net::SocketAddr = m.proxies["echo"].1["inbound"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let echo_id: SpiffeId = "spiffe://phoenix.local/ns/default/sa/echo".parse().unwrap();

    // At the TLS layer: a P-256 client certificate (signed by the mesh's
    // own root) is refused by the echo proxy, and counted.
    let (endpoint, tls) = classical_client(&m);
    let transport = phoenix_tls::endpoint::TransportSettings::default().client_transport();
    let (config, _lease) = tls
        .client(
            &TlsPolicy::default(),
            echo_id.clone(),
            &[phoenix_api::control::ALPN_TUNNEL],
            true,
            transport,
        )
        .unwrap();
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        endpoint
            .connect_with(config, inbound, "peer.phoenix")
            .unwrap(),
    )
    .await
    .expect("the handshake ends, one way or the other");
    let refused = match outcome {
        Err(_) => true,
        // TLS 1.3 clients finish before the server has checked them: the
        // refusal then closes the connection at once.
        Ok(conn) => tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .is_ok(),
    };
    assert!(refused, "a classical client was accepted");
    // rustls' client finds no scheme the pq-only server accepts for its
    // P-256 key, so it presents no certificate; the server, which requires
    // one, refuses it. (An ECDSA signature sent anyway is refused by the
    // verifier: `ca.rs`'s unit test.)
    eventually(Duration::from_secs(5), "the refusal is counted", || {
        let n = metric_or_absent(
            &m.metrics("echo"),
            "tls_handshake_failures_total",
            &[("side", "server"), ("reason", "no_client_certificate")],
        );
        (n >= 1.0).then_some(())
    });
    assert_eq!(
        metric_or_absent(&m.metrics("echo"), "tcp_open_total", &[]),
        0.0,
        "nothing reached the app"
    );

    // At the CA: a proxy that insists on a P-256 key gets no certificate,
    // with a reason that says what to do.
    let mut cmd = Command::new(bin("phoenix-proxy"));
    cmd.arg("--control-plane")
        .arg(m.control_addr().to_string())
        .arg("--control-plane-identity")
        .arg(m.cp_bound["identity"].as_str().unwrap())
        .arg("--trust-anchor")
        .arg(m.cp_bound["trustAnchor"].as_str().unwrap())
        .args(["--identity-algorithm", "ecdsa-p256"])
        .env("PHOENIX_TOKEN", &m.tokens["client"]);
    let p = harness::Proc::spawn("classical-client", cmd);
    let bound: serde_json::Value = serde_json::from_str(&p.line(Duration::from_secs(30))).unwrap();
    let admin = bound["admin"].as_str().unwrap().parse().unwrap();
    eventually(
        Duration::from_secs(20),
        "the CA refuses the P-256 CSR",
        || {
            let n = metric_or_absent(
                &cp_metrics(&m),
                "control_certificates_total",
                &[("result", "classical_key")],
            );
            (n >= 1.0).then_some(())
        },
    );
    assert_ne!(
        get(admin, "/ready").0,
        200,
        "a classical proxy became ready"
    );
    let config: serde_json::Value = serde_json::from_str(&get(admin, "/config").1).unwrap();
    assert!(config["certificate"].is_null(), "{config}");
}

#[test]
fn a_rotation_moves_a_running_mesh_from_p256_to_ml_dsa_without_breaking_a_stream() {
    let mut m = Manual::new(
        &client_echo_mesh(echo_server(), "certificateLifetime: 4s\n"),
        &["client", "echo"],
    );
    m.start_control_plane("127.0.0.1:0");
    m.start_proxy("client", &[]);
    m.start_proxy("echo", &[]);
    let addr = m.outbound("client", "echo");
    let mut long = connect(addr);
    ping(&mut long, b"before");
    for w in ["client", "echo"] {
        assert_eq!(certificate(&m, w)["algorithm"], "ecdsa-p256", "{w}");
    }

    let out = Command::new(bin("phoenix-control-plane"))
        .arg("--mesh")
        .arg(&m.mesh_path)
        .args([
            "rotate-ca",
            "--overlap",
            "3s",
            "--identity-algorithm",
            "ml-dsa-65",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("(ml-dsa-65)"), "{stdout}");

    let mut ticker = Ticker::new(addr, Duration::from_secs(45));
    let mut tick = |long: &mut TcpStream| ticker.tick(long);
    // Every proxy re-keys once the ML-DSA root signs...
    while !["client", "echo"]
        .iter()
        .all(|w| certificate(&m, w)["algorithm"] == "ml-dsa-65")
    {
        tick(&mut long);
    }
    // ...and the P-256 root is retired everywhere.
    while !["client", "echo"].iter().all(|w| {
        m.config(w)["trustRoots"]
            .as_array()
            .is_some_and(|r| r.len() == 1)
    }) {
        tick(&mut long);
    }
    ping(&mut long, b"still-the-same-stream");
    // Peer connections are re-made as certificates expire: after the
    // migration both ends verify ML-DSA signatures, and not one handshake
    // failed in between, whichever keys and roots the two sides held.
    eventually(Duration::from_secs(20), "an ML-DSA handshake", || {
        ping(&mut connect(addr), b"fresh-after");
        let n = metric_or_absent(
            &m.metrics("client"),
            "tls_handshakes_total",
            &[
                ("side", "client"),
                ("sig_scheme", "ML_DSA_65"),
                ("result", "success"),
            ],
        );
        (n >= 1.0).then_some(())
    });
    for w in ["client", "echo"] {
        assert_eq!(
            metric_or_absent(&m.metrics(w), "tls_handshake_failures_total", &[]),
            0.0,
            "{w}"
        );
    }
    // A proxy started now bootstraps from the bundle (ML-DSA root alone)
    // with an ML-DSA key from the start.
    m.proxies.remove("client");
    m.start_proxy("client", &[]);
    eventually(
        Duration::from_secs(20),
        "restarted client reaches echo",
        || {
            let addr = m.outbound("client", "echo");
            let mut c = TcpStream::connect(addr).ok()?;
            c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            ping(&mut c, b"from-the-ml-dsa-root");
            Some(())
        },
    );
    assert_eq!(certificate(&m, "client")["algorithm"], "ml-dsa-65");
    let log = m.proxies["client"].0.stderr.lock().unwrap().clone();
    assert!(
        !log.contains("re-keying"),
        "a fresh proxy in an ML-DSA mesh should not need to re-key:\n{log}"
    );
    // (The proxies that lived through the migration did re-key.)
    let log = m.proxies["echo"].0.stderr.lock().unwrap().clone();
    assert!(log.contains("re-keying"), "{log}");
}
