//! Control frames split anywhere, in both directions: the decoder never
//! panics, never holds more than the frame in progress, never hands out a
//! body over its direction's limit, and every body it hands out decodes
//! (or is refused) as a message without panicking, and shaping it for
//! every older wire version does not panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phoenix_api::compat::{Compat, MIN_WIRE_VERSION, WIRE_VERSION};
use phoenix_api::control::{Request, Response};
use phoenix_api::frame::{Direction, FrameDecoder, decode_body};

fuzz_target!(|input: &[u8]| {
    // The first byte picks the direction and how the bytes are split.
    let Some((&how, bytes)) = input.split_first() else {
        return;
    };
    let direction = if how & 1 == 0 {
        Direction::Request
    } else {
        Direction::Response
    };
    let piece = usize::from(how >> 1).max(1);
    let mut frames = FrameDecoder::new(direction);
    for mut chunk in bytes.chunks(piece) {
        while !chunk.is_empty() {
            let Ok(used) = frames.feed(chunk) else { return };
            chunk = &chunk[used..];
            assert!(frames.wanted() <= direction.limit());
            if let Some(body) = frames.take() {
                assert!(body.len() <= direction.limit());
                match direction {
                    Direction::Request => drop(decode_body::<Request>(&body)),
                    Direction::Response => {
                        drop(decode_body::<Response>(&body));
                        // Shaping for older versions walks any JSON.
                        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) {
                            for version in MIN_WIRE_VERSION..=WIRE_VERSION {
                                Compat::CURRENT.downgrade_response(&mut value.clone(), version);
                            }
                        }
                    }
                }
            } else {
                assert!(used > 0, "no progress without a complete frame");
            }
        }
    }
    let _ = frames.end();
});
