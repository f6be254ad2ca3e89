//! Endpoint choice: power of two choices over a peak-EWMA latency estimate
//! weighted by outstanding streams, with failing endpoints set aside for a
//! while, and failover to the next choice ([`connect`], made per
//! connection by the tunnel and per request by HTTP).
//!
//! Two endpoints are drawn at random and the cheaper wins, the cost being
//! (open streams + 1) × the endpoint's latency estimate ([`latency`];
//! Linkerd's default): nearly as good as least-loaded without every proxy
//! stampeding the same "least loaded" peer, and a slow endpoint gets fewer
//! requests. The tunnel takes no latency samples, so there the cost is the
//! open streams alone. HTTP endpoints whose responses keep failing are set
//! aside too ([`accrual`]). An endpoint
//! whose handshake fails is skipped for a backoff that doubles with each
//! failure (1 s up to 30 s) and resets on success, so one dead pod costs
//! at most one connect timeout per backoff period, not one per request.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::{EndpointConfig, MeshConfig};
use crate::pool::{PeerConn, Pool};

pub mod accrual;
pub mod by_endpoint;
pub mod latency;

/// The most endpoints one connection (or request) tries before it fails:
/// when a whole zone is gone the client hears so after a few connect
/// timeouts, not one per endpoint.
pub const MAX_ATTEMPTS: usize = 3;

/// Connects to one of `endpoints` through `pool`: power of two choices among
/// those not set aside; one that fails is set aside and the next choice
/// made, up to [`MAX_ATTEMPTS`]. If every endpoint is set aside they are
/// tried anyway rather than failing without trying. `None` when every
/// attempt failed (each is logged in the caller's span).
pub async fn connect<'e>(
    pool: &Pool,
    endpoints: &'e [EndpointConfig],
    mesh: &MeshConfig,
    connect_timeout: Duration,
) -> Option<(PeerConn, &'e EndpointConfig)> {
    let mut tried = vec![false; endpoints.len()];
    for _ in 0..MAX_ATTEMPTS.min(endpoints.len()) {
        let now = Instant::now();
        let untried: Vec<usize> = (0..endpoints.len()).filter(|i| !tried[*i]).collect();
        let healthy: Vec<usize> = untried
            .iter()
            .copied()
            .filter(|i| {
                let addr = endpoints[*i].address;
                !pool.failures().ejected(addr, now) && !pool.accrual().ejected(addr, now)
            })
            .collect();
        let candidates = if healthy.is_empty() {
            &untried
        } else {
            &healthy
        };
        let weigh = |i: usize| {
            let endpoint = &endpoints[i];
            Weight {
                load: pool.load(endpoint.address, &endpoint.identity),
                latency: pool.latency().estimate(endpoint.address, now),
            }
        };
        let i = pick(candidates, weigh, rand::random(), rand::random())?;
        tried[i] = true;
        let endpoint = &endpoints[i];
        match pool
            .get(endpoint.address, &endpoint.identity, mesh, connect_timeout)
            .await
        {
            Ok(peer) => {
                pool.failures().succeeded(endpoint.address);
                return Some((peer, endpoint));
            }
            Err(error) => {
                if error.own_attempt() {
                    pool.failures().failed(endpoint.address, Instant::now());
                }
                tracing::warn!(peer = %endpoint.address, %error, "peer unavailable; trying another");
            }
        }
    }
    None
}

/// First backoff after a failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the balancer compares of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weight {
    /// Streams (requests) open to it, and callers waiting for it.
    pub load: usize,
    /// Its latency estimate, seconds ([`latency::Latency`]).
    pub latency: f64,
}

/// Costs closer than this factor are a tie, broken by load: endpoints
/// whose latencies differ by noise (1.2 ms and 1.6 ms) share sequential
/// traffic evenly instead of the faster one taking two thirds of it,
/// while a clearly slower one (200 ms against 1 ms) is still avoided.
pub const TIE: f64 = 3.0;

impl Weight {
    /// Linkerd's cost: (load + 1) × latency.
    pub fn cost(&self) -> f64 {
        (self.load as f64 + 1.0) * self.latency
    }

    /// Whether `self` wins against `other`.
    fn beats(&self, other: &Weight) -> bool {
        let (mine, theirs) = (self.cost(), other.cost());
        if mine * TIE < theirs {
            true
        } else if theirs * TIE < mine {
            false
        } else {
            self.load < other.load
        }
    }
}

/// Picks among `candidates` (indices) by power of two choices on their
/// [`Weight`]; `r1` and `r2` are random numbers.
pub fn pick(
    candidates: &[usize],
    weigh: impl Fn(usize) -> Weight,
    r1: u64,
    r2: u64,
) -> Option<usize> {
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        n => {
            let a = candidates[(r1 % n as u64) as usize];
            // A second draw among the others, so the two always differ.
            let mut j = (r2 % (n as u64 - 1)) as usize;
            if candidates[j] == a {
                j = n - 1;
            }
            let b = candidates[j];
            Some(if weigh(b).beats(&weigh(a)) { b } else { a })
        }
    }
}

/// Endpoints that failed recently, and until when they are set aside.
#[derive(Debug, Default)]
pub struct Failures {
    by_address: by_endpoint::ByEndpoint<(Instant, Duration)>,
}

impl Failures {
    /// Whether `addr` is set aside at `now`.
    pub fn ejected(&self, addr: SocketAddr, now: Instant) -> bool {
        self.by_address
            .with(|map| map.get(&addr).is_some_and(|(until, _)| *until > now))
    }

    /// `addr` failed at `now`: set it aside, for longer each time in a row.
    pub fn failed(&self, addr: SocketAddr, now: Instant) {
        self.by_address.with(|map| {
            // Forget endpoints that have not failed for a while (also bounds the
            // map as pods come and go).
            map.retain(|_, (until, _)| *until + MAX_BACKOFF > now);
            let backoff = map
                .get(&addr)
                .map_or(FIRST_BACKOFF, |(_, last)| (*last * 2).min(MAX_BACKOFF));
            // Jittered, so the proxies that saw the same pod fail do not all
            // come back to it at the same instant.
            map.insert(
                addr,
                (now + phoenix_runtime::backoff::jitter(backoff), backoff),
            );
        });
    }

    /// `addr` worked: forget its failures.
    pub fn succeeded(&self, addr: SocketAddr) {
        self.by_address.with(|map| map.remove(&addr));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_less_loaded_of_two_wins_and_two_draws_differ() {
        let load = |i: usize| Weight {
            load: [5, 1, 9][i],
            latency: 1e-6,
        };
        for r1 in 0..6 {
            for r2 in 0..6 {
                let chosen = pick(&[0, 1, 2], load, r1, r2).unwrap();
                // Whatever the draw, the most loaded endpoint never wins
                // against another one.
                assert_ne!(chosen, 2, "draw {r1},{r2}");
            }
        }
        assert_eq!(pick(&[2], load, 7, 7), Some(2));
        assert_eq!(pick(&[], load, 7, 7), None);
        // With two candidates both are always compared: exact balancing.
        assert_eq!(pick(&[0, 1], load, 0, 0), Some(1));
        assert_eq!(pick(&[0, 1], load, 1, 0), Some(1));
    }

    #[test]
    fn latency_counts_only_beyond_noise() {
        let w = |load, ms: f64| Weight {
            load,
            latency: ms / 1000.0,
        };
        let weights = [w(0, 1.2), w(0, 1.6), w(0, 200.0), w(3, 1.0)];
        let weigh = |i: usize| weights[i];
        // 1.2 ms and 1.6 ms tie: whichever was drawn first wins, so
        // sequential requests split evenly.
        assert_eq!(pick(&[0, 1], weigh, 0, 0), Some(0));
        assert_eq!(pick(&[0, 1], weigh, 1, 0), Some(1));
        // 200 ms loses to either, whatever the draw.
        for r1 in 0..2 {
            assert_ne!(pick(&[0, 2], weigh, r1, 0), Some(2));
            assert_ne!(pick(&[1, 2], weigh, r1, 0), Some(2));
        }
        // Within the tie, load decides: 4 × 1.0 ms against 1 × 1.6 ms is
        // beyond the factor, so the idle one wins.
        assert_eq!(pick(&[1, 3], weigh, 1, 0), Some(1));
    }

    #[test]
    fn failures_back_off_and_reset() {
        let f = Failures::default();
        let a: SocketAddr = "10.0.0.1:4143".parse().unwrap();
        let t = Instant::now();
        assert!(!f.ejected(a, t));
        // Set aside for 0.5–1 s (1 s, jittered)...
        f.failed(a, t);
        assert!(f.ejected(a, t + Duration::from_millis(400)));
        assert!(!f.ejected(a, t + Duration::from_millis(1001)));
        // ...then 1–2 s the second time in a row.
        f.failed(a, t);
        assert!(
            f.ejected(a, t + Duration::from_millis(900)),
            "longer the second time"
        );
        assert!(!f.ejected(a, t + Duration::from_millis(2001)));
        f.succeeded(a);
        assert!(!f.ejected(a, t));
    }
}
