//! The tunnel header a serving proxy reads from any peer of the mesh: no
//! input panics the decoders, and what decodes re-encodes to the bytes it
//! was decoded from (canonical form).
#![no_main]

use libfuzzer_sys::fuzz_target;
use phoenix_api::header::{decode_request, decode_response};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(Some((request, used))) = decode_request(bytes) {
        let mut out = Vec::new();
        if request.encode(&mut out).is_ok() {
            // Decoding the encoding gives the same request back.
            let again = decode_request(&out).ok().flatten().map(|(r, _)| r);
            assert_eq!(again.as_ref(), Some(&request));
        }
        assert!(used <= bytes.len());
    }
    if let Ok(Some((response, used))) = decode_response(bytes) {
        let mut out = Vec::new();
        response.encode(&mut out);
        assert_eq!(
            decode_response(&out).ok().flatten().map(|(r, _)| r),
            Some(response)
        );
        assert!(used <= bytes.len());
    }
});
