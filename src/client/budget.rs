//! [`RetryBudget`]: how many retries the calls of the last 10 s allow (20% of them, plus 10
//! per second), as Finagle's budget, counted in per-second slots of atomics: every call
//! deposits, so no lock may be shared between calls here.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

/// Seconds a deposit or a withdrawal counts for.
const WINDOW_SECS: u64 = 10;
/// Retries allowed per second whatever the calls.
const RESERVE_PER_SEC: u64 = 10;
/// Retries allowed per call, in percent.
const PERCENT: u64 = 20;

/// Calls and retries of the last [`WINDOW_SECS`] seconds, one slot per second.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    started: Instant,
    deposits: Slots,
    withdrawals: Slots,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            deposits: Slots::default(),
            withdrawals: Slots::default(),
        }
    }
}

impl RetryBudget {
    fn second(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// A call was made.
    pub(crate) fn deposit(&self) {
        self.deposits.add(self.second());
    }

    /// Takes one retry from the budget; false when it is spent.
    pub(crate) fn withdraw(&self) -> bool {
        let now = self.second();
        let allowed = RESERVE_PER_SEC * WINDOW_SECS + self.deposits.sum(now) * PERCENT / 100;
        if self.withdrawals.sum(now) >= allowed {
            return false;
        }
        self.withdrawals.add(now);
        true
    }
}

/// Counts per second over the window: each slot packs the second it counts for (high 32
/// bits) and its count (low 32 bits).
#[derive(Debug, Default)]
struct Slots([AtomicU64; WINDOW_SECS as usize]);

impl Slots {
    fn add(&self, second: u64) {
        let slot = &self.0[(second % WINDOW_SECS) as usize];
        let stamp = (second & 0xffff_ffff) << 32;
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let next = if current >> 32 == stamp >> 32 {
                current.saturating_add(1).min(stamp | 0xffff_ffff)
            } else {
                stamp | 1
            };
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    fn sum(&self, now: u64) -> u64 {
        self.0
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .filter(|packed| now.saturating_sub(packed >> 32) < WINDOW_SECS && packed >> 32 <= now)
            .map(|packed| packed & 0xffff_ffff)
            .sum()
    }
}

#[cfg(test)]
mod test {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_are_a_fifth_of_recent_calls_plus_a_reserve() {
        let budget = RetryBudget::default();
        for _ in 0..1000 {
            budget.deposit();
        }
        let retries = (0..1000).take_while(|_| budget.withdraw()).count();
        assert_eq!(retries, 100 + 200);
        // Ten seconds on, the calls and retries no longer count: the reserve is back.
        tokio::time::advance(Duration::from_secs(WINDOW_SECS)).await;
        let retries = (0..1000).take_while(|_| budget.withdraw()).count();
        assert_eq!(retries, 100);
    }
}
