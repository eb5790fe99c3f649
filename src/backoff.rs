//! Retry backoff: capped exponential envelope (from `backon`) with full jitter. Used by the
//! channel's reconnect loop and by the Docker event watcher's re-subscription.
//!
//! `backon` gives the envelope `base, 2*base, 4*base, ... cap`; each actual delay is uniform in
//! `[0, envelope]` ("full jitter": many agents that lost the same backend do not return in
//! lockstep). [`Backoff::reset`] starts over; the caller resets only after a healthy link.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

pub struct Backoff {
    builder: ExponentialBuilder,
    envelope: ExponentialBackoff,
    cap: Duration,
    rng: fastrand::Rng,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Self::with_rng(base, cap, fastrand::Rng::new())
    }

    /// A backoff with a fixed random seed (tests).
    pub fn with_rng(base: Duration, cap: Duration, rng: fastrand::Rng) -> Backoff {
        let builder = ExponentialBuilder::default()
            .with_min_delay(base)
            .with_max_delay(cap)
            .with_factor(2.0)
            .without_max_times();
        Backoff {
            envelope: builder.build(),
            builder,
            cap,
            rng,
        }
    }

    /// The next envelope value (the upper bound of the next delay).
    fn next_envelope(&mut self) -> Duration {
        self.envelope.next().unwrap_or(self.cap).min(self.cap)
    }

    /// The next delay before dialling again.
    pub fn next_delay(&mut self) -> Duration {
        self.next_envelope().mul_f64(self.rng.f64())
    }

    pub fn reset(&mut self) {
        self.envelope = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_doubles_then_caps_and_reset_starts_over() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let env: Vec<u128> = (0..7).map(|_| b.next_envelope().as_millis()).collect();
        assert_eq!(env, [100, 200, 400, 800, 1000, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_envelope().as_millis(), 100);
    }

    #[test]
    fn delays_are_full_jitter_within_the_envelope() {
        let mut b = Backoff::with_rng(
            Duration::from_millis(100),
            Duration::from_secs(30),
            fastrand::Rng::with_seed(7),
        );
        let mut envelope = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let delays: Vec<Duration> = (0..40).map(|_| b.next_delay()).collect();
        for d in &delays {
            assert!(*d <= envelope.next_envelope());
        }
        // Full jitter spreads the delays: some well below half the envelope.
        assert!(delays[10..].iter().any(|d| *d < Duration::from_secs(15)));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(30)));
    }
}
