//! Golden bytes and property tests for the tunnel header codec.
//!
//! The golden files pin the wire format: a change that alters the bytes of an
//! existing frame breaks proxies of the previous release, so it must be a
//! deliberate, versioned change. Refresh with `UPDATE_GOLDEN=1 cargo test`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

use std::path::PathBuf;

use phoenix_api::header::{
    ConnectRequest, ConnectResponse, Status, decode_request, decode_response,
};
use proptest::prelude::*;

fn golden(name: &str, bytes: &[u8]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let hex: String = bytes
        .chunks(16)
        .map(|line| {
            line.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
                + "\n"
        })
        .collect();
    phoenix_testkit::golden::check(&path, &hex);
}

#[test]
fn golden_request_service() {
    let mut out = Vec::new();
    ConnectRequest {
        service: Some("db".parse().unwrap()),
        original_dst: None,
        connection_id: 0x0102_0304_0506_0708,
    }
    .encode(&mut out)
    .unwrap();
    golden("request_service.hex", &out);
    assert!(decode_request(&out).unwrap().is_some());
}

#[test]
fn golden_request_original_dst() {
    let mut out = Vec::new();
    ConnectRequest {
        service: Some("web.default".parse().unwrap()),
        original_dst: Some("10.96.0.10:8080".parse().unwrap()),
        connection_id: 7,
    }
    .encode(&mut out)
    .unwrap();
    golden("request_original_dst.hex", &out);
    assert!(decode_request(&out).unwrap().is_some());
}

/// The request a client proxy sends for a connection to a Kubernetes
/// Service's ClusterIP: the index names the upstream `<name>.<ns>:<port>`,
/// and the header carries host and port as two fields. (This shape was
/// unencodable once, and every ClusterIP connection was reset.)
#[test]
fn golden_request_kubernetes_service_port() {
    let mut out = Vec::new();
    ConnectRequest {
        service: Some(phoenix_api::ServiceName::kubernetes("web", "shop", 80).unwrap()),
        original_dst: None,
        connection_id: 9,
    }
    .encode(&mut out)
    .unwrap();
    golden("request_kubernetes_service.hex", &out);
    let (decoded, _) = decode_request(&out).unwrap().unwrap();
    assert_eq!(decoded.service.unwrap().to_string(), "web.shop:80");
}

#[test]
fn golden_responses() {
    let mut out = Vec::new();
    for status in [
        Status::Connected,
        Status::UpstreamRefused,
        Status::NoRoute,
        Status::Denied,
    ] {
        ConnectResponse { status }.encode(&mut out);
    }
    golden("responses.hex", &out);
}

/// Names of every shape: file mode's (`db`), Kubernetes' (`web.shop:80`),
/// and UDP ones (`dns.kube-system:53/udp`).
fn service_name() -> impl Strategy<Value = phoenix_api::ServiceName> {
    (
        "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?){0,3}",
        proptest::option::of(1u16..),
        any::<bool>(),
    )
        .prop_map(|(host, port, udp)| {
            let transport = if udp {
                phoenix_api::service::Transport::Udp
            } else {
                phoenix_api::service::Transport::Tcp
            };
            phoenix_api::ServiceName::new(&host, port)
                .unwrap()
                .with_transport(transport)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// No byte string makes the decoders panic, and a decoded frame never
    /// claims more bytes than it was given.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(Some((_, used))) = decode_request(&bytes) {
            prop_assert!(used <= bytes.len());
        }
        if let Ok(Some((_, used))) = decode_response(&bytes) {
            prop_assert!(used <= bytes.len());
        }
    }

    /// Frames with a valid prefix and random fields never panic either.
    #[test]
    fn random_field_blocks_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200), kind in 1u8..=2) {
        let mut bytes = vec![b'P', b'X', 1, kind];
        bytes.extend_from_slice(&(body.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&body);
        let _ = decode_request(&bytes);
        let _ = decode_response(&bytes);
    }

    /// Every valid request survives encode then decode, split anywhere.
    #[test]
    fn valid_requests_round_trip(
        service in proptest::option::of(service_name()),
        v4 in any::<[u8; 4]>(),
        port in any::<u16>(),
        with_dst in any::<bool>(),
        connection_id in any::<u64>(),
        split in any::<prop::sample::Index>(),
    ) {
        let original_dst = (with_dst || service.is_none())
            .then(|| std::net::SocketAddr::from((v4, port)));
        let req = ConnectRequest { service, original_dst, connection_id };
        let mut out = Vec::new();
        req.encode(&mut out).unwrap();
        let cut = split.index(out.len());
        prop_assert_eq!(decode_request(&out[..cut]).unwrap(), None);
        let (decoded, used) = decode_request(&out).unwrap().unwrap();
        prop_assert_eq!(decoded, req);
        prop_assert_eq!(used, out.len());
    }
}
