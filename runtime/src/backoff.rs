//! Retry delays with jitter.
//!
//! Every proxy of a mesh sees the same failures at the same time (a control
//! plane restarting, an endpoint going away): without jitter they would all
//! retry in lockstep, and a recovering control plane or pod would take the
//! whole mesh's retries at once. Each delay is drawn from the upper half of
//! its exponential step ("equal jitter"), so it is never shorter than half
//! the step and the steps still grow.

use std::time::Duration;

/// `step` scaled by a random factor in [0.5, 1.0].
pub fn jitter(step: Duration) -> Duration {
    step.mul_f64(rand::random_range(0.5..=1.0))
}

/// Exponential backoff with jitter: steps from `first` doubling to `max`.
#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Starts at `first`, doubling up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            step: first,
        }
    }

    /// The next delay (jittered), and one step further.
    pub fn next_delay(&mut self) -> Duration {
        let delay = jitter(self.step);
        self.step = (self.step * 2).min(self.max);
        delay
    }

    /// Back to the first step (after a success).
    pub fn reset(&mut self) {
        self.step = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_within_their_step_and_are_not_in_lockstep() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(5000));
        for step in [100, 200, 400, 800, 1600, 3200, 5000, 5000] {
            let d = b.next_delay();
            assert!(
                (ms(step / 2)..=ms(step)).contains(&d),
                "{d:?} outside [{}, {step}] ms",
                step / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= ms(100));
        // A thousand proxies starting together do not retry together.
        let first: std::collections::BTreeSet<Duration> = (0..1000)
            .map(|_| Backoff::new(ms(100), ms(5000)).next_delay())
            .collect();
        assert!(first.len() > 900, "{} distinct delays of 1000", first.len());
    }
}
