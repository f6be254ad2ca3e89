//! The HTTP/1 head check run on `detect` ports before a connection takes
//! the HTTP path (`Upgrade` or CONNECT make it opaque), over any bytes read
//! in two pieces: it never panics, and a verdict on the first piece stands
//! once the second arrives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phoenix_api::detect::head_upgrades;

fuzz_target!(|input: &[u8]| {
    let Some((&split, bytes)) = input.split_first() else {
        return;
    };
    let cut = usize::from(split).min(bytes.len());
    let first = head_upgrades(&bytes[..cut]);
    let whole = head_upgrades(bytes);
    if let Some(verdict) = first {
        assert_eq!(whole, Some(verdict), "a verdict changed with more bytes");
    }
});
