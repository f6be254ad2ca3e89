//! gRPC's `grpc-timeout` header: how long the client gives a call.
//!
//! The client's proxy enforces it (with the service's own timeout, the
//! first to pass wins), so a call past its deadline ends at the proxy with
//! DEADLINE_EXCEEDED instead of running on at the server. A value that does
//! not parse is ignored, as gRPC servers ignore it. Fuzzed
//! (`fuzz/fuzz_targets/grpc_timeout.rs`).

use std::time::Duration;

/// The longest `grpc-timeout` honoured: gRPC allows up to 99,999,999
/// hours; beyond a day is no deadline in practice.
pub const MAX_GRPC_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Reads a `grpc-timeout` value: 1 to 8 ASCII digits and a unit (`H`,
/// `M`, `S`, `m`, `u`, `n`), as the gRPC-over-HTTP/2 spec writes it.
/// `None` for anything else (the header is then ignored, as gRPC servers
/// do), or for zero.
pub fn parse(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let d = match unit {
        b'H' => Duration::from_secs(n.checked_mul(3600)?),
        b'M' => Duration::from_secs(n.checked_mul(60)?),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    };
    (!d.is_zero()).then_some(d.min(MAX_GRPC_TIMEOUT))
}

/// Writes `d` as gRPC writes it: the finest unit that fits in 8 digits.
/// `None` for zero or more than [`MAX_GRPC_TIMEOUT`].
pub fn format(d: Duration) -> Option<String> {
    if d.is_zero() || d > MAX_GRPC_TIMEOUT {
        return None;
    }
    let nanos = d.as_nanos();
    for (unit, per) in [
        ('n', 1u128),
        ('u', 1_000),
        ('m', 1_000_000),
        ('S', 1_000_000_000),
        ('M', 60_000_000_000),
        ('H', 3_600_000_000_000),
    ] {
        let n = nanos.div_ceil(per);
        if n <= 99_999_999 {
            return Some(format!("{n}{unit}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grpc_timeouts_parse_as_the_spec_writes_them() {
        assert_eq!(parse(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse(b"5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse(b"250u"), Some(Duration::from_micros(250)));
        assert_eq!(parse(b"99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(parse(b"99999999H"), Some(MAX_GRPC_TIMEOUT));
        for bad in [
            &b""[..],
            b"m",
            b"10",
            b"123456789m",
            b"-5S",
            b"5s",
            b"1.5S",
            b"0m",
            b" 5S",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    proptest! {
        /// Anything at all: no panic, and a value is positive and bounded.
        #[test]
        fn any_bytes_parse_to_nothing_or_a_bounded_timeout(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            if let Some(d) = parse(&bytes) {
                prop_assert!(!d.is_zero() && d <= MAX_GRPC_TIMEOUT);
            }
        }

        /// What gRPC writes reads back as at least the duration written
        /// (rounded up to the unit, never down: a deadline is not cut short).
        #[test]
        fn formatted_timeouts_read_back(nanos in 1u64..=MAX_GRPC_TIMEOUT.as_nanos() as u64) {
            let d = Duration::from_nanos(nanos);
            let text = format(d).unwrap();
            let back = parse(text.as_bytes()).unwrap();
            prop_assert!(back >= d, "{text}: {back:?} < {d:?}");
            prop_assert!(back - d < d / 1000 + Duration::from_nanos(1), "{text}");
        }

        /// Digits and a unit, as the spec writes them, always parse.
        #[test]
        fn spec_values_parse(n in 1u64..=99_999_999, unit in prop::sample::select(vec![b'H', b'M', b'S', b'm', b'u', b'n'])) {
            let mut text = n.to_string().into_bytes();
            text.push(unit);
            prop_assert!(parse(&text).is_some());
        }
    }
}
