//! Service names from mesh files, Kubernetes objects and tunnel headers:
//! parsing never panics, and a parsed name's text parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phoenix_api::ServiceName;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(name) = text.parse::<ServiceName>() {
        let again: ServiceName = name.as_str().parse().expect("a canonical name parses");
        assert_eq!(again, name);
        assert!(name.as_str().len() <= 253 + 6 + 4);
    }
});
