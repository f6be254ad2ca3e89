//! Golden bytes and property tests for the UDP datagram prefix
//! (`phoenix_api::datagram`): a flow id as a QUIC varint, then the payload.
//!
//! The varint bytes are RFC 9000's own examples (appendix A.1), so the
//! codec agrees with every QUIC implementation's, and a golden file pins a
//! whole datagram per prefix length. Refresh with `UPDATE_GOLDEN=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

use std::path::PathBuf;

use phoenix_api::datagram::{DatagramError, FlowId, MAX_FLOW_ID, decode};
use proptest::prelude::*;

fn prefix(id: u64) -> Vec<u8> {
    let mut out = Vec::new();
    FlowId::new(id).unwrap().encode(&mut out);
    out
}

#[test]
fn the_prefix_is_rfc_9000s_varint() {
    // RFC 9000, appendix A.1: each example and its value. (The RFC's
    // two-byte 37 example, 0x4025, is a non-minimal encoding: it decodes,
    // and the encoder writes 37 in one byte.)
    let examples: [(&[u8], u64); 5] = [
        (
            &[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c],
            151_288_809_941_952_652,
        ),
        (&[0x9d, 0x7f, 0x3e, 0x7d], 494_878_333),
        (&[0x7b, 0xbd], 15_293),
        (&[0x25], 37),
        (&[0x40, 0x25], 37),
    ];
    for (bytes, value) in examples {
        let (id, payload) = decode(bytes).unwrap();
        assert_eq!((id.get(), payload), (value, &[][..]), "{bytes:02x?}");
    }
    for (bytes, value) in &examples[..4] {
        assert_eq!(prefix(*value), *bytes);
    }
}

#[test]
fn golden_datagrams() {
    let mut out = String::new();
    for id in [
        0,
        63,
        64,
        16_383,
        16_384,
        (1 << 30) - 1,
        1 << 30,
        MAX_FLOW_ID,
    ] {
        let mut datagram = prefix(id);
        datagram.extend_from_slice(b"dig");
        let hex: Vec<String> = datagram.iter().map(|b| format!("{b:02x}")).collect();
        out.push_str(&format!("{id}: {}\n", hex.join(" ")));
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/udp_datagrams.txt");
    phoenix_testkit::golden::check(&path, &out);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_flow_and_payload_round_trips(
        id in prop_oneof![0u64..64, 64u64..16_384, 16_384u64..(1 << 30), (1u64 << 30)..=MAX_FLOW_ID],
        payload in proptest::collection::vec(any::<u8>(), 0..1500),
    ) {
        let mut datagram = prefix(id);
        prop_assert_eq!(datagram.len(), FlowId::new(id).unwrap().encoded_len());
        datagram.extend_from_slice(&payload);
        let (decoded, rest) = decode(&datagram).unwrap();
        prop_assert_eq!(decoded.get(), id);
        prop_assert_eq!(rest, &payload[..]);
    }

    #[test]
    fn the_shortest_prefix_is_written(id in 0u64..=MAX_FLOW_ID) {
        let len = prefix(id).len();
        let fits = |bytes: u32| id < 1u64 << (8 * bytes - 2);
        prop_assert!(fits(len as u32));
        if len > 1 {
            prop_assert!(!fits(len as u32 / 2));
        }
    }

    #[test]
    fn arbitrary_bytes_decode_or_say_why(bytes in proptest::collection::vec(any::<u8>(), 0..20)) {
        match decode(&bytes) {
            Ok((id, payload)) => {
                prop_assert!(id.get() <= MAX_FLOW_ID);
                prop_assert_eq!(payload.len() + id_len(bytes[0]), bytes.len());
            }
            Err(DatagramError::Empty) => prop_assert!(bytes.is_empty()),
            Err(DatagramError::Truncated { len, needed }) => {
                prop_assert_eq!(len, bytes.len());
                prop_assert!(needed > len);
            }
        }
    }
}

fn id_len(first: u8) -> usize {
    1 << (first >> 6)
}
