//! The data path in one process: two real QUIC endpoints on loopback with
//! PQ mutual TLS, and real TCP sockets, without spawning proxies. Covers
//! what the end-to-end tests only see from outside: the pool's idle close
//! and pruning, failover and ejection, handshake failure classification,
//! the relay's half-close, reset mapping and idle timeout.
//!
//! Timers run on the real clock with short timeouts: quinn's own timers and
//! socket I/O do not mix with tokio's paused clock (it would advance past
//! a handshake that is only waiting for a loopback packet). Every wait is a
//! condition with a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use phoenix_api::SpiffeId;
use phoenix_api::control::ALPN_TUNNEL;
use phoenix_proxy::balance;
use phoenix_proxy::config::{EndpointConfig, MeshConfig};
use phoenix_proxy::connector::Connector;
use phoenix_proxy::metrics::{Direction, Metrics};
use phoenix_proxy::pool::{ConnectError, Pool};
use phoenix_proxy::relay::{self, RESET_CODE, RelayError, Start};
use phoenix_tls::endpoint::TransportSettings;
use phoenix_tls::handshake::{ClientAuth, HandshakeFailure, TlsPolicy};
use phoenix_tls::{Credentials, TlsContext, establish};
use prometheus_client::registry::Registry;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CLIENT: &str = "spiffe://td/ns/shop/sa/web";
const SERVER: &str = "spiffe://td/ns/shop/sa/db";

/// A test mesh root that signs SPIFFE leaves.
struct Root {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Root {
    fn new() -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A TLS context presenting `identity`.
    fn context(&self, identity: &str) -> TlsContext {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(identity.try_into().unwrap())];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = (now + Duration::from_secs(3600)).into();
        params.use_authority_key_identifier_extension = true;
        let chain = params.signed_by(&key, &self.issuer).unwrap().pem();
        let provider = phoenix_tls::provider::provider(
            phoenix_api::tls_policy::KeyExchange::PqOnly,
            phoenix_api::tls_policy::CipherSuite::DEFAULT,
        );
        let credentials = Arc::new(Credentials::default());
        credentials.store(Credentials::parse(&chain, &key.serialize_pem(), &provider).unwrap());
        TlsContext::new(&self.pem, credentials).unwrap()
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A peer proxy's endpoint: every stream it accepts goes to `on_stream`.
fn serve_peer<F, Fut>(root: &Root, identity: &str, on_stream: F) -> (SocketAddr, Arc<Metrics>)
where
    F: Fn(quinn::SendStream, quinn::RecvStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (addr, metrics, _) = serve_peer_counting(root, identity, on_stream);
    (addr, metrics)
}

/// [`serve_peer`], also counting connections whose client address an
/// address-validation token proved before the handshake.
fn serve_peer_counting<F, Fut>(
    root: &Root,
    identity: &str,
    on_stream: F,
) -> (SocketAddr, Arc<Metrics>, Arc<AtomicU32>)
where
    F: Fn(quinn::SendStream, quinn::RecvStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let validated = Arc::new(AtomicU32::new(0));
    let counter = validated.clone();
    let tls = root.context(identity);
    let transport = TransportSettings::default();
    let (default, _) = tls
        .server(
            &TlsPolicy::default(),
            ClientAuth::Required,
            &[ALPN_TUNNEL],
            transport.server_transport(),
        )
        .unwrap();
    let endpoint = phoenix_tls::endpoint::bind(loopback(), &transport, Some(default)).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let metrics = Arc::new(Metrics::default());
    let on_stream = Arc::new(on_stream);
    let server_metrics = metrics.clone();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            if incoming.remote_address_validated() {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            let (config, lease) = tls
                .server(
                    &TlsPolicy::default(),
                    ClientAuth::Required,
                    &[ALPN_TUNNEL],
                    transport.server_transport(),
                )
                .unwrap();
            let (metrics, on_stream) = (server_metrics.clone(), on_stream.clone());
            tokio::spawn(async move {
                let recorder = metrics.handshakes(phoenix_proxy::metrics::Side::server);
                let Ok(established) =
                    establish::accept(incoming, config, lease, ClientAuth::Required, &recorder)
                        .await
                else {
                    return;
                };
                while let Ok((send, recv)) = established.conn.accept_bi().await {
                    tokio::spawn(on_stream(send, recv));
                }
            });
        }
    });
    (addr, metrics, validated)
}

/// A pool dialling from its own endpoint as `identity`.
fn pool(root: &Root, identity: &str) -> (Pool, Arc<Metrics>) {
    let transport = TransportSettings::default();
    let endpoint = phoenix_tls::endpoint::bind(loopback(), &transport, None).unwrap();
    let metrics = Arc::new(Metrics::default());
    let connector = Connector::new(
        root.context(identity),
        transport,
        endpoint,
        metrics.clone(),
        phoenix_proxy::connector::PeerProtocol::Tunnel,
    );
    (Pool::new(connector), metrics)
}

fn mesh(peer_idle: Duration) -> MeshConfig {
    MeshConfig {
        trust_domain: "td".into(),
        tls: TlsPolicy::default(),
        identity_algorithm: Default::default(),
        peer_idle_timeout: peer_idle,
        connect_timeout: Duration::from_secs(2),
        inbound_mode: Default::default(),
        trust_bundle: None,
    }
}

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

/// Waits until `condition` holds, failing after `limit`.
async fn until(what: &str, limit: Duration, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of one metric sample in `metrics`' text exposition.
fn sample(metrics: &Metrics, name_and_labels: &str) -> Option<f64> {
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

async fn discard(_send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let _ = recv.read_to_end(1 << 20).await;
}

#[tokio::test]
async fn an_idle_peer_connection_closes_and_its_slot_is_forgotten() {
    let root = Root::new();
    let (addr, _) = serve_peer(&root, SERVER, discard);
    let (pool, metrics) = pool(&root, CLIENT);
    let idle = Duration::from_millis(150);
    let peer = pool
        .get(addr, &id(SERVER), &mesh(idle), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(peer.kx_group, "X25519MLKEM768");
    assert_eq!(pool.len(), 1);
    // An open stream keeps the connection past the idle timeout.
    let stream = peer.stream_guard();
    tokio::time::sleep(idle * 3).await;
    assert!(
        peer.conn.close_reason().is_none(),
        "closed with a stream open"
    );
    // The same connection is shared by the next caller.
    let again = pool
        .get(addr, &id(SERVER), &mesh(idle), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(again.conn.stable_id(), peer.conn.stable_id());
    drop(stream);
    until(
        "the idle connection is closed and forgotten",
        Duration::from_secs(5),
        || peer.conn.close_reason().is_some() && pool.is_empty(),
    )
    .await;
    assert_eq!(
        sample(
            &metrics,
            "tls_handshakes_total{side=\"client\",kx_group=\"X25519MLKEM768\",sig_scheme=\"ECDSA_NISTP256_SHA256\",result=\"success\"}"
        ),
        Some(1.0)
    );
}

/// A peer that comes back after its connection closed presents the
/// address-validation token the server gave it, so the server may send its
/// whole flight at once (the wait that costs ML-DSA handshakes a round trip).
#[tokio::test]
async fn a_returning_peer_presents_an_address_validation_token() {
    let root = Root::new();
    let (addr, _, validated) = serve_peer_counting(&root, SERVER, discard);
    let (pool, _) = pool(&root, CLIENT);
    let idle = Duration::from_millis(150);
    let first = pool
        .get(addr, &id(SERVER), &mesh(idle), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(
        validated.load(Ordering::Relaxed),
        0,
        "first contact has no token"
    );
    // Servers send tokens once the handshake is confirmed.
    until("the server's tokens arrive", Duration::from_secs(5), || {
        first.conn.stats().frame_rx.new_token >= 1
    })
    .await;
    until("the idle connection closes", Duration::from_secs(5), || {
        first.conn.close_reason().is_some() && pool.is_empty()
    })
    .await;
    let again = pool
        .get(addr, &id(SERVER), &mesh(idle), Duration::from_secs(2))
        .await
        .unwrap();
    assert_ne!(again.conn.stable_id(), first.conn.stable_id());
    assert_eq!(
        validated.load(Ordering::Relaxed),
        1,
        "the returning peer's address was validated by its token"
    );
}

#[tokio::test]
async fn a_failed_handshake_is_classified_and_leaves_no_slot() {
    let root = Root::new();
    // The peer presents another identity than the one expected.
    let (addr, _) = serve_peer(&root, "spiffe://td/ns/shop/sa/impostor", discard);
    let (pool, metrics) = pool(&root, CLIENT);
    let error = pool
        .get(
            addr,
            &id(SERVER),
            &mesh(Duration::from_secs(30)),
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ConnectError::Handshake(HandshakeFailure::BadIdentity)
        ),
        "{error:?}"
    );
    assert!(pool.is_empty(), "a peer nobody waits for is forgotten");
    assert_eq!(
        sample(
            &metrics,
            "tls_handshake_failures_total{side=\"client\",reason=\"bad_identity\"}"
        ),
        Some(1.0)
    );
    // Nobody listens here: the connect timeout bounds the handshake.
    let silent = std::net::UdpSocket::bind(loopback()).unwrap();
    let started = Instant::now();
    let error = pool
        .get(
            silent.local_addr().unwrap(),
            &id(SERVER),
            &mesh(Duration::from_secs(30)),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectError::Handshake(HandshakeFailure::Timeout)),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded by the connect timeout"
    );
    assert!(pool.is_empty());
}

#[tokio::test]
async fn failover_sets_a_dead_endpoint_aside_and_reaches_a_live_one() {
    let root = Root::new();
    let (live, _) = serve_peer(&root, SERVER, discard);
    let dead = std::net::UdpSocket::bind(loopback()).unwrap();
    let dead = dead.local_addr().unwrap();
    let (pool, _) = pool(&root, CLIENT);
    let endpoints = [
        EndpointConfig {
            address: dead,
            identity: id(SERVER),
            other_ips: vec![],
        },
        EndpointConfig {
            address: live,
            identity: id(SERVER),
            other_ips: vec![],
        },
    ];
    let mesh = mesh(Duration::from_secs(30));
    // Whichever is drawn first, the live one is reached and a dead one
    // tried on the way is set aside for the next choice.
    for _ in 0..4 {
        let (_peer, endpoint) =
            balance::connect(&pool, &endpoints, &mesh, Duration::from_millis(200))
                .await
                .expect("the live endpoint");
        assert_eq!(endpoint.address, live);
    }
    assert!(!pool.failures().ejected(live, Instant::now()));
    // Only dead endpoints: every attempt fails, and the caller hears so.
    let only_dead = &endpoints[..1];
    assert!(
        balance::connect(&pool, only_dead, &mesh, Duration::from_millis(100))
            .await
            .is_none()
    );
    assert!(pool.failures().ejected(dead, Instant::now()));
}

/// A connected TCP pair on loopback: (the app's end, the proxy's end).
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let app = TcpStream::connect(listener.local_addr().unwrap());
    let (app, accepted) = tokio::join!(app, listener.accept());
    (app.unwrap(), accepted.unwrap().0)
}

/// One relayed connection: the app's TCP end, the peer's end of the QUIC
/// stream, and the relay between them (inbound side) running.
struct Relayed {
    app: TcpStream,
    peer_send: quinn::SendStream,
    peer_recv: quinn::RecvStream,
    relay: tokio::task::JoinHandle<Result<(), RelayError>>,
    /// Holds the QUIC connection open for the test's length.
    _pool: Pool,
}

/// Starts a relay between a fresh TCP pair and a fresh QUIC stream, with
/// `idle` as its idle timeout.
async fn relayed(root: &Root, idle: Option<Duration>) -> Relayed {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let (addr, _) = serve_peer(root, SERVER, move |send, recv| {
        if let Some(tx) = tx.lock().unwrap().take() {
            let _ = tx.send((send, recv));
        }
        async {}
    });
    let (pool, _) = pool(root, CLIENT);
    let peer = pool
        .get(
            addr,
            &id(SERVER),
            &mesh(Duration::from_secs(30)),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    let (mut send, recv) = peer.conn.open_bi().await.unwrap();
    // A stream reaches the peer with its first bytes.
    send.write_all(b"hi").await.unwrap();
    let (peer_send, mut peer_recv) = rx.await.unwrap();
    let mut hi = [0u8; 2];
    peer_recv.read_exact(&mut hi).await.unwrap();
    let (app, proxy_end) = tcp_pair().await;
    let relay = tokio::spawn(async move {
        let metrics = Metrics::default();
        let counters = metrics.tcp(Direction::inbound, CLIENT);
        relay::relay(
            proxy_end,
            send,
            recv,
            Start::Payload(Bytes::new()),
            &counters,
            idle,
        )
        .await
    });
    Relayed {
        app,
        peer_send,
        peer_recv,
        relay,
        _pool: pool,
    }
}

#[tokio::test]
async fn the_relay_carries_half_close_both_ways() {
    let root = Root::new();
    let mut r = relayed(&root, None).await;
    // The app sends and half-closes: the peer reads to a clean end.
    r.app.write_all(b"request").await.unwrap();
    r.app.shutdown().await.unwrap();
    let got = r.peer_recv.read_to_end(1024).await.unwrap();
    assert_eq!(got, b"request");
    // The peer still answers on its half, then finishes: the app reads
    // the answer, then EOF.
    r.peer_send.write_all(b"response").await.unwrap();
    r.peer_send.finish().unwrap();
    let mut answer = Vec::new();
    r.app.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"response");
    r.relay.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_tcp_reset_resets_the_stream_and_a_stream_reset_resets_the_tcp() {
    let root = Root::new();
    // App resets: the peer sees a stream reset with our code, not an end.
    let mut r = relayed(&root, None).await;
    r.app.set_zero_linger().unwrap();
    drop(r.app);
    match r.peer_recv.read_to_end(1024).await {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
            assert_eq!(code, RESET_CODE)
        }
        other => panic!("expected a stream reset, got {other:?}"),
    }
    assert!(matches!(r.relay.await.unwrap(), Err(RelayError::Local(_))));

    // Peer resets: the app's read fails with a reset, not a clean EOF.
    let mut r = relayed(&root, None).await;
    r.peer_send.reset(RESET_CODE).unwrap();
    let mut buf = [0u8; 16];
    let read = r.app.read(&mut buf).await;
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "the app sees the reset"
    );
    assert!(matches!(r.relay.await.unwrap(), Err(RelayError::Peer)));
}

#[tokio::test]
async fn the_relay_closes_a_connection_idle_past_its_timeout_and_not_a_busy_one() {
    let root = Root::new();
    let idle = Duration::from_millis(300);
    let mut r = relayed(&root, Some(idle)).await;
    // Bytes every 100 ms for three idle periods: still open.
    let busy_until = Instant::now() + idle * 3;
    let mut buf = [0u8; 4];
    while Instant::now() < busy_until {
        r.peer_send.write_all(b"tick").await.unwrap();
        r.app.read_exact(&mut buf).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!r.relay.is_finished(), "closed while bytes were moving");
    // Then silence: closed as idle, and the app sees an abort.
    let ended = tokio::time::timeout(idle * 10, r.relay)
        .await
        .expect("closed as idle");
    assert!(matches!(ended.unwrap(), Err(RelayError::Idle(d)) if d == idle));
    let read = r.app.read(&mut buf).await;
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{read:?}"
    );
}

#[tokio::test]
async fn a_peer_that_leaves_the_config_drains_without_cutting_its_streams() {
    let root = Root::new();
    let (addr, _) = serve_peer(&root, SERVER, discard);
    let (pool, _) = pool(&root, CLIENT);
    let mesh = mesh(Duration::from_secs(30));
    let peer = pool
        .get(addr, &id(SERVER), &mesh, Duration::from_secs(2))
        .await
        .unwrap();
    let stream = peer.stream_guard();
    // The new config no longer lists the peer.
    pool.retain(|_, _| false);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        peer.conn.close_reason().is_none(),
        "an open stream is not cut"
    );
    // No new stream goes to it: a caller gets a fresh connection.
    let fresh = pool
        .get(addr, &id(SERVER), &mesh, Duration::from_secs(2))
        .await
        .unwrap();
    assert_ne!(fresh.conn.stable_id(), peer.conn.stable_id());
    drop(stream);
    until(
        "the drained connection closes",
        Duration::from_secs(5),
        || peer.conn.close_reason().is_some(),
    )
    .await;
    assert!(fresh.conn.close_reason().is_none(), "the fresh one stays");
}
