//! Security properties of the tunnel, checked against live proxies with real
//! QUIC handshakes: the post-quantum group is what is negotiated, classical
//! peers are refused under `pq-only`, foreign CAs and wrong identities are
//! refused, and allow-lists deny per stream.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

#[path = "support/harness.rs"]
mod harness;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use harness::{Up, client_echo_mesh, echo_server, eventually, metric, wait_metric};
use phoenix_api::SpiffeId;
use phoenix_api::control::ALPN_TUNNEL;
use phoenix_api::tls_policy::KeyExchange;
use phoenix_control_plane::ca::Ca;
use phoenix_tls::credentials::Credentials;
use phoenix_tls::endpoint::TransportSettings;
use phoenix_tls::kx::KxLease;
use phoenix_tls::verify::SpiffeServerVerifier;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::NamedGroup;
use rustls::crypto::SupportedKxGroup;
use rustls::crypto::aws_lc_rs::kx_group;

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

/// A client outside the proxies: our own quinn endpoint, a certificate from
/// `ca`, and exactly the key-exchange groups given.
struct TestClient {
    endpoint: quinn::Endpoint,
    credentials: Arc<Credentials>,
    roots: Arc<rustls::RootCertStore>,
}

impl TestClient {
    fn new(ca: &Ca, trust: &str, identity: &SpiffeId) -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let pem = ca
            .issue_for_key(&key, identity, Duration::from_secs(600))
            .unwrap();
        let provider = phoenix_tls::provider::provider(KeyExchange::PqOnly, &[]);
        let credentials = Arc::new(Credentials::default());
        credentials.store(Credentials::parse(&pem, &key.serialize_pem(), &provider).unwrap());
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(trust.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let endpoint = phoenix_tls::endpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            &TransportSettings::default(),
            None,
        )
        .unwrap();
        Self {
            endpoint,
            credentials,
            roots: Arc::new(roots),
        }
    }

    /// Handshakes with `server`, which must be `expected`, offering `groups`.
    async fn connect(
        &self,
        server: SocketAddr,
        expected: &SpiffeId,
        groups: &[&'static dyn SupportedKxGroup],
    ) -> Result<(quinn::Connection, Option<NamedGroup>), quinn::ConnectionError> {
        let lease = KxLease::acquire();
        let mut provider = phoenix_tls::provider::provider(KeyExchange::PqPreferred, &[]);
        provider.kx_groups = lease.wrap(groups);
        let verifier = SpiffeServerVerifier::new(
            self.roots.clone(),
            expected.clone(),
            provider.signature_verification_algorithms,
        );
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(self.credentials.clone());
        tls.alpn_protocols = vec![ALPN_TUNNEL.to_vec()];
        let initial = rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256
            .tls13()
            .unwrap()
            .quic_suite()
            .unwrap();
        let quic = QuicClientConfig::with_initial(Arc::new(tls), initial).unwrap();
        let config = quinn::ClientConfig::new(Arc::new(quic));
        let conn = self
            .endpoint
            .connect_with(config, server, "peer.phoenix")
            .unwrap()
            .await?;
        Ok((conn, lease.negotiated()))
    }
}

fn mesh_ca(up: &Up) -> (Ca, String) {
    let (ca, _) = Ca::load_or_create(&up.state_dir(), "phoenix.local", Default::default()).unwrap();
    let pem = ca.root_pem().to_owned();
    (ca, pem)
}

fn request(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut c = TcpStream::connect(addr)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.write_all(msg)?;
    let mut buf = vec![0u8; msg.len()];
    c.read_exact(&mut buf)?;
    Ok(buf)
}

const ECHO_ID: &str = "spiffe://phoenix.local/ns/default/sa/echo";
const CLIENT_ID: &str = "spiffe://phoenix.local/ns/default/sa/client";

#[tokio::test]
async fn the_live_handshake_negotiates_x25519mlkem768_on_both_sides() {
    let up = Up::start(&client_echo_mesh(echo_server(), ""));
    assert_eq!(
        request(up.outbound("client", "echo"), b"hi").unwrap(),
        b"hi"
    );
    let client = up.metrics("client");
    let server = up.metrics("echo");
    let want = |side| {
        [
            ("side", side),
            ("kx_group", "X25519MLKEM768"),
            ("result", "success"),
        ]
    };
    assert_eq!(
        metric(&client, "tls_handshakes_total", &want("client")),
        1.0
    );
    assert_eq!(
        metric(&server, "tls_handshakes_total", &want("server")),
        1.0
    );
    assert_eq!(
        metric(&server, "tls_handshakes_total", &[("kx_group", "X25519")]),
        0.0
    );

    // And from our own side of a live connection to the echo proxy.
    let (ca, trust) = mesh_ca(&up);
    let c = TestClient::new(&ca, &trust, &id(CLIENT_ID));
    let (_conn, group) = c
        .connect(
            up.inbound("echo"),
            &id(ECHO_ID),
            &[kx_group::X25519MLKEM768, kx_group::X25519],
        )
        .await
        .unwrap();
    assert_eq!(group, Some(NamedGroup::X25519MLKEM768));
}

#[tokio::test]
async fn a_classical_only_client_is_refused_by_pq_only() {
    let up = Up::start(&client_echo_mesh(echo_server(), ""));
    let (ca, trust) = mesh_ca(&up);
    let c = TestClient::new(&ca, &trust, &id(CLIENT_ID));
    let err = c
        .connect(up.inbound("echo"), &id(ECHO_ID), &[kx_group::X25519])
        .await
        .expect_err("an X25519-only client must be refused");
    let reason = phoenix_tls::HandshakeFailure::classify(&err);
    assert_eq!(
        reason,
        phoenix_tls::HandshakeFailure::NoSharedGroup,
        "{err}"
    );
    // The server counts as it sends the alert; the client may see it first.
    wait_metric(
        &up,
        "echo",
        "tls_handshake_failures_total",
        &[("side", "server"), ("reason", "no_shared_group")],
        1.0,
    );
}

#[tokio::test]
async fn pq_preferred_accepts_a_classical_client_and_counts_it() {
    let up = Up::start(&client_echo_mesh(
        echo_server(),
        "keyExchange: pq-preferred\n",
    ));
    // The mesh setting reaches the echo proxy through config.
    eventually(Duration::from_secs(10), "pq-preferred config", || {
        harness::get(up.admin("echo"), "/config")
            .1
            .contains("pq-preferred")
            .then_some(())
    });
    let (ca, trust) = mesh_ca(&up);
    let c = TestClient::new(&ca, &trust, &id(CLIENT_ID));
    let (_conn, group) = c
        .connect(up.inbound("echo"), &id(ECHO_ID), &[kx_group::X25519])
        .await
        .unwrap();
    assert_eq!(group, Some(NamedGroup::X25519));
    // The server counts when its side of the handshake completes.
    wait_metric(
        &up,
        "echo",
        "tls_handshakes_total",
        &[
            ("side", "server"),
            ("kx_group", "X25519"),
            ("result", "success"),
        ],
        1.0,
    );
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let up = Up::start(&client_echo_mesh(echo_server(), ""));
    let (_, trust) = mesh_ca(&up);
    let rogue = Ca::generate("phoenix.local").unwrap();
    let c = TestClient::new(&rogue, &trust, &id(CLIENT_ID));
    // TLS 1.3 clients finish before the server has checked their
    // certificate: the refusal arrives as the connection's close.
    let err = match c
        .connect(
            up.inbound("echo"),
            &id(ECHO_ID),
            &[kx_group::X25519MLKEM768],
        )
        .await
    {
        Err(e) => e,
        Ok((conn, _)) => tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .expect("a client certificate from another CA must be refused"),
    };
    assert_eq!(
        phoenix_tls::HandshakeFailure::classify(&err),
        phoenix_tls::HandshakeFailure::UnknownCa,
        "{err}"
    );
    // The server counts as it sends the alert; the client may see it first.
    wait_metric(
        &up,
        "echo",
        "tls_handshake_failures_total",
        &[("side", "server"), ("reason", "unknown_ca")],
        1.0,
    );
}

#[tokio::test]
async fn a_server_with_the_wrong_identity_is_refused() {
    let up = Up::start(&client_echo_mesh(echo_server(), ""));
    let (ca, trust) = mesh_ca(&up);
    let c = TestClient::new(&ca, &trust, &id(CLIENT_ID));
    // The echo proxy presents .../sa/echo; we were told to expect .../sa/db.
    let err = c
        .connect(
            up.inbound("echo"),
            &id("spiffe://phoenix.local/ns/default/sa/db"),
            &[kx_group::X25519MLKEM768],
        )
        .await
        .expect_err("a server with another identity must be refused");
    assert_eq!(
        phoenix_tls::HandshakeFailure::classify(&err),
        phoenix_tls::HandshakeFailure::BadIdentity,
        "{err}"
    );
}

#[test]
fn an_identity_outside_the_allow_list_is_denied() {
    let echo = echo_server();
    let yaml = format!(
        "trustDomain: phoenix.local\n\
         stateDir: state\n\
         workloads:\n\
         \x20 - name: client\n\
         \x20   upstreams: [{{service: echo, listen: \"127.0.0.1:0\"}}]\n\
         \x20 - name: intruder\n\
         \x20   upstreams: [{{service: echo, listen: \"127.0.0.1:0\"}}]\n\
         \x20 - name: echo\n\
         \x20   serve: [{{service: echo, target: \"{echo}\", allow: [client]}}]\n"
    );
    let up = Up::start(&yaml);
    assert_eq!(
        request(up.outbound("client", "echo"), b"allowed").unwrap(),
        b"allowed"
    );
    let err = request(up.outbound("intruder", "echo"), b"let me in")
        .expect_err("intruder must be denied");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err:?}");
    let server = up.metrics("echo");
    assert_eq!(
        metric(
            &server,
            "authz_deny_total",
            &[
                ("service", "echo"),
                ("client_id", "spiffe://phoenix.local/ns/default/sa/intruder")
            ]
        ),
        1.0
    );
    assert_eq!(
        metric(&server, "tunnel_streams_total", &[("status", "denied")]),
        1.0
    );
    let intruder = up.metrics("intruder");
    assert_eq!(
        metric(
            &intruder,
            "tunnel_streams_total",
            &[("direction", "outbound"), ("status", "denied")]
        ),
        1.0,
        "the outbound side learns the status, not just a dead stream"
    );
}

/// A UDP echo app: each datagram back to its sender.
fn udp_echo() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65_535];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    });
    addr
}

/// A mesh whose `echo` workload serves a UDP echo app (`env` set for its
/// processes), and a peer of our own with the client's identity.
async fn udp_mesh_and_peer(env: &[(&str, &str)]) -> (Up, TestClient) {
    let target = udp_echo();
    let up = Up::start_env(
        &format!(
            "trustDomain: phoenix.local\n\
             stateDir: state\n\
             workloads:\n\
             \x20 - name: client\n\
             \x20   upstreams: [{{service: echo, transport: udp, listen: \"127.0.0.1:0\"}}]\n\
             \x20 - name: echo\n\
             \x20   serve: [{{service: echo, transport: udp, target: \"{target}\", allow: [client]}}]\n"
        ),
        env,
    );
    let (ca, trust) = mesh_ca(&up);
    let peer = TestClient::new(&ca, &trust, &id(CLIENT_ID));
    (up, peer)
}

impl TestClient {
    /// A post-quantum tunnel connection to the echo proxy.
    async fn connect_echo(&self, up: &Up) -> quinn::Connection {
        self.connect(
            up.inbound("echo"),
            &id(ECHO_ID),
            &[kx_group::X25519MLKEM768],
        )
        .await
        .unwrap()
        .0
    }
}

/// Opens a UDP flow to `service` on `conn` as a client proxy does; its
/// datagram prefix once the peer answered `connected`.
async fn open_flow(conn: &quinn::Connection, service: &str) -> (quinn::SendStream, Vec<u8>) {
    let (send, prefix, status) = try_flow(conn, service).await;
    assert_eq!(status, phoenix_api::header::Status::Connected);
    (send, prefix)
}

/// Asks for a UDP flow to `service` on `conn`; the stream, the flow's
/// datagram prefix and the peer's answer.
async fn try_flow(
    conn: &quinn::Connection,
    service: &str,
) -> (quinn::SendStream, Vec<u8>, phoenix_api::header::Status) {
    use phoenix_api::header::{ConnectRequest, decode_response};
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut header = Vec::new();
    ConnectRequest {
        service: Some(service.parse().unwrap()),
        original_dst: None,
        connection_id: 7,
    }
    .encode(&mut header)
    .unwrap();
    send.write_all(&header).await.unwrap();
    let mut answer = Vec::new();
    let status = loop {
        if let Some((r, _)) = decode_response(&answer).unwrap() {
            break r.status;
        }
        let chunk = recv.read_chunk(64, true).await.unwrap().unwrap();
        answer.extend_from_slice(&chunk.bytes);
    };
    let id = phoenix_api::datagram::FlowId::of_stream(quinn::VarInt::from(send.id()).into_inner());
    let mut prefix = Vec::new();
    id.encode(&mut prefix);
    (send, prefix, status)
}

/// A hostile or broken peer speaking UDP to a proxy: datagrams with no
/// flow id, a truncated one, an id no flow has, another connection's flow
/// id; each is dropped and counted, none reaches the app, and a real flow
/// beside them works and hears only its own replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_udp_datagrams_from_a_peer_are_counted_and_flows_stay_isolated() {
    let (up, peer) = udp_mesh_and_peer(&[]).await;
    let a = peer.connect_echo(&up).await;
    let b = peer.connect_echo(&up).await;
    let (_flow, prefix) = open_flow(&a, "echo/udp").await;
    let mut hello = prefix.clone();
    hello.extend_from_slice(b"hello");
    // The real flow works.
    assert_eq!(echo_of(&a, &hello, None).await, hello);
    // Garbage on the same connection.
    for bad in [&[][..], &[0x40][..], &[0x3f, b'x'][..]] {
        a.send_datagram(bad.to_vec().into()).unwrap();
    }
    // The other connection uses the first one's flow id.
    b.send_datagram(hello.clone().into()).unwrap();
    let peer = ("peer_identity", CLIENT_ID);
    let counted = |result: &'static str, want: f64| {
        let up = &up;
        async move {
            let labels = [("direction", "inbound"), peer, ("result", result)];
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let text = tokio::task::block_in_place(|| up.metrics("echo"));
                if harness::metric_or_absent(&text, "udp_datagrams_total", &labels) == want {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{result}: never {want}\n{text}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    counted("malformed", 2.0).await;
    counted("no_flow", 2.0).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), b.read_datagram())
            .await
            .is_err(),
        "a connection heard another's flow"
    );
    // The flow still works, and only its own datagrams came back.
    let mut again = prefix.clone();
    again.extend_from_slice(b"again");
    assert_eq!(echo_of(&a, &again, Some(&hello)).await, again);
}

/// Sends `datagram` on `conn` until an echo other than `stale` comes back
/// (UDP: a datagram sent before the server's reader ran may be lost).
async fn echo_of(conn: &quinn::Connection, datagram: &[u8], stale: Option<&[u8]>) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        conn.send_datagram(datagram.to_vec().into()).unwrap();
        if let Ok(Ok(d)) =
            tokio::time::timeout(Duration::from_millis(500), conn.read_datagram()).await
            && Some(d.as_ref()) != stale
        {
            return d.to_vec();
        }
        assert!(tokio::time::Instant::now() < deadline, "no echo");
    }
}

/// A peer may hold only so many UDP flows at a proxy (each is a socket):
/// past `--max-udp-flows-per-peer` its new flows are refused, another
/// peer's are not, and a flow ended frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_holds_at_most_its_share_of_udp_flows() {
    use phoenix_api::header::Status;
    let (up, peer) = udp_mesh_and_peer(&[("PHOENIX_MAX_UDP_FLOWS_PER_PEER", "3")]).await;
    let a = peer.connect_echo(&up).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(open_flow(&a, "echo/udp").await);
    }
    let (_, _, fourth) = try_flow(&a, "echo/udp").await;
    assert_eq!(
        fourth,
        Status::UpstreamRefused,
        "a fourth flow on one connection"
    );
    // Another connection has a share of its own.
    let b = peer.connect_echo(&up).await;
    let (_b_flow, b_prefix) = open_flow(&b, "echo/udp").await;
    let mut hello = b_prefix.clone();
    hello.extend_from_slice(b"hello");
    assert_eq!(echo_of(&b, &hello, None).await, hello);
    // Ending one flow frees its place.
    let (mut ended, _) = held.pop().unwrap();
    ended.finish().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_send, _, status) = try_flow(&a, "echo/udp").await;
        if status == Status::Connected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
