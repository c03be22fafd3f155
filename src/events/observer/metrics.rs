//! The metric handles of one instance stream ([`StreamMetrics`], made once per stream; the
//! names are listed in [`crate::telemetry`]) and the sampled lag gauge ([`LagSample`]).

use std::time::{Duration, SystemTime};

#[derive(Clone)]
pub(crate) struct StreamMetrics {
    pub(crate) handled: metrics::Counter,
    pub(crate) dead_letters: metrics::Counter,
    pub(crate) missed: metrics::Counter,
    pub(crate) redelivered: metrics::Counter,
    pub(crate) gaps: metrics::Counter,
    pub(crate) lag: metrics::Gauge,
}

impl StreamMetrics {
    pub(crate) fn new(rpc: &'static str) -> Self {
        Self {
            handled: metrics::counter!("meshless_observer_events_total", "rpc" => rpc, "outcome" => "handled"),
            dead_letters: metrics::counter!("meshless_observer_events_total", "rpc" => rpc, "outcome" => "dead_letter"),
            missed: metrics::counter!("meshless_observer_missed_events_total", "rpc" => rpc),
            redelivered: metrics::counter!("meshless_observer_redelivered_events_total", "rpc" => rpc),
            gaps: metrics::counter!("meshless_observer_gaps_total", "rpc" => rpc),
            lag: metrics::gauge!("meshless_observer_lag_seconds", "rpc" => rpc),
        }
    }
}

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
