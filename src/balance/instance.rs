//! One instance of a target: its connection, its state, and its load.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;
use tonic::transport::Endpoint;

use super::connection::Connection;

use super::failure::{Ejection, EJECT_AFTER_FAILURES, FORGIVEN_AFTER_SUCCESSES};
use super::latency::{now_nanos, ResponseTime};
use crate::discovery::Placement;

/// The response time a failed call counts as, unless it took longer: a failure must never make
/// an instance look fast (Linkerd's fast-failure penalty).
const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// The life of an instance's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum State {
    /// The first connection attempt is under way.
    Connecting = 0,
    /// Connected: calls may be sent.
    Ready = 1,
    /// The connection failed or broke; it is being remade with backoff. Not picked.
    Failed = 2,
}

pub(crate) struct Instance {
    /// Its id in the process, as channelz lists it (a subchannel).
    pub(crate) id: i64,
    /// How the instance is named in logs and errors: `127.0.0.1:50051`.
    pub(crate) key: String,
    /// The hash of `key`, for picks by routing key.
    pub(crate) key_hash: u64,
    pub(crate) endpoint: Endpoint,
    state: AtomicU8,
    connection: ArcSwapOption<Connection>,
    in_flight: AtomicUsize,
    /// Response times, for the load signal.
    latency: ResponseTime,
    /// SRV priority: only the lowest priority with a ready instance is used.
    priority: AtomicU32,
    /// SRV weight: the share of calls the instance gets among its priority (0: a very small
    /// one beside instances of other weights, as RFC 2782 says).
    weight: AtomicU32,
    last_error: Mutex<Option<String>>,
    /// Wakes the connection task: a failure was reported, or the instance was removed.
    pub(crate) wake: Notify,
    removed: AtomicBool,
    /// Failures in a row.
    failures: AtomicU32,
    /// Successes in a row.
    successes: AtomicU32,
    /// Ejections since the instance was last forgiven: each doubles the next.
    ejections: AtomicU32,
    /// Until when (by [`now_nanos`]) the instance is ejected; 0: it is not.
    ejected_until: AtomicU64,
    /// Why it was last ejected.
    ejected_because: Mutex<String>,
    /// Calls sent to it, counted when they end: those that failed against it
    /// ([`counts_against`]), that it refused or that the caller gave up count as failed, all
    /// others as succeeded.
    pub(crate) calls: crate::admin::registry::CallCounts,
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("key", &self.key)
            .field("state", &self.state())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl Instance {
    pub(crate) fn new(key: String, endpoint: Endpoint, placement: Placement) -> Self {
        Self {
            id: crate::admin::registry::next_id(),
            key_hash: crate::keys::hash(key.as_bytes()),
            key,
            endpoint,
            state: AtomicU8::new(State::Connecting as u8),
            connection: ArcSwapOption::empty(),
            in_flight: AtomicUsize::new(0),
            latency: ResponseTime::default(),
            priority: AtomicU32::new(placement.priority.into()),
            weight: AtomicU32::new(placement.weight.into()),
            last_error: Mutex::new(None),
            wake: Notify::new(),
            removed: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            successes: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejected_because: Mutex::new(String::new()),
            calls: crate::admin::registry::CallCounts::default(),
        }
    }

    /// For how long still it is ejected, and why; `None` when it is not.
    pub(crate) fn ejection(&self) -> Option<(Duration, String)> {
        let left = self
            .ejected_until
            .load(Ordering::Relaxed)
            .checked_sub(now_nanos())
            .filter(|left| *left > 0)?;
        let because = self
            .ejected_because
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        Some((Duration::from_nanos(left), because))
    }

    /// Whether the instance is ejected for failing: not picked until the ejection ends.
    pub(crate) fn is_ejected(&self) -> bool {
        now_nanos() < self.ejected_until.load(Ordering::Relaxed)
    }

    /// Counts the outcome of a call it answered (or failed to). Returns how long to eject the
    /// instance for when this failure makes [`EJECT_AFTER_FAILURES`] in a row; the caller
    /// ejects it with [`eject`](Self::eject) if the set can spare it.
    pub(crate) fn count_outcome(&self, failed: bool, ejection: Ejection) -> Option<Duration> {
        if !failed {
            self.failures.store(0, Ordering::Relaxed);
            if self.successes.fetch_add(1, Ordering::Relaxed) + 1 >= FORGIVEN_AFTER_SUCCESSES {
                self.ejections.store(0, Ordering::Relaxed);
            }
            return None;
        }
        self.successes.store(0, Ordering::Relaxed);
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < EJECT_AFTER_FAILURES || self.is_ejected() {
            return None;
        }
        let doublings = self.ejections.load(Ordering::Relaxed).min(16);
        Some((ejection.first * 2u32.pow(doublings)).min(ejection.longest))
    }

    /// Ejects the instance for `duration`, `because` of the failures that made it.
    pub(crate) fn eject(&self, duration: Duration, because: String) {
        *self
            .ejected_because
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = because;
        self.failures.store(0, Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        let until =
            now_nanos().saturating_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
        self.ejected_until.store(until, Ordering::Relaxed);
    }

    /// The balancer's estimate of its response time.
    pub(crate) fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency.nanos_at(now_nanos()) as u64)
    }

    pub(crate) fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            0 => State::Connecting,
            1 => State::Ready,
            _ => State::Failed,
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Calls in flight per unit of SRV weight (weight 0 counting as a thousandth).
    pub(crate) fn in_flight_per_weight(&self) -> f64 {
        let weight = match self.placement().weight {
            0 => 0.001,
            weight => f64::from(weight),
        };
        self.in_flight() as f64 / weight
    }

    /// The response time the balancer expects at `now` (by [`now_nanos`]), in nanoseconds (an
    /// EWMA).
    pub(crate) fn latency_nanos_at(&self, now: u64) -> f64 {
        self.latency.nanos_at(now)
    }

    pub(crate) fn placement(&self) -> Placement {
        Placement {
            priority: self.priority.load(Ordering::Relaxed) as u16,
            weight: self.weight.load(Ordering::Relaxed) as u16,
        }
    }

    /// Changes the priority and weight; returns whether they changed.
    pub(crate) fn set_placement(&self, placement: Placement) -> bool {
        let old = self.placement();
        self.priority
            .store(placement.priority.into(), Ordering::Relaxed);
        self.weight
            .store(placement.weight.into(), Ordering::Relaxed);
        old != self.placement()
    }

    /// The connection, when the instance is ready.
    pub(crate) fn connection(&self) -> Option<Arc<Connection>> {
        self.connection.load_full()
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    pub(crate) fn connected(&self, connection: Connection) {
        self.connection.store(Some(Arc::new(connection)));
        self.state.store(State::Ready as u8, Ordering::Release);
    }

    pub(crate) fn connect_failed(&self, error: String) {
        self.connection.store(None);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error);
        }
        self.state.store(State::Failed as u8, Ordering::Release);
    }

    /// Marks a ready instance failed after a call could not be sent on its connection.
    /// Returns whether this call made the change (only one reporter wakes the task).
    pub(crate) fn report_failure(&self, error: String) -> bool {
        let changed = self
            .state
            .compare_exchange(
                State::Ready as u8,
                State::Failed as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        if changed {
            if let Ok(mut last) = self.last_error.lock() {
                *last = Some(error);
            }
            self.wake.notify_one();
        }
        changed
    }

    /// The instance closed a ready connection without failing (GOAWAY, a graceful close):
    /// it is connected again at once, and calls wait for that instead of failing. Returns
    /// whether this call made the change.
    pub(crate) fn report_closed(&self) -> bool {
        let changed = self.connection_ended();
        if changed {
            self.wake.notify_one();
        }
        changed
    }

    /// The connection ended: the instance is connecting again (its connection task, which
    /// noticed, does so at once). Returns whether this changed the state.
    pub(crate) fn connection_ended(&self) -> bool {
        let changed = self
            .state
            .compare_exchange(
                State::Ready as u8,
                State::Connecting as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        if changed {
            self.connection.store(None);
        }
        changed
    }

    /// Ends the instance's connection task; calls in flight finish.
    pub(crate) fn remove(&self) {
        self.removed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    pub(crate) fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    #[cfg(test)]
    pub(crate) fn observe_latency(&self, took: std::time::Duration) {
        self.latency.observe(took);
    }

    /// Counts a call in flight until the guard is dropped.
    pub(crate) fn start_call(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.calls.started();
        InFlight {
            instance: self.clone(),
            started: Instant::now(),
            observed: false,
            end: End::Answered,
        }
    }
}

/// How a call in flight ended, for the response time it counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Its response time is the time it took.
    Answered,
    /// It failed: [`FAILURE_PENALTY`] at least.
    Failed,
    /// The caller gave up on it: no response time.
    Abandoned,
}

/// A call in flight on an instance since it started; dropping it ends the call and counts
/// its response time, unless [`failed`](Self::failed) or [`abandoned`](Self::abandoned) said
/// otherwise.
#[derive(Debug)]
pub(crate) struct InFlight {
    instance: Arc<Instance>,
    started: Instant,
    /// The response time was counted already (at a stream's response headers).
    observed: bool,
    end: End,
}

impl InFlight {
    /// The call failed: it counts as [`FAILURE_PENALTY`] at least, never as a fast answer.
    pub(crate) fn failed(mut self) {
        self.end = End::Failed;
    }

    /// The caller gave up before the call ended: its time so far says nothing.
    pub(crate) fn abandoned(mut self) {
        self.end = End::Abandoned;
    }

    /// The response began (a stream's headers): its response time is the time until now,
    /// while it stays in flight until it ends.
    pub(crate) fn answered(&mut self) {
        self.instance.latency.observe(self.started.elapsed());
        self.observed = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let took = self.started.elapsed();
        match (self.end, self.observed) {
            (End::Answered, false) => self.instance.latency.observe(took),
            (End::Failed, _) => self.instance.latency.observe(took.max(FAILURE_PENALTY)),
            (End::Answered, true) | (End::Abandoned, _) => {}
        }
        self.instance.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.instance.calls.ended(self.end == End::Answered);
    }
}
