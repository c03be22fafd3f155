//! [`PeakEwma`]: an instance's response time as the balancer sees it, rising at once with a
//! slow response and decaying over about a second (as in Finagle's and tower's peak-EWMA
//! balancers), so that a slow instance is avoided as soon as it is slow. The estimate decays
//! while nobody calls, too, so that an avoided instance is tried again now and then, and back
//! in favour once it answers quickly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How fast the estimate forgets: the time constant of the exponential decay.
const DECAY: Duration = Duration::from_secs(1);
/// The estimate of an instance not measured yet.
const UNMEASURED: Duration = Duration::from_millis(1);

/// Nanoseconds since the first use: a clock that fits an atomic.
fn now_nanos() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A peak exponentially weighted moving average of response times. Updated without locks;
/// two updates racing may lose one sample, which costs nothing that matters.
#[derive(Debug)]
pub(crate) struct PeakEwma {
    /// The estimate in nanoseconds, as `f64` bits; 0: unmeasured.
    estimate: AtomicU64,
    /// When it was last updated, by [`now_nanos`].
    updated: AtomicU64,
}

impl Default for PeakEwma {
    fn default() -> Self {
        Self {
            estimate: AtomicU64::new(0),
            updated: AtomicU64::new(now_nanos()),
        }
    }
}

impl PeakEwma {
    /// The estimate now, in nanoseconds.
    pub(crate) fn nanos(&self) -> f64 {
        self.nanos_at(now_nanos())
    }

    fn nanos_at(&self, now: u64) -> f64 {
        match f64::from_bits(self.estimate.load(Ordering::Relaxed)) {
            0.0 => UNMEASURED.as_nanos() as f64,
            estimate => {
                let since = now.saturating_sub(self.updated.load(Ordering::Relaxed));
                estimate * decay(since)
            }
        }
    }

    /// Takes in one response time: a slower one than the estimate replaces it (the peak), a
    /// faster one pulls it down in proportion to the time since the last update.
    pub(crate) fn observe(&self, took: Duration) {
        self.observe_at(took, now_nanos());
    }

    fn observe_at(&self, took: Duration, now: u64) {
        let sample = took.as_nanos() as f64;
        let since = now.saturating_sub(self.updated.swap(now, Ordering::Relaxed));
        let current = f64::from_bits(self.estimate.load(Ordering::Relaxed));
        let next = if current == 0.0 || sample > current {
            sample
        } else {
            let keep = decay(since);
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
    fn a_slow_response_counts_at_once_and_fast_ones_wear_it_down() {
        let ewma = PeakEwma::default();
        assert_eq!(ewma.nanos(), UNMEASURED.as_nanos() as f64);
        let at = ewma.updated.load(Ordering::Relaxed);
        ewma.observe_at(Duration::from_micros(100), at);
        assert_eq!(ewma.nanos_at(at), 100_000.0);
        ewma.observe_at(Duration::from_millis(20), at);
        assert_eq!(ewma.nanos_at(at), 20_000_000.0, "the peak is taken at once");
        // Right after, a fast response barely moves it.
        ewma.observe_at(Duration::from_micros(100), at + 1_000);
        assert!(ewma.nanos_at(at + 1_000) > 19_000_000.0);
        // Three decay times later, a fast response brings it down to about 5%.
        let later = at + 1_000 + 3 * DECAY.as_nanos() as u64;
        ewma.observe_at(Duration::from_micros(100), later);
        assert!(ewma.nanos_at(later) < 1_500_000.0);
    }

    #[test]
    fn an_idle_estimate_fades_so_the_instance_is_tried_again() {
        let ewma = PeakEwma::default();
        let at = ewma.updated.load(Ordering::Relaxed);
        ewma.observe_at(Duration::from_millis(20), at);
        let later = at + 5 * DECAY.as_nanos() as u64;
        assert!(ewma.nanos_at(later) < 200_000.0, "{}", ewma.nanos_at(later));
    }
}
