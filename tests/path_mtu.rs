//! Path MTU discovery between real proxies over real links: pods are
//! network namespaces on a bridge whose links run at the MTU each test
//! sets, and the client proxy's `/config` says what payload its peer
//! connection settled on after real traffic crossed it.
//!
//! The proxies start at 1200-byte packets and probe up to the route's
//! interface MTU (tls/src/endpoint.rs, `payload_bounds`). Needs root, iproute2, curl and
//! python3 (`scripts/test` installs them).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

#[path = "support/harness.rs"]
mod harness;
#[path = "support/netns.rs"]
mod netns;

use std::time::Duration;

use harness::{Proc, eventually};
use netns::*;

const LISTEN: &str = "10.77.0.2:7000";

/// Sets the MTU of every link on pod `pod`'s path: its eth0 and the
/// bridge port on the node's side.
fn set_mtu(t: &Topology, pod: &str, mtu: u32) {
    let mtu = mtu.to_string();
    t.exec(pod, &["ip", "link", "set", "eth0", "mtu", &mtu]);
    t.exec(
        "node",
        &["ip", "link", "set", &format!("v{pod}{}", t.id), "mtu", &mtu],
    );
}

/// A two-pod mesh (client in a, web in b) whose links run at `a_mtu` on
/// a's side and `b_mtu` on b's; returns the UDP payload the client proxy's
/// connection to b's proxy settled on once a request has crossed it.
fn discovered_payload(a_mtu: u32, b_mtu: u32, extra_args: &[&str]) -> u64 {
    let t = Topology::new();
    // The bridge takes the largest MTU; its ports decide what crosses.
    t.exec(
        "node",
        &[
            "ip",
            "link",
            "set",
            "br0",
            "mtu",
            &a_mtu.max(b_mtu).to_string(),
        ],
    );
    set_mtu(&t, "a", a_mtu);
    set_mtu(&t, "b", b_mtu);

    let mesh = format!(
        "trustDomain: phoenix.local\n\
         stateDir: state\n\
         controlPlane: {{listen: \"{NODE_IP}:4180\", admin: \"{NODE_IP}:9990\"}}\n\
         workloads:\n\
         \x20 - name: client\n\
         \x20   upstreams: [{{service: web, listen: \"{LISTEN}\"}}]\n\
         \x20 - name: server\n\
         \x20   serve: [{{service: web, target: \"{SERVER_IP}:8080\", allow: [client]}}]\n"
    );
    let m = FileMesh::new(&mesh, &["client", "server"]);
    let www = m.path("www");
    std::fs::create_dir_all(&www).unwrap();
    // Large enough that full-size packets carry it.
    let body = "jumbo-".repeat(200_000);
    std::fs::write(www.join("big.txt"), &body).unwrap();

    let (_cp, anchor) = m.control_plane(&t);
    let proxy = |pod: &str, workload: &str| {
        let inbound = format!("{}:4143", t.ip(pod));
        let mut args = vec!["--inbound", &inbound, "--admin", "127.0.0.1:4191"];
        args.extend_from_slice(extra_args);
        m.proxy(&t, pod, workload, &anchor, &args)
    };
    let _client = proxy("a", "client");
    let _server = proxy("b", "server");
    let _web = Proc::spawn(
        "http.server",
        t.command(
            "b",
            &[
                "python3",
                "-m",
                "http.server",
                "8080",
                "--bind",
                SERVER_IP,
                "--directory",
                www.to_str().unwrap(),
            ],
        ),
    );

    let url = format!("http://{LISTEN}/big.txt");
    let got = eventually(
        Duration::from_secs(30),
        "a request through the mesh",
        || curl(&t, "a", &url),
    );
    assert_eq!(got.len(), body.len(), "the body crossed whole");
    let admin = "http://127.0.0.1:4191/config";
    let mut last = None;
    // Discovery runs right after the handshake; lost probes are retried
    // on the loss timer, a few milliseconds each on a bridge.
    eventually(
        Duration::from_secs(20),
        "path MTU discovery to settle",
        || {
            assert_eq!(curl(&t, "a", &url).map(|b| b.len()), Some(body.len()));
            // `/config` answers loopback clients only.
            let dump: serde_json::Value = serde_json::from_str(&curl(&t, "a", admin)?).ok()?;
            // Settled: no probe sent or lost between two reads either (a
            // lost probe waits on the loss timer, the size unchanged).
            let path = &dump["peers"][0]["path"];
            let now = (
                path["udpPayload"].as_u64()?,
                path["mtuProbesSent"].as_u64()?,
                path["mtuProbesLost"].as_u64()?,
            );
            let payload = now.0;
            let settled = last == Some(now);
            last = Some(now);
            std::thread::sleep(Duration::from_millis(500));
            settled.then_some(payload)
        },
    )
}

#[test]
fn a_1500_byte_link_carries_1472_byte_payloads() {
    // IPv4: 1500 minus 20 bytes of IP and 8 of UDP. The fixed default of
    // earlier versions (1452) left these 20 bytes unused.
    assert_eq!(discovered_payload(1500, 1500, &[]), 1472);
}

#[test]
fn a_link_below_1500_bytes_gets_packets_that_fit_it() {
    // This VM's own eth0 runs at 1400, as overlays do (VXLAN: 1450): the
    // 1452-byte packets of a fixed default would not cross it.
    assert_eq!(discovered_payload(1400, 1400, &[]), 1372);
}

#[test]
fn a_smaller_hop_behind_a_1500_byte_interface_does_not_stop_the_handshake() {
    // a's route says 1500, but the bridge port toward b carries 1400:
    // starting at 1200, the handshake completes, and the probes stop
    // within two of quinn's minimum steps of the real 1372.
    let got = discovered_payload(1500, 1400, &[]);
    assert!((1332..=1372).contains(&got), "settled on {got}");
}

#[test]
fn jumbo_frames_carry_jumbo_payloads() {
    assert_eq!(
        discovered_payload(9000, 9000, &["--max-path-mtu", "9001"]),
        8972
    );
    // Without opting in, Ethernet's MTU is the ceiling.
    assert_eq!(discovered_payload(9000, 9000, &[]), 1472);
}

#[test]
fn probes_find_a_smaller_hop_behind_a_jumbo_interface() {
    // a's route says 9000; the bridge port toward b carries 4000, and
    // drops bigger frames without a word. The binary search stops within
    // two of quinn's minimum steps (20 bytes) of the real 3972.
    let got = discovered_payload(9000, 4000, &["--max-path-mtu", "9001"]);
    assert!((3932..=3972).contains(&got), "settled on {got}");
}

#[test]
fn a_fixed_payload_is_not_probed_past() {
    assert_eq!(
        discovered_payload(
            9000,
            9000,
            &["--max-udp-payload", "1400", "--max-path-mtu", "9001"]
        ),
        1400
    );
}

#[test]
fn loopback_peers_are_not_probed() {
    // `phoenix up`: everything on 127.0.0.1, whose 65,536-byte MTU is no
    // network's (tls/src/path_mtu.rs, `LARGEST_MTU`, says what probing it
    // cost): 1452-byte packets, no probe, whatever the traffic.
    let echo = harness::echo_server();
    let up = harness::Up::start(&harness::client_echo_mesh(echo, ""));
    let mut conn = harness::connect(up.outbound("client", "echo"));
    for _ in 0..20 {
        harness::ping(&mut conn, &[7u8; 60_000]);
    }
    let dump: serde_json::Value =
        serde_json::from_str(&harness::get(up.admin("client"), "/config").1).unwrap();
    let path = &dump["peers"][0]["path"];
    assert_eq!(path["udpPayload"], 1452, "{path}");
    assert_eq!(path["mtuProbesSent"], 0, "{path}");
}
