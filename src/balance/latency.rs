//! [`ResponseTime`]: an instance's response time as the balancer sees it, an exponentially
//! weighted moving average over about a second of calls and at least the last few tens of
//! them. It fades while nobody calls, too, so that an avoided instance is tried again now and
//! then, and back in favour once it answers quickly.
//!
//! Not a peak EWMA (Finagle's and tower's, where any slower response replaces the estimate at
//! once): there, one slow response in an instance's ordinary tail holds the estimate near its
//! worst for a second, long enough for the balancer to shun a healthy instance, and on a busy
//! machine that overrode SRV weights. A steadily slow instance is still found within a few
//! tens of its responses.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How fast the estimate forgets: the time constant of the exponential decay.
const DECAY: Duration = Duration::from_secs(1);
/// The estimate of an instance not measured yet.
const UNMEASURED: Duration = Duration::from_millis(1);
/// The least share of the way to a response time that one response moves the estimate, however
/// soon after the last: a first measurement that was not typical (a new connection's first
/// call) is forgotten within some tens of calls, and a steadily slow instance found as fast.
const LEAST_STEP: f64 = 0.05;

/// Nanoseconds since the first use: a clock that fits an atomic.
pub(crate) fn now_nanos() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// An exponentially weighted moving average of response times. Updated without locks; two
/// updates racing may lose one sample, which costs nothing that matters.
#[derive(Debug)]
pub(crate) struct ResponseTime {
    /// The estimate in nanoseconds, as `f64` bits; 0: unmeasured.
    estimate: AtomicU64,
    /// When it was last updated, by [`now_nanos`].
    updated: AtomicU64,
}

impl Default for ResponseTime {
    fn default() -> Self {
        Self {
            estimate: AtomicU64::new(0),
            updated: AtomicU64::new(now_nanos()),
        }
    }
}

impl ResponseTime {
    /// The estimate now, in nanoseconds.
    #[cfg(test)]
    fn nanos(&self) -> f64 {
        self.nanos_at(now_nanos())
    }

    /// The estimate at `now` (by [`now_nanos`]), in nanoseconds.
    pub(crate) fn nanos_at(&self, now: u64) -> f64 {
        match f64::from_bits(self.estimate.load(Ordering::Relaxed)) {
            0.0 => UNMEASURED.as_nanos() as f64,
            estimate => {
                let since = now.saturating_sub(self.updated.load(Ordering::Relaxed));
                estimate * decay(since)
            }
        }
    }

    /// Takes in one response time: the first sets the estimate, the next move it toward
    /// theirs in proportion to the time since the last update, and by [`LEAST_STEP`] at least.
    pub(crate) fn observe(&self, took: Duration) {
        self.observe_at(took, now_nanos());
    }

    fn observe_at(&self, took: Duration, now: u64) {
        let sample = took.as_nanos() as f64;
        let since = now.saturating_sub(self.updated.swap(now, Ordering::Relaxed));
        let current = f64::from_bits(self.estimate.load(Ordering::Relaxed));
        let next = if current == 0.0 {
            sample
        } else {
            let keep = decay(since).min(1.0 - LEAST_STEP);
            current * keep + sample * (1.0 - keep)
        };
        self.estimate.store(next.to_bits(), Ordering::Relaxed);
    }
}

/// How much of an estimate is left after `nanos`.
fn decay(nanos: u64) -> f64 {
    (-(nanos as f64) / DECAY.as_nanos() as f64).exp()
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn the_first_response_sets_the_estimate_and_later_ones_move_it() {
        let ewma = ResponseTime::default();
        assert_eq!(ewma.nanos(), UNMEASURED.as_nanos() as f64);
        let at = ewma.updated.load(Ordering::Relaxed);
        ewma.observe_at(Duration::from_micros(100), at);
        assert_eq!(ewma.nanos_at(at), 100_000.0);
        // Right after, a response 200 times slower moves it by the least step: 5% of the way.
        ewma.observe_at(Duration::from_millis(20), at + 1_000);
        let estimate = ewma.nanos_at(at + 1_000);
        assert!((1_000_000.0..1_200_000.0).contains(&estimate), "{estimate}");
        // A steadily slow instance: 40 more such responses bring it near their time.
        for i in 2..42 {
            ewma.observe_at(Duration::from_millis(20), at + i * 1_000);
        }
        assert!(ewma.nanos_at(at + 42_000) > 17_000_000.0);
        // Three decay times later, one fast response brings it down to about 5%.
        let later = at + 42_000 + 3 * DECAY.as_nanos() as u64;
        ewma.observe_at(Duration::from_micros(100), later);
        assert!(ewma.nanos_at(later) < 1_500_000.0);
    }

    #[test]
    fn the_odd_slow_response_is_averaged_not_taken() {
        let ewma = ResponseTime::default();
        let at = ewma.updated.load(Ordering::Relaxed);
        ewma.observe_at(Duration::from_micros(700), at);
        // 50 µs later, a response ten times slower: a step toward it, not a jump.
        ewma.observe_at(Duration::from_millis(7), at + 50_000);
        let estimate = ewma.nanos_at(at + 50_000);
        assert!((1_000_000.0..1_100_000.0).contains(&estimate), "{estimate}");
    }

    #[test]
    fn an_untypical_first_response_is_soon_forgotten() {
        let ewma = ResponseTime::default();
        let at = ewma.updated.load(Ordering::Relaxed);
        ewma.observe_at(Duration::from_millis(5), at);
        // 100 responses of 200 µs, 100 µs apart: 10 ms, far less than the decay time.
        for i in 1..=100 {
            ewma.observe_at(Duration::from_micros(200), at + i * 100_000);
        }
        let estimate = ewma.nanos_at(at + 10_000_000);
        assert!(estimate < 300_000.0, "{estimate}");
    }

    #[test]
    fn an_idle_estimate_fades_so_the_instance_is_tried_again() {
        let ewma = ResponseTime::default();
        let at = ewma.updated.load(Ordering::Relaxed);
        ewma.observe_at(Duration::from_millis(20), at);
        let later = at + 5 * DECAY.as_nanos() as u64;
        assert!(ewma.nanos_at(later) < 200_000.0, "{}", ewma.nanos_at(later));
    }
}
