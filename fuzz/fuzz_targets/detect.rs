//! Protocol detection over any bytes, read in two pieces as a socket may
//! deliver them: it never panics, a verdict on the first piece stands once
//! the second arrives, and nothing past the bound is still undecided.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phoenix_api::detect::{Detection, MAX_DETECT_LEN, detect};

fuzz_target!(|input: &[u8]| {
    let Some((&split, bytes)) = input.split_first() else {
        return;
    };
    let cut = usize::from(split).min(bytes.len());
    let first = detect(&bytes[..cut]);
    let whole = detect(bytes);
    if let Detection::Done(verdict) = first {
        assert_eq!(whole, Detection::Done(verdict), "a verdict changed with more bytes");
    }
    if bytes.len() >= MAX_DETECT_LEN {
        assert!(matches!(whole, Detection::Done(_)), "undecided past the bound");
    }
});
