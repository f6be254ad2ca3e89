//! Human durations as written in config: `500ms`, `30s`, `5m`, `24h`, `1h30m`.

use std::time::Duration;

/// Why a string is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Empty, or a number without unit, or an unknown unit.
    #[error("not a duration: write a number and a unit (ms, s, m, h), e.g. `30s` or `1h30m`")]
    Invalid,
    /// Too large to represent.
    #[error("duration is too large")]
    Overflow,
}

/// Parses a duration such as `1h30m` or `250ms`.
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(DurationError::Invalid);
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError::Invalid);
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| DurationError::Overflow)?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or(DurationError::Overflow)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or(DurationError::Overflow)?),
            _ => return Err(DurationError::Invalid),
        };
        rest = &rest[unit_len..];
        total = total.checked_add(part).ok_or(DurationError::Overflow)?;
    }
    Ok(total)
}

/// Formats a duration the way [`parse`] reads it.
pub fn format(d: Duration) -> String {
    if d.subsec_millis() != 0 || d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_sums() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse(" 10s "), Ok(Duration::from_secs(10)));
        assert_eq!(format(Duration::from_secs(20)), "20s");
        assert_eq!(
            parse(&format(Duration::from_millis(1500))),
            Ok(Duration::from_millis(1500))
        );
    }

    #[test]
    fn refuses_nonsense() {
        for bad in [
            "",
            "10",
            "s",
            "10 parsecs",
            "-5s",
            "1.5s",
            "99999999999999999999s",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
