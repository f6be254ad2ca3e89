//! Process faults with real processes (issue 18): a server's proxy killed
//! with SIGKILL in the middle of a transfer, then restarted.
//!
//! A killed proxy sends nothing: no CONNECTION_CLOSE, no stream reset. What
//! Phoenix promises is that nothing hangs and nothing is corrupted: the
//! client's connection ends within the QUIC idle timeout (10 s: keep-alives
//! every 3.3 s stop being answered) having received a prefix of the bytes
//! sent, a connection opened while the peer is gone is refused within the
//! connect timeout, and once the proxy is back new connections get through
//! as soon as the control plane has its new address.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

#[path = "support/harness.rs"]
mod harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use harness::{Manual, client_echo_mesh, echo_server, eventually, metric_or_absent, ping};

/// The idle timeout proxies run with (`--quic-idle-timeout` default).
const QUIC_IDLE: Duration = Duration::from_secs(10);

/// The bytes of a long transfer: position-dependent, so a reordered or
/// corrupted echo is seen.
fn pattern(at: u64) -> u8 {
    (at.wrapping_mul(2_654_435_761) >> 13) as u8
}

#[test]
fn a_server_proxy_killed_mid_transfer_ends_the_connection_and_the_mesh_recovers() {
    let mut m = Manual::new(
        &client_echo_mesh(echo_server(), "connectTimeout: 2s\n"),
        &["client", "echo"],
    );
    m.start_control_plane("127.0.0.1:0");
    m.start_proxy("client", &[]);
    m.start_proxy("echo", &[]);
    let addr = m.outbound("client", "echo");

    // A long transfer: one thread writes, this one reads the echo back.
    let mut conn = TcpStream::connect(addr).unwrap();
    ping(&mut conn, b"warm");
    conn.set_read_timeout(Some(QUIC_IDLE + Duration::from_secs(10)))
        .unwrap();
    let mut writer = conn.try_clone().unwrap();
    let wrote = std::thread::spawn(move || {
        let mut at = 0u64;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            for b in buf.iter_mut() {
                *b = pattern(at);
                at += 1;
            }
            if let Err(e) = writer.write_all(&buf) {
                return e.kind();
            }
        }
    });
    let mut received = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let read_some = |conn: &mut TcpStream, received: &mut u64, buf: &mut [u8]| {
        let n = conn.read(buf)?;
        for (i, b) in buf[..n].iter().enumerate() {
            assert_eq!(
                *b,
                pattern(*received + i as u64),
                "byte {} corrupted",
                *received + i as u64
            );
        }
        *received += n as u64;
        std::io::Result::Ok(n)
    };
    while received < 8 << 20 {
        read_some(&mut conn, &mut received, &mut buf).unwrap();
    }

    // SIGKILL the echo proxy mid-transfer.
    m.proxies.remove("echo");
    let killed = Instant::now();
    let ended = loop {
        match read_some(&mut conn, &mut received, &mut buf) {
            Ok(0) => break "end of stream",
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("the connection hung {:?} after the kill", killed.elapsed())
            }
            Err(_) => break "reset",
        }
    };
    let took = killed.elapsed();
    // An abort, not a clean close: a connection the proxy only half-closed
    // would still take the writer's bytes. (Linux reports the reset to
    // whichever call comes first, so the reader may see a plain end.)
    let writer_saw = wrote.join().unwrap();
    assert!(
        ended == "reset"
            || matches!(
                writer_saw,
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
        "the reader saw {ended}, the writer {writer_saw:?}: not an abort"
    );
    assert!(
        took <= QUIC_IDLE + Duration::from_secs(3),
        "the connection ended ({ended}) {took:?} after the kill"
    );
    eprintln!(
        "ended {took:?} after the kill (reader: {ended}, writer: {writer_saw:?}), {received} bytes echoed intact"
    );

    // While the peer is gone a new connection is refused promptly (the
    // connect timeout), never accepted into a hang and never sent in clear.
    let started = Instant::now();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = c.write_all(b"anyone?");
    let mut one = [0u8; 1];
    let outcome = c.read(&mut one);
    assert!(
        matches!(outcome, Ok(0) | Err(_))
            && !matches!(&outcome, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "{outcome:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "refused only after {:?}",
        started.elapsed()
    );

    // Back: the restarted proxy registers its new address and new
    // connections get through.
    m.start_proxy("echo", &[]);
    eventually(
        Duration::from_secs(20),
        "a new connection through the restarted proxy",
        || {
            let mut c = TcpStream::connect(addr).ok()?;
            c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            c.write_all(b"again").ok()?;
            let mut back = [0u8; 5];
            c.read_exact(&mut back).ok()?;
            (&back == b"again").then_some(())
        },
    );
    // The client proxy counted the dead peer's connection as gone.
    let metrics = m.metrics("client");
    assert_eq!(
        metric_or_absent(
            &metrics,
            "quic_connections_open",
            &[("direction", "outbound")]
        ),
        1.0,
        "only the new peer connection is open"
    );
    let _: SocketAddr = addr;
}
