//! The UDP datagram prefix a proxy reads from every QUIC datagram a peer
//! sends: no input panics the decoder, and what decodes re-encodes to the
//! same flow id and payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phoenix_api::datagram::{FlowId, decode};

fuzz_target!(|bytes: &[u8]| {
    if let Ok((id, payload)) = decode(bytes) {
        let mut out = Vec::new();
        FlowId::new(id.get()).expect("a decoded id fits a varint").encode(&mut out);
        // The encoder writes the shortest form; a peer may send a longer one.
        assert!(out.len() <= bytes.len() - payload.len());
        out.extend_from_slice(payload);
        assert_eq!(decode(&out), Ok((id, payload)));
    }
});
