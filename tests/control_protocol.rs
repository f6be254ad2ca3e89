//! The control plane's wire protocol, spoken directly: certificate issuance
//! binds identity to the token (never the CSR), subscriptions need a client
//! certificate, and every served wire version reads its stream with its own
//! frozen types (deltas from version 2, full snapshots for version 1).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

#[path = "support/harness.rs"]
mod harness;

use std::sync::Arc;
use std::time::Duration;

use harness::{Manual, client_echo_mesh, echo_server};
use phoenix_api::SpiffeId;
use phoenix_api::control::{ALPN_CONTROL, ErrorCode, Request, Response};
use phoenix_api::frame::{self, Direction, FrameDecoder};
use phoenix_control_plane::ca::Ca;
use phoenix_tls::credentials::Credentials;
use phoenix_tls::endpoint::TransportSettings;
use phoenix_tls::handshake::TlsPolicy;

struct Client {
    endpoint: quinn::Endpoint,
    tls: phoenix_tls::TlsContext,
    cp: std::net::SocketAddr,
    cp_id: SpiffeId,
}

impl Client {
    /// A client holding a certificate for `identity` (when given) from the mesh CA.
    fn new(m: &Manual, identity: Option<&str>) -> Self {
        let state = m.dir.path().join("state");
        let root = std::fs::read_to_string(state.join("ca.crt")).unwrap();
        let credentials = Arc::new(Credentials::default());
        if let Some(identity) = identity {
            let (ca, _) = Ca::load_or_create(&state, "phoenix.local", Default::default()).unwrap();
            // A key of the mesh root's algorithm, as a proxy's.
            let key = rcgen::KeyPair::generate_for(phoenix_control_plane::ca::signature_algorithm(
                ca.algorithm(),
            ))
            .unwrap();
            let pem = ca
                .issue_for_key(&key, &identity.parse().unwrap(), Duration::from_secs(600))
                .unwrap();
            let provider = phoenix_tls::provider::provider(Default::default(), &[]);
            credentials.store(Credentials::parse(&pem, &key.serialize_pem(), &provider).unwrap());
        }
        Self {
            endpoint: phoenix_tls::endpoint::bind(
                "127.0.0.1:0".parse().unwrap(),
                &TransportSettings::default(),
                None,
            )
            .unwrap(),
            tls: phoenix_tls::TlsContext::new(&root, credentials).unwrap(),
            cp: m.control_addr(),
            cp_id: m.cp_bound["identity"].as_str().unwrap().parse().unwrap(),
        }
    }

    async fn stream(
        &self,
        with_cert: bool,
        request: &[u8],
    ) -> (quinn::Connection, quinn::RecvStream) {
        let (config, _lease) = self
            .tls
            .client(
                &TlsPolicy::default(),
                self.cp_id.clone(),
                &[ALPN_CONTROL],
                with_cert,
                TransportSettings::default().client_transport(),
            )
            .unwrap();
        let conn = self
            .endpoint
            .connect_with(config, self.cp, "cp")
            .unwrap()
            .await
            .unwrap();
        let (mut send, recv) = conn.open_bi().await.unwrap();
        // The control plane may refuse a request from its first bytes and
        // stop reading; what it answers is what the tests look at.
        let _ = send.write_all(request).await;
        (conn, recv)
    }

    async fn one(&self, with_cert: bool, request: &Request) -> Response {
        self.one_raw(with_cert, &encode(request)).await
    }

    /// Sends `bytes` as a stream's request; the answer.
    async fn one_raw(&self, with_cert: bool, bytes: &[u8]) -> Response {
        let (_conn, mut recv) = self.stream(with_cert, bytes).await;
        next(&mut recv).await
    }
}

fn start() -> Manual {
    let mut m = Manual::new(&client_echo_mesh(echo_server(), ""), &["client", "echo"]);
    m.start_control_plane("127.0.0.1:0");
    m
}

fn encode(request: &Request) -> Vec<u8> {
    frame::encode_frame(request, Direction::Request).unwrap()
}

/// The next message on `r`, read as a proxy of this build reads it.
async fn next(r: &mut quinn::RecvStream) -> Response {
    frame::decode_body(&next_body(r).await).unwrap()
}

/// The body of the next frame on `r`.
async fn next_body(r: &mut quinn::RecvStream) -> Vec<u8> {
    let read = async {
        // Reading at most what the frame still wants never reads into the
        // next frame, so a decoder per message is enough.
        let mut frames = FrameDecoder::new(Direction::Response);
        loop {
            if let Some(body) = frames.take() {
                return body;
            }
            let chunk = r.read_chunk(frames.wanted(), true).await.unwrap();
            frames
                .feed(&chunk.expect("a message, not the end").bytes)
                .unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap()
}

fn csr_asking_for(san: &str) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    rcgen::CertificateParams::new(vec![san.to_owned()])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}

#[tokio::test]
async fn the_token_decides_the_identity_not_the_csr() {
    let m = start();
    let c = Client::new(&m, None);
    let csr = csr_asking_for("echo.default.svc");
    match c
        .one(
            false,
            &Request::IssueCertificate {
                token: m.tokens["client"].clone().into(),
                csr_pem: csr.clone(),
            },
        )
        .await
    {
        Response::Certificate {
            chain_pem,
            identity,
        } => {
            assert_eq!(identity, "spiffe://phoenix.local/ns/default/sa/client");
            use rustls::pki_types::pem::PemObject;
            let der =
                rustls::pki_types::CertificateDer::from_pem_slice(chain_pem.as_bytes()).unwrap();
            assert_eq!(
                phoenix_tls::spiffe::spiffe_id(&der).unwrap().to_string(),
                identity
            );
        }
        other => panic!("expected a certificate, got {other:?}"),
    }
    match c
        .one(
            false,
            &Request::IssueCertificate {
                token: "forged".into(),
                csr_pem: csr,
            },
        )
        .await
    {
        Response::Error { code, message } => {
            assert_eq!(code, ErrorCode::InvalidToken);
            assert!(message.contains("token"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    match c
        .one(
            false,
            &Request::IssueCertificate {
                token: m.tokens["echo"].clone().into(),
                csr_pem: "not a csr".into(),
            },
        )
        .await
    {
        Response::Error { code, .. } => assert_eq!(code, ErrorCode::InvalidCsr),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn subscribing_needs_a_certificate_and_a_served_wire_version() {
    let m = start();
    let inbound = "127.0.0.1:9".parse().unwrap();
    let anonymous = Client::new(&m, None);
    match anonymous
        .one(
            false,
            &Request::Subscribe {
                wire_version: 2,
                inbound,
            },
        )
        .await
    {
        Response::Error { code, .. } => assert_eq!(code, ErrorCode::Unauthenticated),
        other => panic!("{other:?}"),
    }
    let client = Client::new(&m, Some("spiffe://phoenix.local/ns/default/sa/client"));
    match client
        .one(
            true,
            &Request::Subscribe {
                wire_version: 99,
                inbound,
            },
        )
        .await
    {
        Response::Error { code, message } => {
            assert_eq!(code, ErrorCode::UnsupportedVersion);
            assert!(message.contains("upgrade"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let stranger = Client::new(&m, Some("spiffe://phoenix.local/ns/default/sa/stranger"));
    match stranger
        .one(
            true,
            &Request::Subscribe {
                wire_version: 2,
                inbound,
            },
        )
        .await
    {
        Response::Error { code, .. } => assert_eq!(code, ErrorCode::UnknownWorkload),
        other => panic!("{other:?}"),
    }
}

/// `authPolicy: pq-only` is not additive: a proxy of a wire version that
/// cannot enforce it is refused config, with what to do; a current one is
/// served the policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_cannot_enforce_pq_only_gets_no_config() {
    let mut m = Manual::new(
        &client_echo_mesh(
            echo_server(),
            "identityAlgorithm: ml-dsa-65\nauthPolicy: pq-only\n",
        ),
        &["client", "echo"],
    );
    m.start_control_plane("127.0.0.1:0");
    let inbound = "127.0.0.1:4143".parse().unwrap();
    let client = Client::new(&m, Some("spiffe://phoenix.local/ns/default/sa/client"));
    let subscribe = |wire_version| Request::Subscribe {
        wire_version,
        inbound,
    };
    match client.one(true, &subscribe(7)).await {
        Response::Error { code, message } => {
            assert_eq!(code, ErrorCode::UnsupportedVersion);
            assert!(
                message.contains("pq-only") && message.contains("upgrade the proxy"),
                "{message}"
            );
        }
        other => panic!("a wire version 7 proxy was served: {other:?}"),
    }
    match client
        .one(true, &subscribe(phoenix_api::compat::WIRE_VERSION))
        .await
    {
        Response::Snapshot(s) => {
            let mesh = serde_json::to_value(&s.resources["mesh"]).unwrap();
            assert_eq!(mesh["authPolicy"], "pq-only");
            assert_eq!(mesh["identityAlgorithm"], "ml-dsa-65");
        }
        other => panic!("{other:?}"),
    }
}

/// A client that has proven nothing cannot make the control plane hold
/// more than a small request: a 64 MiB length prefix is refused as soon as
/// it is read (not after the 10 s request timeout, and without allocating
/// for the body), and so is a whole request over the limit.
#[tokio::test]
async fn an_oversized_request_is_refused_from_its_length_alone() {
    let m = start();
    let anonymous = Client::new(&m, None);
    let started = std::time::Instant::now();
    let announced = u32::try_from(frame::MAX_RESPONSE_LEN).unwrap();
    match anonymous.one_raw(false, &announced.to_be_bytes()).await {
        Response::Error { code, message } => {
            assert_eq!(code, ErrorCode::BadRequest);
            assert!(
                message.contains("exceeds the 65536-byte limit"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused from the prefix, not by the request timeout"
    );
    // A whole request one byte over the limit (a huge token), framed by hand
    // since the encoder refuses it too.
    let body = serde_json::to_vec(&serde_json::json!({
        "type": "issueCertificate", "csrPem": "", "token": "",
    }))
    .unwrap();
    let pad = frame::MAX_REQUEST_LEN + 1 - body.len();
    let token = "t".repeat(pad);
    let body = serde_json::to_vec(&serde_json::json!({
        "type": "issueCertificate", "csrPem": "", "token": token,
    }))
    .unwrap();
    assert_eq!(body.len(), frame::MAX_REQUEST_LEN + 1);
    let mut bytes = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    bytes.extend(&body);
    match anonymous.one_raw(false, &bytes).await {
        Response::Error { code, message } => {
            assert_eq!(code, ErrorCode::BadRequest);
            assert!(message.contains("limit"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // The control plane still serves: a request within the limit answers.
    match anonymous
        .one(
            false,
            &Request::IssueCertificate {
                token: "wrong".into(),
                csr_pem: csr_asking_for("spiffe://phoenix.local/ns/default/sa/client"),
            },
        )
        .await
    {
        Response::Error { code, .. } => assert_eq!(code, ErrorCode::InvalidToken),
        other => panic!("{other:?}"),
    }
}

/// Every served wire version subscribes and reads what it is sent with its
/// own frozen types (strict up to version 4, as those proxies are): a first
/// snapshot, then deltas (full snapshots for version 1); versions before 3
/// get mesh settings without the trust bundle.
#[tokio::test]
async fn every_served_wire_version_reads_its_stream() {
    use phoenix_api::compat::{MIN_WIRE_VERSION, WIRE_VERSION, frozen};
    let m = start();
    let client = Client::new(&m, Some("spiffe://phoenix.local/ns/default/sa/client"));
    let inbound = "127.0.0.1:9".parse().unwrap();
    let mut streams = Vec::new();
    for wire_version in MIN_WIRE_VERSION..=WIRE_VERSION {
        let (conn, mut recv) = client
            .stream(
                true,
                &encode(&Request::Subscribe {
                    wire_version,
                    inbound,
                }),
            )
            .await;
        let first = frozen::read(wire_version, &next_body(&mut recv).await)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            first["type"], "snapshot",
            "version {wire_version} starts with a snapshot"
        );
        let bundle = &first["resources"]["mesh"]["trustBundlePem"];
        if wire_version < 3 {
            assert!(bundle.is_null(), "version {wire_version}: {first}");
        } else {
            assert!(
                bundle
                    .as_str()
                    .is_some_and(|pem| pem.contains("BEGIN CERTIFICATE"))
            );
        }
        let version = first["version"].as_u64().unwrap();
        streams.push((wire_version, conn, recv, version));
    }
    // Every subscription came from the `client` workload; each replaced the
    // registration before it, which is itself a change some may see. Read
    // until each sees one change of our own.
    let change = client_echo_mesh(echo_server(), "peerIdleTimeout: 90s\n");
    std::fs::write(&m.mesh_path, change).unwrap();
    for (wire_version, _conn, mut recv, mut held) in streams {
        loop {
            let message = frozen::read(wire_version, &next_body(&mut recv).await)
                .unwrap_or_else(|e| panic!("{e}"));
            let resources = match message["type"].as_str() {
                Some("delta") if wire_version >= 2 => {
                    assert_eq!(
                        message["fromVersion"].as_u64(),
                        Some(held),
                        "deltas chain without gaps"
                    );
                    &message["upserts"]
                }
                Some("snapshot") if wire_version == 1 => &message["resources"],
                _ => panic!("version {wire_version} got {message}"),
            };
            held = message["version"].as_u64().unwrap();
            if resources["mesh"]["peerIdleTimeoutMs"] == 90_000 {
                break;
            }
        }
    }
}

/// The control plane classifies and counts a failed handshake by reason,
/// as the proxies do: a client certificate from another CA is `unknown_ca`.
#[tokio::test]
async fn a_failed_handshake_is_counted_by_reason() {
    let m = start();
    let client = Client::new(&m, None);
    // A certificate for a mesh identity, signed by a root the mesh never had.
    let other = Ca::generate("phoenix.local").unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let pem = other
        .issue_for_key(
            &key,
            &"spiffe://phoenix.local/ns/default/sa/client"
                .parse()
                .unwrap(),
            Duration::from_secs(600),
        )
        .unwrap();
    let provider = phoenix_tls::provider::provider(Default::default(), &[]);
    client
        .tls
        .credentials()
        .store(Credentials::parse(&pem, &key.serialize_pem(), &provider).unwrap());
    let (config, _lease) = client
        .tls
        .client(
            &TlsPolicy::default(),
            client.cp_id.clone(),
            &[ALPN_CONTROL],
            true,
            TransportSettings::default().client_transport(),
        )
        .unwrap();
    let refused = async {
        let conn = client
            .endpoint
            .connect_with(config, client.cp, "cp")?
            .await?;
        // TLS 1.3: the server's verdict on our certificate may arrive
        // after our side of the handshake completed.
        conn.open_bi().await?;
        anyhow::Ok(conn.closed().await)
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), refused).await;
    let admin: std::net::SocketAddr = m.cp_bound["admin"].as_str().unwrap().parse().unwrap();
    harness::eventually(Duration::from_secs(10), "the refusal is counted", || {
        let text = harness::get(admin, "/metrics").1;
        let n = harness::metric_or_absent(
            &text,
            "tls_handshake_failures_total",
            &[("side", "server"), ("reason", "unknown_ca")],
        );
        (n == 1.0).then_some(())
    });
}
