//! Peak-EWMA latency per endpoint: the balancer's estimate of how long a
//! request to each endpoint takes (Linkerd's and Finagle's default).
//!
//! A slower sample replaces the estimate at once (the peak), a faster one
//! is blended in with a weight that grows with the time since the last
//! sample, and the estimate decays toward zero while no sample comes, so
//! an endpoint that was slow is tried again after a while rather than
//! starved. An endpoint with no estimate yet costs almost nothing, so it
//! gets the next requests and with them its samples.
//!
//! Two choices differ from Linkerd's (10 s decay, every sample counted),
//! both so that a single slow response does not steer traffic for long:
//! - The decay is [`DECAY`], 1 s: a one-off peak (a pause, a cold cache)
//!   fades within a few seconds, while an endpoint slow on every request
//!   stays avoided, each of its samples restoring the peak. With 10 s a
//!   40 ms peak kept a 1.5 ms endpoint out of sequential gRPC traffic for
//!   half a minute.
//! - An endpoint's first sample is not counted: it carries the far proxy's
//!   first connection to its app (and the app's warm-up), not the
//!   endpoint's latency.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::by_endpoint::ByEndpoint;

/// How fast old samples stop mattering.
pub const DECAY: Duration = Duration::from_secs(1);

/// The estimate of an endpoint never sampled, in seconds: small, so that
/// the cost still grows with its load and ties break by load.
const UNKNOWN: f64 = 1e-6;

#[derive(Debug, Clone, Copy)]
struct Estimate {
    seconds: f64,
    at: Instant,
    /// No sample counted yet (the first is skipped).
    warming: bool,
}

impl Estimate {
    fn decayed(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.seconds * (-elapsed / DECAY.as_secs_f64()).exp()
    }
}

/// Latency estimates by endpoint address.
#[derive(Debug, Default)]
pub struct Latency {
    by_address: ByEndpoint<Estimate>,
}

impl Latency {
    /// The estimate for `addr` at `now`, in seconds.
    pub fn estimate(&self, addr: SocketAddr, now: Instant) -> f64 {
        self.by_address.with(|map| {
            map.get(&addr)
                .filter(|e| !e.warming)
                .map_or(UNKNOWN, |e| e.decayed(now).max(UNKNOWN))
        })
    }

    /// A request to `addr` took `took`, seen at `now`.
    pub fn observe(&self, addr: SocketAddr, took: Duration, now: Instant) {
        let sample = took.as_secs_f64();
        self.by_address.with(|map| {
            let seconds = match map.get(&addr) {
                None => {
                    map.insert(
                        addr,
                        Estimate {
                            seconds: 0.0,
                            at: now,
                            warming: true,
                        },
                    );
                    return;
                }
                Some(e) if e.warming => sample,
                Some(e) => {
                    let current = e.decayed(now);
                    if sample > current {
                        sample
                    } else {
                        let elapsed = now.saturating_duration_since(e.at).as_secs_f64();
                        let keep = (-elapsed / DECAY.as_secs_f64()).exp();
                        current * keep + sample * (1.0 - keep)
                    }
                }
            };
            map.insert(
                addr,
                Estimate {
                    seconds,
                    at: now,
                    warming: false,
                },
            );
        })
    }

    /// Forgets endpoints `keep` rejects (pods that went away).
    pub fn retain(&self, keep: impl Fn(SocketAddr) -> bool) {
        self.by_address.retain(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_peak_counts_at_once_and_fades() {
        let l = Latency::default();
        let a: SocketAddr = "10.0.0.1:4143".parse().unwrap();
        let t = Instant::now();
        assert_eq!(l.estimate(a, t), UNKNOWN, "unknown: almost free");
        l.observe(a, ms(40), t);
        assert_eq!(
            l.estimate(a, t),
            UNKNOWN,
            "the first (cold) sample is skipped"
        );
        l.observe(a, ms(2), t);
        assert!((l.estimate(a, t) - 0.002).abs() < 1e-9);
        // One slow response: the estimate jumps to it.
        l.observe(a, ms(50), t + ms(1));
        assert!((l.estimate(a, t + ms(1)) - 0.050).abs() < 1e-9);
        // Fast ones bring it down, faster the further apart they are.
        l.observe(a, ms(2), t + ms(2));
        let soon = l.estimate(a, t + ms(2));
        assert!(
            soon > 0.049,
            "one fast sample right after barely moves it: {soon}"
        );
        l.observe(a, ms(2), t + Duration::from_secs(3));
        let later = l.estimate(a, t + Duration::from_secs(3));
        assert!(
            later < 0.005,
            "a few seconds later the peak is gone: {later}"
        );
        // Idle, it decays toward nothing (the endpoint is tried again).
        let idle = l.estimate(a, t + Duration::from_secs(12));
        assert!(idle < 0.0001, "{idle}");
    }
}
