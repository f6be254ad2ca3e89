//! The control plane's contract with proxies, with real processes: traffic
//! survives its absence, changes reach proxies without dropping
//! connections, certificates renew under traffic, and SIGTERM drains.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

#[path = "support/harness.rs"]
mod harness;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use harness::{
    Manual, Up, client_echo_mesh, echo_server, eventually, get, metric, metric_or_absent, ping,
};

fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

#[test]
fn traffic_flows_without_the_control_plane_and_changes_land_after_restart() {
    let echo = echo_server();
    let mut m = Manual::new(&client_echo_mesh(echo, ""), &["client", "echo"]);
    m.start_control_plane("127.0.0.1:0");
    let cp_port = m.control_addr().port();
    let root_before = std::fs::read_to_string(m.dir.path().join("state/ca.crt")).unwrap();
    m.start_proxy("client", &[]);
    m.start_proxy("echo", &[]);
    let addr = m.outbound("client", "echo");
    let mut long = connect(addr);
    ping(&mut long, b"before");

    // Control plane gone: existing and new connections keep working.
    let cp = m.cp.as_mut().unwrap();
    cp.terminate();
    cp.wait(Duration::from_secs(10));
    ping(&mut long, b"during");
    ping(&mut connect(addr), b"fresh-during");
    let version = m.config("client")["version"].as_u64().unwrap();

    // A changed mesh file is picked up after the restart (same root, same port).
    let changed = client_echo_mesh(echo, "")
        .replace(
            "upstreams: [{service: echo, listen: \"127.0.0.1:0\"}]",
            "upstreams: [{service: echo, listen: \"127.0.0.1:0\"}, {service: echo2, listen: \"127.0.0.1:0\"}]",
        )
        .replace(
            "serve: [{service: echo, ",
            &format!("serve: [{{service: echo2, target: \"{echo}\"}}, {{service: echo, "),
        );
    std::fs::write(&m.mesh_path, changed).unwrap();
    m.start_control_plane(&format!("127.0.0.1:{cp_port}"));
    assert_eq!(
        std::fs::read_to_string(m.dir.path().join("state/ca.crt")).unwrap(),
        root_before,
        "the restarted control plane keeps its root"
    );
    // Registrations were restored: the restarted control plane knows where
    // the proxies are before they resubscribe.
    let cp_admin = m.cp_bound["admin"].as_str().unwrap().parse().unwrap();
    let registrations = serde_json::from_str::<serde_json::Value>(&get(cp_admin, "/config").1)
        .unwrap()["registrations"]
        .clone();
    assert!(registrations.get("echo").is_some(), "{registrations}");
    // Both proxies resubscribe and receive the new service.
    eventually(
        Duration::from_secs(20),
        "the echo proxy serves echo2",
        || {
            m.config("echo")["config"]["resources"]
                .get("inbound/echo2")
                .map(|_| ())
        },
    );
    let addr2 = m.outbound("client", "echo2");
    eventually(
        Duration::from_secs(20),
        "the client knows echo2's endpoint",
        || {
            let eps = m.config("client")["config"]["resources"]["upstream/echo2"]["endpoints"]
                .as_array()?
                .len();
            (eps == 1).then_some(())
        },
    );
    ping(&mut connect(addr2), b"new-service");
    assert!(m.config("client")["version"].as_u64().unwrap() > version);
    ping(&mut long, b"after");
}

#[test]
fn a_policy_change_applies_to_the_next_stream_not_open_ones() {
    let up = Up::start(&client_echo_mesh(echo_server(), ""));
    let mesh_path = up.dir.path().join("mesh.yaml");
    let addr = up.outbound("client", "echo");
    let mut open = connect(addr);
    ping(&mut open, b"allowed");

    let yaml = std::fs::read_to_string(&mesh_path)
        .unwrap()
        .replace("allow: [client]", "allow: [someone-else]");
    std::fs::write(&mesh_path, yaml).unwrap();
    eventually(
        Duration::from_secs(10),
        "new allow-list on the echo proxy",
        || {
            get(up.admin("echo"), "/config")
                .1
                .contains("sa/someone-else")
                .then_some(())
        },
    );
    ping(&mut open, b"still-open");
    let mut next = connect(addr);
    let _ = next.write_all(b"denied?");
    let mut buf = [0u8; 8];
    let err = next
        .read(&mut buf)
        .expect_err("the next stream must be denied");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    assert_eq!(metric(&up.metrics("echo"), "authz_deny_total", &[]), 1.0);
}

#[test]
fn an_invalid_mesh_file_is_refused_and_the_last_good_one_stays() {
    let up = Up::start(&client_echo_mesh(echo_server(), ""));
    let mesh_path = up.dir.path().join("mesh.yaml");
    let cp_admin = up.report["controlPlane"]["admin"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let before = get(cp_admin, "/config").1;
    std::fs::write(
        &mesh_path,
        "trustDomain: phoenix.local\nworkloads:\n  - name: [oops\n",
    )
    .unwrap();
    eventually(Duration::from_secs(10), "the refusal counted", || {
        (metric(&get(cp_admin, "/metrics").1, "config_refused_total", &[]) == 1.0).then_some(())
    });
    let after = get(cp_admin, "/config").1;
    let version =
        |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap()["version"].clone();
    assert_eq!(version(&before), version(&after));
    ping(
        &mut connect(up.outbound("client", "echo")),
        b"still-working",
    );
}

#[test]
fn certificates_renew_under_traffic_without_losing_a_stream() {
    let up = Up::start(&client_echo_mesh(
        echo_server(),
        "certificateLifetime: 3s\n",
    ));
    let addr = up.outbound("client", "echo");
    let mut long = connect(addr);
    let started = Instant::now();
    let mut i = 0u32;
    // Ping through three lifetimes: every certificate in use at the start
    // has expired by the end, yet the stream carries on.
    while started.elapsed() < Duration::from_secs(10) {
        ping(&mut long, format!("ping-{i:06}").as_bytes());
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    for w in ["client", "echo"] {
        let renewals = metric(&up.metrics(w), "certificate_renewals_total", &[]);
        assert!(
            renewals >= 4.0,
            "{w} obtained {renewals} certificates in 10s with a 3s lifetime"
        );
    }
    // New connections still work: the peer connection made with the first
    // certificates was replaced before they expired.
    ping(&mut connect(addr), b"fresh");
    let hs = metric(
        &up.metrics("client"),
        "tls_handshakes_total",
        &[("side", "client"), ("result", "success")],
    );
    assert!(
        hs >= 2.0,
        "the peer connection was re-established ({hs} handshakes)"
    );
    ping(&mut long, b"still-the-same-stream");
}

#[test]
fn sigterm_drains_open_connections_then_exits() {
    let echo = echo_server();
    let mut m = Manual::new(&client_echo_mesh(echo, ""), &["client", "echo"]);
    m.start_control_plane("127.0.0.1:0");
    m.start_proxy("echo", &[]);
    m.start_proxy("client", &["--drain-grace", "30s"]);
    let addr = m.outbound("client", "echo");
    let mut open = connect(addr);
    ping(&mut open, b"before");

    let (proxy, _) = m.proxies.get_mut("client").unwrap();
    proxy.terminate();
    // New connections are refused once the listener closes ...
    eventually(Duration::from_secs(5), "the listener closed", || {
        TcpStream::connect(addr)
            .err()
            .map(|e| assert_eq!(e.kind(), ErrorKind::ConnectionRefused))
    });
    // ... while the open one keeps working through the grace period.
    ping(&mut open, b"draining");
    assert!(
        proxy.child.try_wait().unwrap().is_none(),
        "exited with a connection still open"
    );
    // Closing the last connection lets the proxy exit well before the grace period.
    let closed_at = Instant::now();
    drop(open);
    let status = proxy.wait(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(closed_at.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_lost_peer_resets_its_flows_and_new_flows_reach_its_replacement() {
    let echo = echo_server();
    let mut m = Manual::new(&client_echo_mesh(echo, ""), &["client", "echo"]);
    m.start_control_plane("127.0.0.1:0");
    m.start_proxy("echo", &[]);
    m.start_proxy("client", &["--quic-idle-timeout", "2s"]);
    let addr = m.outbound("client", "echo");
    let mut open = connect(addr);
    ping(&mut open, b"before");

    // The peer dies without a word (no QUIC close).
    let (mut dead, _) = m.proxies.remove("echo").unwrap();
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    let lost_at = Instant::now();
    let mut buf = [0u8; 1];
    let err = open
        .read(&mut buf)
        .expect_err("the open flow must be reset, not left hanging");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err:?}");
    assert!(
        lost_at.elapsed() < Duration::from_secs(6),
        "noticed after {:?}",
        lost_at.elapsed()
    );

    // A replacement proxy registers (on a new port); new flows reach it.
    m.start_proxy("echo", &[]);
    eventually(
        Duration::from_secs(20),
        "a new flow through the replacement",
        || {
            let mut c = connect(addr);
            c.write_all(b"again").ok()?;
            let mut buf = [0u8; 5];
            c.read_exact(&mut buf).ok()?;
            (&buf == b"again").then_some(())
        },
    );
}

#[test]
fn the_drain_grace_period_bounds_shutdown() {
    let echo = echo_server();
    let mut m = Manual::new(&client_echo_mesh(echo, ""), &["client", "echo"]);
    m.start_control_plane("127.0.0.1:0");
    m.start_proxy("echo", &[]);
    m.start_proxy("client", &["--drain-grace", "1s"]);
    let mut open = connect(m.outbound("client", "echo"));
    ping(&mut open, b"before");
    let (proxy, _) = m.proxies.get_mut("client").unwrap();
    let asked = Instant::now();
    proxy.terminate();
    // The app never closes; the proxy leaves anyway once the grace is over.
    let status = proxy.wait(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "exited after {took:?}"
    );
    let mut buf = [0u8; 1];
    assert!(
        matches!(open.read(&mut buf), Ok(0) | Err(_)),
        "the app's connection ends with its proxy"
    );
}

#[test]
fn a_silent_endpoint_is_skipped_after_the_connect_timeout() {
    let (m, addr) = two_echo_endpoints("connectTimeout: 300ms\n");
    // echo-a goes silent (stopped, not dead: its port still exists).
    let pid = m.proxies["echo-a"].0.pid();
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    let timeouts = || {
        // Absent from the scrape until the first failure.
        metric_or_absent(
            &m.metrics("client"),
            "tls_handshake_failures_total",
            &[("side", "client"), ("reason", "timeout")],
        )
    };
    // Every new connection gets through; the balancer draws between two
    // idle endpoints at random, so go on until one tried echo-a first.
    let mut tried = false;
    for i in 0..40 {
        let started = Instant::now();
        ping(&mut connect(addr), format!("conn-{i}").as_bytes());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "connection {i} took {:?}",
            started.elapsed()
        );
        if timeouts() >= 1.0 {
            tried = true;
            break;
        }
    }
    assert!(tried, "echo-a was never chosen in 40 connections");
    // echo-a is now set aside: the next connections go straight to echo-b,
    // without paying the connect timeout again.
    for i in 0..5 {
        let started = Instant::now();
        ping(&mut connect(addr), format!("after-{i}").as_bytes());
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "connection {i} after the failure took {:?}: the failed endpoint was tried again",
            started.elapsed()
        );
    }
    assert_eq!(timeouts(), 1.0, "one timeout, then echo-a was skipped");
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::CONT);
}

#[test]
fn connections_are_balanced_over_outstanding_streams() {
    let (m, addr) = two_echo_endpoints("");
    // Ten connections held open: with two endpoints, power of two choices
    // compares both every time, so each endpoint carries exactly five.
    let mut held = vec![];
    for i in 0..10 {
        let mut c = connect(addr);
        ping(&mut c, format!("held-{i}").as_bytes());
        held.push(c);
    }
    let streams = |w: &str| {
        metric(
            &m.metrics(w),
            "tunnel_streams_total",
            &[("direction", "inbound"), ("status", "connected")],
        )
    };
    assert_eq!((streams("echo-a"), streams("echo-b")), (5.0, 5.0));
}

#[test]
fn an_idle_timeout_closes_quiet_connections_only() {
    let echo = echo_server();
    let yaml = format!(
        "trustDomain: phoenix.local\n\
         stateDir: state\n\
         workloads:\n\
         \x20 - name: client\n\
         \x20   upstreams: [{{service: echo, listen: \"127.0.0.1:0\", idleTimeout: 600ms}}]\n\
         \x20 - name: echo\n\
         \x20   serve: [{{service: echo, target: \"{echo}\"}}]\n"
    );
    let mut m = Manual::new(&yaml, &["client", "echo"]);
    m.start_control_plane("127.0.0.1:0");
    m.start_proxy("echo", &[]);
    m.start_proxy("client", &[]);
    let addr = m.outbound("client", "echo");
    eventually(Duration::from_secs(20), "endpoint known", || {
        m.config("client")["config"]["resources"]["upstream/echo"]["endpoints"]
            .as_array()?
            .first()
            .map(|_| ())
    });
    let mut quiet = connect(addr);
    ping(&mut quiet, b"hello");
    let mut busy = connect(addr);
    // The busy connection talks every 150 ms for 1.5 s: never idle 600 ms.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        ping(&mut busy, b"still here");
        std::thread::sleep(Duration::from_millis(150));
    }
    // By now the quiet one was closed (reset) by the client proxy.
    quiet
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 8];
    match quiet.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("the quiet connection should be closed, got {other:?}"),
    }
    ping(&mut busy, b"and now");
    assert_eq!(
        metric(&m.metrics("client"), "tcp_idle_timeouts_total", &[]),
        1.0
    );
}

/// A client and two proxies serving `echo` (one echo server behind both),
/// once the client knows both endpoints; `mesh` adds top-level settings.
fn two_echo_endpoints(mesh: &str) -> (Manual, std::net::SocketAddr) {
    let echo = echo_server();
    let yaml = format!(
        "trustDomain: phoenix.local\n\
         stateDir: state\n\
         {mesh}\
         workloads:\n\
         \x20 - name: client\n\
         \x20   upstreams: [{{service: echo, listen: \"127.0.0.1:0\"}}]\n\
         \x20 - name: echo-a\n\
         \x20   serve: [{{service: echo, target: \"{echo}\"}}]\n\
         \x20 - name: echo-b\n\
         \x20   serve: [{{service: echo, target: \"{echo}\"}}]\n"
    );
    let mut m = Manual::new(&yaml, &["client", "echo-a", "echo-b"]);
    m.start_control_plane("127.0.0.1:0");
    m.start_proxy("echo-a", &[]);
    m.start_proxy("echo-b", &[]);
    m.start_proxy("client", &[]);
    let addr = m.outbound("client", "echo");
    eventually(Duration::from_secs(20), "both endpoints known", || {
        let eps = m.config("client")["config"]["resources"]["upstream/echo"]["endpoints"]
            .as_array()?
            .len();
        (eps == 2).then_some(())
    });
    (m, addr)
}
