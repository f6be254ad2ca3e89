//! gRPC's `grpc-timeout` header, as a client may send anything: parsing
//! never panics, a parsed timeout is positive and bounded, and writing it
//! back reads as no less than it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phoenix_api::grpc_timeout::{MAX_GRPC_TIMEOUT, format, parse};

fuzz_target!(|input: &[u8]| {
    if let Some(d) = parse(input) {
        assert!(!d.is_zero() && d <= MAX_GRPC_TIMEOUT);
        let text = format(d).expect("a parsed timeout can be written");
        let back = parse(text.as_bytes()).expect("what we write parses");
        assert!(back >= d);
    }
});
