//! Rotating the mesh root with real processes: a new root is announced to
//! every proxy, then signs, then the old one is retired, and no connection
//! or stream breaks along the way.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

#[path = "support/harness.rs"]
mod harness;

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use harness::{
    Manual, Ticker, bin, client_echo_mesh, connect, echo_server, eventually, get, metric,
    metric_or_absent, ping,
};

fn roots_of(m: &Manual, workload: &str) -> Vec<String> {
    serde_json::from_value(m.config(workload)["trustRoots"].clone()).unwrap()
}

fn issuer_of(m: &Manual, workload: &str) -> String {
    m.config(workload)["certificate"]["issuer"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn rotate(m: &Manual, overlap: &str) -> std::process::Output {
    Command::new(bin("phoenix-control-plane"))
        .arg("--mesh")
        .arg(&m.mesh_path)
        .args(["rotate-ca", "--overlap", overlap])
        .output()
        .unwrap()
}

#[test]
fn a_root_rotation_reaches_every_proxy_without_breaking_a_stream() {
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
    let old = roots_of(&m, "client");
    assert_eq!(old.len(), 1, "one root before any rotation: {old:?}");
    let old = old[0].clone();
    assert_eq!(issuer_of(&m, "echo"), old);

    let out = rotate(&m, "3s");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("announced root"));

    // Traffic runs through every phase: one long stream and fresh connections.
    let mut ticker = Ticker::new(addr, Duration::from_secs(40));
    let mut tick = |long: &mut TcpStream| ticker.tick(long);

    // Announced: every proxy trusts both roots.
    let new = loop {
        tick(&mut long);
        let roots = roots_of(&m, "client");
        if roots.len() == 2 {
            assert_eq!(roots_of(&m, "echo").len(), 2);
            assert!(roots.contains(&old));
            break roots.into_iter().find(|r| *r != old).unwrap();
        }
    };
    // Active: both proxies renew into certificates of the new root.
    while !(issuer_of(&m, "client") == new && issuer_of(&m, "echo") == new) {
        tick(&mut long);
    }
    // Retired: the old root is no longer trusted anywhere.
    while !(roots_of(&m, "client") == [new.clone()] && roots_of(&m, "echo") == [new.clone()]) {
        tick(&mut long);
    }
    ping(&mut long, b"still-the-same-stream");
    ping(&mut connect(addr), b"fresh-after");
    // Peer connections were re-made along the way (each is drained before
    // its peer certificate expires, so several times in this test), and not
    // one handshake failed, whichever roots the two sides held.
    for w in ["client", "echo"] {
        let metrics = m.metrics(w);
        assert_eq!(
            metric_or_absent(&metrics, "tls_handshake_failures_total", &[]),
            0.0,
            "{w}"
        );
    }
    let handshakes = metric(
        &m.metrics("client"),
        "tls_handshakes_total",
        &[("side", "client"), ("result", "success")],
    );
    assert!(handshakes >= 3.0, "only {handshakes} handshakes");
    let cp_admin = m.cp_bound["admin"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        metric(&get(cp_admin, "/metrics").1, "trust_roots", &[]),
        1.0
    );
    assert_eq!(metric(&m.metrics("client"), "trust_roots", &[]), 1.0);

    // The bundle file local proxies bootstrap from now holds the new root
    // only, and a proxy started from it joins the mesh.
    let bundle = std::fs::read_to_string(m.cp_bound["trustAnchor"].as_str().unwrap()).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 1);
    m.proxies.remove("client");
    m.start_proxy("client", &[]);
    eventually(
        Duration::from_secs(20),
        "restarted client reaches echo",
        || {
            let addr = m.outbound("client", "echo");
            let mut c = TcpStream::connect(addr).ok()?;
            c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            ping(&mut c, b"from-the-new-root");
            Some(())
        },
    );
    assert_eq!(issuer_of(&m, "client"), new);
}

#[test]
fn one_rotation_at_a_time_and_overlaps_too_short_are_refused() {
    let m = Manual::new(&client_echo_mesh(echo_server(), ""), &["client", "echo"]);
    let short = rotate(&m, "1s");
    assert_eq!(short.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 2s"));
    let first = rotate(&m, "1h");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    // A second rotation while the first is announced is refused, with why.
    let again = rotate(&m, "1h");
    assert_eq!(again.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already in progress"), "{stderr}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(m.dir.path().join("state/roots.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the schedule holds keys");
}
