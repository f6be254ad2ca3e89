//! Failure accrual for HTTP endpoints: one that answers with failures in
//! a row (5xx, gRPC UNAVAILABLE, a broken response) is set aside with a
//! backoff, then probed back in (Linkerd's consecutive-failures policy).
//!
//! Connect failures are set aside by [`Failures`](super::Failures) on their
//! own; this is for endpoints that accept connections and then fail the
//! requests, which a connect check never sees. After its backoff an
//! endpoint takes requests again, and the first failure sets it aside at
//! once for twice as long; a success forgets it all.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::by_endpoint::ByEndpoint;

/// Failures in a row that set an endpoint aside (Linkerd's default).
pub const CONSECUTIVE_FAILURES: u32 = 7;
/// First backoff.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Clone, Copy)]
struct State {
    in_a_row: u32,
    /// Set aside until then; kept after it passes (the endpoint is on
    /// probation until its next success).
    until: Option<Instant>,
    backoff: Duration,
}

/// Per-endpoint response failures.
#[derive(Debug, Default)]
pub struct Accrual {
    by_address: ByEndpoint<State>,
}

impl Accrual {
    /// Whether `addr` is set aside at `now`.
    pub fn ejected(&self, addr: SocketAddr, now: Instant) -> bool {
        self.by_address.with(|map| {
            map.get(&addr)
                .and_then(|s| s.until)
                .is_some_and(|until| until > now)
        })
    }

    /// A response from `addr` ended at `now`, a failure or not. `true`
    /// when this one set the endpoint aside.
    pub fn record(&self, addr: SocketAddr, failed: bool, now: Instant) -> bool {
        self.by_address.with(|map| {
            if !failed {
                map.remove(&addr);
                return false;
            }
            let state = map.entry(addr).or_default();
            state.in_a_row += 1;
            let probation = state.until.is_some_and(|until| until <= now);
            if state.in_a_row < CONSECUTIVE_FAILURES && !probation {
                return false;
            }
            if state.until.is_some_and(|until| until > now) {
                // Already out: requests in flight when it was set aside.
                return false;
            }
            state.backoff = if probation {
                (state.backoff * 2).min(MAX_BACKOFF)
            } else {
                FIRST_BACKOFF
            };
            state.until = Some(now + phoenix_runtime::backoff::jitter(state.backoff));
            state.in_a_row = 0;
            true
        })
    }

    /// Forgets endpoints `keep` rejects.
    pub fn retain(&self, keep: impl Fn(SocketAddr) -> bool) {
        self.by_address.retain(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_a_row_set_aside_and_a_failed_probe_doubles() {
        let a: SocketAddr = "10.0.0.1:4143".parse().unwrap();
        let acc = Accrual::default();
        let t = Instant::now();
        for _ in 0..CONSECUTIVE_FAILURES - 1 {
            assert!(!acc.record(a, true, t));
        }
        // A success in between starts the count again.
        acc.record(a, false, t);
        for _ in 0..CONSECUTIVE_FAILURES - 1 {
            assert!(!acc.record(a, true, t));
        }
        assert!(!acc.ejected(a, t));
        assert!(acc.record(a, true, t), "the seventh in a row");
        assert!(acc.ejected(a, t + Duration::from_millis(400)));
        // Back after its backoff (0.5–1 s); one failure sets it aside again,
        // for longer (1–2 s).
        let back = t + Duration::from_millis(1001);
        assert!(!acc.ejected(a, back));
        assert!(acc.record(a, true, back));
        assert!(acc.ejected(a, back + Duration::from_millis(900)));
        assert!(!acc.ejected(a, back + Duration::from_millis(2001)));
        // A success forgets it all.
        acc.record(a, false, back + Duration::from_millis(2001));
        assert!(!acc.record(a, true, back + Duration::from_millis(2002)));
    }
}
