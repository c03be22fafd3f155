//! [`Backoff`]: the pause before trying again, for everything in meshless that retries
//! (reconnecting an instance, resubscribing an observer, acknowledging, looking DNS up again).
//!
//! Exponential: each pause doubles the step, up to a longest one; with jitter (up to 20% more),
//! so that clients that failed together do not come back together. A success starts over.

use std::time::Duration;

/// Exponential backoff with jitter.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    step: Duration,
    jitter: bool,
}

impl Backoff {
    /// Pauses of `first`, then twice that, ... up to `max`, each with up to 20% jitter.
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max: max.max(first),
            step: first,
            jitter: true,
        }
    }

    /// The same, without jitter: for schedules whose exact times are the contract.
    pub(crate) fn exact(first: Duration, max: Duration) -> Self {
        Self {
            jitter: false,
            ..Self::new(first, max)
        }
    }

    /// The pause before the next attempt.
    pub(crate) fn next_pause(&mut self) -> Duration {
        let step = self.step;
        self.step = step.saturating_mul(2).min(self.max);
        if self.jitter {
            step + step.mul_f64(fastrand::f64() * 0.2)
        } else {
            step
        }
    }

    /// After a success: the next pause is the first again.
    pub(crate) fn reset(&mut self) {
        self.step = self.first;
    }
}

#[cfg(test)]
mod test {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_up_to_the_longest_and_starts_over_after_a_success() {
        let mut backoff = Backoff::exact(100 * MS, 350 * MS);
        let pauses: Vec<_> = (0..4).map(|_| backoff.next_pause()).collect();
        assert_eq!(pauses, [100 * MS, 200 * MS, 350 * MS, 350 * MS]);
        backoff.reset();
        assert_eq!(backoff.next_pause(), 100 * MS);
    }

    #[test]
    fn jitter_adds_at_most_a_fifth() {
        let mut backoff = Backoff::new(100 * MS, 100 * MS);
        for _ in 0..1000 {
            let pause = backoff.next_pause();
            assert!((100 * MS..=120 * MS).contains(&pause), "{pause:?}");
        }
    }
}
