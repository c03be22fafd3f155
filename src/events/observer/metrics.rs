//! The sampled lag gauge of an instance stream ([`LagSample`]); the metric handles are
//! [`crate::telemetry::ObserverMetrics`].

use std::time::{Duration, SystemTime};

/// The lag gauge, set from the last event handled when the stream catches up, and every
/// [`LagSample::EVERY`] events while it does not: reading the clock per event costs more than a
/// small event.
#[derive(Default)]
pub(crate) struct LagSample {
    /// When the last event handled was published (unix micros), until recorded.
    published_at: Option<i64>,
    since_recorded: u32,
}

impl LagSample {
    const EVERY: u32 = 256;

    pub(crate) fn handled(&mut self, published_at_unix_micros: i64, gauge: &metrics::Gauge) {
        self.published_at = Some(published_at_unix_micros);
        self.since_recorded += 1;
        if self.since_recorded >= Self::EVERY {
            self.record(gauge);
        }
    }

    pub(crate) fn record(&mut self, gauge: &metrics::Gauge) {
        self.since_recorded = 0;
        let Some(micros) = self.published_at.take() else {
            return;
        };
        let Some(published) = SystemTime::UNIX_EPOCH
            .checked_add(Duration::from_micros(u64::try_from(micros).unwrap_or(0)))
        else {
            return;
        };
        if let Ok(lag) = SystemTime::now().duration_since(published) {
            gauge.set(lag.as_secs_f64());
        }
    }
}
