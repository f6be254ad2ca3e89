//! Data-path integrity through real proxies: bytes, half-close, resets,
//! concurrency, and backpressure.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

#[path = "support/harness.rs"]
mod harness;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use harness::{Up, client_echo_mesh, closed_port, echo_server, eventually, metric};
use sha2::{Digest, Sha256};

/// Writes `size` random bytes, then FIN; returns their SHA-256.
fn send_random(mut w: TcpStream, size: usize) -> Vec<u8> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut sent = 0;
    while sent < size {
        rand::fill(&mut buf[..]);
        w.write_all(&buf).unwrap();
        h.update(&buf);
        sent += buf.len();
    }
    w.shutdown(Shutdown::Write).unwrap();
    h.finalize().to_vec()
}

/// Reads to EOF; returns the byte count and SHA-256.
fn read_hashed(mut r: TcpStream) -> (usize, Vec<u8>) {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            return (got, h.finalize().to_vec());
        }
        h.update(&buf[..n]);
        got += n;
    }
}

/// 64 MiB of random bytes each way, checksummed on both ends.
#[test]
fn sixty_four_mib_each_way_arrive_intact() {
    const SIZE: usize = 64 * 1024 * 1024;
    // The server hashes what it receives and sends its own random stream back.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = server.local_addr().unwrap();
    let server_thread = std::thread::spawn(move || {
        let (s, _) = server.accept().unwrap();
        let w = s.try_clone().unwrap();
        let sender = std::thread::spawn(move || send_random(w, SIZE));
        let (got, hash) = read_hashed(s);
        (got, hash, sender.join().unwrap())
    });

    let up = Up::start(&client_echo_mesh(target, ""));
    let c = TcpStream::connect(up.outbound("client", "echo")).unwrap();
    let w = c.try_clone().unwrap();
    let sender = std::thread::spawn(move || send_random(w, SIZE));
    let (got, hash) = read_hashed(c);
    let client_sent = sender.join().unwrap();
    let (server_got, server_hash, server_sent) = server_thread.join().unwrap();
    assert_eq!(server_got, SIZE, "server received every byte");
    assert_eq!(server_hash, client_sent, "client → server bytes intact");
    assert_eq!(got, SIZE, "client received every byte");
    assert_eq!(hash, server_sent, "server → client bytes intact");

    let text = up.metrics("client");
    assert_eq!(
        metric(&text, "tcp_read_bytes_total", &[("direction", "outbound")]) as usize,
        SIZE,
        "the client proxy counted what it read from the app"
    );
}

/// A client that half-closes still gets the server's answer, and the server
/// sees the FIN.
#[test]
fn half_close_is_carried_both_ways() {
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = server.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        let mut req = Vec::new();
        s.read_to_end(&mut req).unwrap(); // returns only on the client's FIN
        s.write_all(b"answer:").unwrap();
        s.write_all(&req).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        req
    });
    let up = Up::start(&client_echo_mesh(target, ""));
    let mut c = TcpStream::connect(up.outbound("client", "echo")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"question").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).unwrap();
    assert_eq!(t.join().unwrap(), b"question");
    assert_eq!(answer, b"answer:question");
}

/// A refused upstream reaches the app as a TCP reset, promptly.
#[test]
fn refused_upstream_resets_the_client_promptly() {
    let up = Up::start(&client_echo_mesh(closed_port(), ""));
    let mut c = TcpStream::connect(up.outbound("client", "echo")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let _ = c.write_all(b"hello");
    let mut buf = [0u8; 16];
    let err = c
        .read(&mut buf)
        .expect_err("a refused upstream must not look like a clean close");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "got {err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "reset took {:?}",
        started.elapsed()
    );
    let text = up.metrics("echo");
    assert_eq!(
        metric(
            &text,
            "tunnel_streams_total",
            &[("direction", "inbound"), ("status", "upstream_refused")]
        ),
        1.0
    );
}

/// 1,000 concurrent connections through one proxy pair, one QUIC connection.
#[test]
fn a_thousand_concurrent_connections_share_one_quic_connection() {
    const N: usize = 1000;
    let up = Up::start(&client_echo_mesh(echo_server(), ""));
    let addr = up.outbound("client", "echo");
    let mut conns: Vec<TcpStream> = (0..N)
        .map(|_| {
            let c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            c
        })
        .collect();
    // All open at once: each says who it is, then each reads its own echo.
    for (i, c) in conns.iter_mut().enumerate() {
        c.write_all(format!("conn-{i:04}").as_bytes()).unwrap();
    }
    let text = eventually(
        Duration::from_secs(20),
        "1,000 open tunnelled connections",
        || {
            let t = up.metrics("client");
            (metric(&t, "tcp_open_connections", &[("direction", "outbound")]) as usize == N)
                .then_some(t)
        },
    );
    assert_eq!(
        metric(&text, "quic_connections_open", &[]),
        1.0,
        "one QUIC connection per peer"
    );
    assert_eq!(metric(&text, "quic_streams_open", &[]) as usize, N);
    for (i, c) in conns.iter_mut().enumerate() {
        let mut buf = [0u8; 9];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, format!("conn-{i:04}").as_bytes());
    }
    drop(conns);
    eventually(Duration::from_secs(20), "every connection closed", || {
        let t = up.metrics("client");
        (metric(&t, "tcp_open_connections", &[("direction", "outbound")]) == 0.0
            && metric(&t, "tcp_close_total", &[("direction", "outbound")]) as usize == N)
            .then_some(())
    });
}

/// A reader that stops reading stalls only its own connection: another
/// connection to the same peer keeps flowing, and the proxies' memory stays
/// bounded by the flow-control windows.
#[test]
fn a_stalled_reader_does_not_block_other_connections() {
    // The upstream accepts and never reads.
    let stall = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stall_addr = stall.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in stall.incoming() {
            held.push(s);
        }
    });
    let echo = echo_server();
    let yaml = format!(
        "trustDomain: phoenix.local\n\
         stateDir: state\n\
         workloads:\n\
         \x20 - name: client\n\
         \x20   upstreams: [{{service: stall, listen: \"127.0.0.1:0\"}}, {{service: echo, listen: \"127.0.0.1:0\"}}]\n\
         \x20 - name: server\n\
         \x20   serve: [{{service: stall, target: \"{stall_addr}\"}}, {{service: echo, target: \"{echo}\"}}]\n"
    );
    let up = Up::start(&yaml);
    let stalled = TcpStream::connect(up.outbound("client", "stall")).unwrap();
    stalled.set_nonblocking(true).unwrap();
    // Push until the writer is blocked: backpressure reached the app.
    let chunk = vec![7u8; 64 * 1024];
    let mut pushed = 0usize;
    let mut w = &stalled;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut blocked_since: Option<Instant> = None;
    loop {
        match w.write(&chunk) {
            Ok(n) => {
                pushed += n;
                blocked_since = None;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(500) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("write failed: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "the stalled connection absorbed {pushed} bytes without pushing back"
        );
    }
    // Bounded: stream window (8 MiB) plus kernel socket buffers on four sockets.
    assert!(
        pushed < 64 * 1024 * 1024,
        "{pushed} bytes buffered for a reader that never reads"
    );

    // Meanwhile another connection over the same peer connection works.
    let mut c = TcpStream::connect(up.outbound("client", "echo")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for i in 0..100 {
        let msg = format!("ping-{i:03}");
        c.write_all(msg.as_bytes()).unwrap();
        let mut buf = [0u8; 8];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, msg.as_bytes());
    }
    drop(stalled);
}

/// An app's reset reaches the other app as a reset, in both directions.
#[test]
fn resets_are_carried_both_ways() {
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = server.local_addr().unwrap();
    let up = Up::start(&client_echo_mesh(target, ""));
    let addr = up.outbound("client", "echo");

    // Client resets: the server sees ECONNRESET.
    let c = TcpStream::connect(addr).unwrap();
    (&c).write_all(b"x").unwrap();
    let (mut s, _) = server.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).unwrap();
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
    let err = s
        .read(&mut one)
        .expect_err("the server must see the client's reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err:?}");

    // Server resets: the client sees ECONNRESET.
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"y").unwrap();
    let (mut s, _) = server.accept().unwrap();
    s.read_exact(&mut one).unwrap();
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
    let err = c
        .read(&mut one)
        .expect_err("the client must see the server's reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err:?}");
}

/// A peer connection with no stream closes after `peerIdleTimeout`; one
/// carrying an idle TCP connection is kept alive far beyond QUIC's own idle
/// timeout.
#[test]
fn peer_connections_close_when_unused_but_never_under_an_idle_stream() {
    let mut m = harness::Manual::new(
        &client_echo_mesh(echo_server(), "peerIdleTimeout: 300ms\n"),
        &["client", "echo"],
    );
    m.start_control_plane("127.0.0.1:0");
    // A 1 s QUIC idle timeout on both ends, so the test need not wait 10 s.
    m.start_proxy("echo", &["--quic-idle-timeout", "1s"]);
    m.start_proxy("client", &["--quic-idle-timeout", "1s"]);
    let addr = m.outbound("client", "echo");
    let quic_open = || metric(&m.metrics("client"), "quic_connections_open", &[]);

    let mut idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    harness::ping(&mut idle, b"hello");
    // Deliberately silent for three QUIC idle timeouts: keep-alives hold it.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(quic_open(), 1.0);
    let peer_slots = || m.config("client")["peerSlots"].as_u64().unwrap();
    assert_eq!(peer_slots(), 1);
    harness::ping(&mut idle, b"still-here");

    drop(idle);
    eventually(
        Duration::from_secs(10),
        "the unused peer connection closed",
        || (quic_open() == 0.0).then_some(()),
    );
    // ...and the pool forgot the peer (it does not grow with pod churn).
    eventually(Duration::from_secs(5), "the peer forgotten", || {
        (peer_slots() == 0).then_some(())
    });
    harness::ping(&mut TcpStream::connect(addr).unwrap(), b"reconnects");
    let handshakes = metric(
        &m.metrics("client"),
        "tls_handshakes_total",
        &[("side", "client"), ("result", "success")],
    );
    assert_eq!(handshakes, 2.0, "a new peer connection was made on demand");
}
