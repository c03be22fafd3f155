//! The set of instances behind one target: membership, what discovery said, and picking.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::connect::keep_connected;
use super::failure::{Ejection, Failure};
use super::instance::{InFlight, Instance, State};
use super::ready::Ready;
use members::Members;
use unavailable::Unavailable;

mod members;
mod unavailable;
use crate::discovery::DiscoveryStatus;
use crate::discovery::Placement;

/// Connection and waiting settings shared by the instances of a set.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// How each instance is connected to.
    pub(crate) connector: crate::endpoint::Connector,
    pub(crate) wait_timeout: Duration,
    pub(crate) reconnect_backoff: Duration,
    pub(crate) reconnect_backoff_max: Duration,
    pub(crate) ejection: Ejection,
}

/// The instances of one target.
pub(crate) struct InstanceSet {
    target: Arc<str>,
    settings: Settings,
    /// Every instance; changed only by membership updates.
    all: Mutex<Members>,
    /// The ready instances: the snapshot every call reads, rebuilt when a state changes.
    ready: ArcSwap<Ready>,
    /// Notified whenever `ready` or the discovery status changes, for calls that wait.
    changed: Notify,
    discovery: watch::Sender<DiscoveryStatus>,
    /// When discovery last answered (or failed to).
    answered_at: Mutex<Option<Instant>>,
    /// Asks discovery to look again, when a connection fails.
    refresh: Arc<Notify>,
    /// Dropped with the set, which stops the task that applies discovery's updates.
    _stop_discovery: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for InstanceSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceSet")
            .field("target", &self.target)
            .field("instances", &self.lock_all().len())
            .finish_non_exhaustive()
    }
}

impl InstanceSet {
    /// An empty set, whose discovery is still pending. Connection failures notify `refresh`
    /// (discovery looks again); the receiver returned is told when the set is dropped, for the
    /// task that applies discovery's updates to it.
    pub(crate) fn new(
        target: String,
        settings: Settings,
        refresh: Arc<Notify>,
    ) -> (Arc<Self>, tokio::sync::oneshot::Receiver<()>) {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let set = Arc::new(Self {
            target: target.into(),
            settings,
            all: Mutex::new(Members::default()),
            ready: ArcSwap::from_pointee(Ready::default()),
            changed: Notify::new(),
            discovery: watch::Sender::new(DiscoveryStatus::Pending),
            answered_at: Mutex::new(None),
            refresh,
            _stop_discovery: stop,
        });
        (set, stopped)
    }

    /// The target, shared (for metric labels).
    pub(crate) fn target_name(&self) -> Arc<str> {
        self.target.clone()
    }

    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    pub(super) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Adds the instance at `authority` (`host:port`) and starts connecting to it.
    fn insert(
        self: &Arc<Self>,
        authority: String,
        placement: Placement,
    ) -> Result<(), crate::Error> {
        let endpoint = self.settings.connector.endpoint(&authority)?;
        let instance = Arc::new(Instance::new(authority, endpoint, placement));
        self.lock_all().push(instance.clone());
        tokio::spawn(keep_connected(instance, Arc::downgrade(self)));
        Ok(())
    }

    /// Adds the instance at `authority` (`host:port`), or updates its placement if it is
    /// known. Must be called within a Tokio runtime.
    pub(crate) fn upsert(
        self: &Arc<Self>,
        authority: String,
        placement: Placement,
    ) -> Result<(), crate::Error> {
        let known = self.lock_all().get(&authority).cloned();
        match known {
            Some(instance) => {
                if instance.set_placement(placement) {
                    self.rebuild_ready();
                }
            }
            None => self.insert(authority, placement)?,
        }
        Ok(())
    }

    /// Removes the instance at `authority`; calls in flight on it finish.
    pub(crate) fn remove(&self, authority: &str) {
        let removed = self.lock_all().remove(authority);
        if let Some(instance) = removed {
            instance.remove();
        }
        self.rebuild_ready();
    }

    pub(crate) fn set_discovery_status(&self, status: DiscoveryStatus) {
        if status != DiscoveryStatus::Pending {
            *self
                .answered_at
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
        }
        self.discovery.send_replace(status);
        self.changed.notify_waiters();
    }

    pub(crate) fn discovery_status(&self) -> watch::Receiver<DiscoveryStatus> {
        self.discovery.subscribe()
    }

    fn lock_all(&self) -> std::sync::MutexGuard<'_, Members> {
        // A panic while holding this lock cannot leave the Vec half-updated, so poisoning is
        // of no concern.
        self.all
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every instance, in no order, and whether each is among those calls go to now.
    pub(crate) fn instances(&self) -> Vec<(Arc<Instance>, bool)> {
        let ready = self.ready.load();
        self.lock_all()
            .iter()
            .map(|instance| (instance.clone(), ready.contains(instance)))
            .collect()
    }

    /// What discovery last said, and when it last answered (or failed to).
    pub(crate) fn last_answer(&self) -> (DiscoveryStatus, Option<Instant>) {
        let answered = *self
            .answered_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (self.discovery.borrow().clone(), answered)
    }

    /// How many instances calls can go to now.
    pub(crate) fn ready_count(&self) -> usize {
        self.ready.load().len()
    }

    pub(super) fn rebuild_ready(&self) {
        let ready = Ready::build(&self.lock_all());
        crate::telemetry::ready_instances(&self.target).set(ready.len() as f64);
        self.ready.store(Arc::new(ready));
        self.changed.notify_waiters();
    }

    /// Counts how a call to `instance` ended. An instance that failed
    /// [`EJECT_AFTER_FAILURES`](super::failure::EJECT_AFTER_FAILURES) times in a row is
    /// ejected, for a time that doubles with each ejection, unless half the connected instances
    /// (rounded down) are ejected already: never all of them. Instances that are connecting or
    /// failing to connect are no spares, since calls cannot go to them. Decided under the set's
    /// lock, so that two instances failing at once cannot both take the last place.
    pub(crate) fn count_outcome(self: &Arc<Self>, instance: &Instance, failure: Option<Failure>) {
        let Some(duration) = instance.count_outcome(failure.is_some(), self.settings.ejection)
        else {
            return;
        };
        {
            let all = self.lock_all();
            let connected = all.iter().filter(|i| i.state() == State::Ready);
            let (connected, ejected) = connected.fold((0, 0), |(connected, ejected), i| {
                (connected + 1, ejected + usize::from(i.is_ejected()))
            });
            if instance.is_ejected() {
                return;
            }
            if ejected + 1 > connected / 2 {
                tracing::debug!(target = %self.target, instance = %instance.key, "failing, but not ejected: as many instances as may be are ejected already");
                return;
            }
            let last = failure
                .map(|failure| failure.to_string())
                .unwrap_or_default();
            instance.eject(
                duration,
                format!(
                    "{} calls in a row failed, the last: {last}",
                    super::failure::EJECT_AFTER_FAILURES
                ),
            );
        }
        tracing::warn!(target = %self.target, instance = %instance.key, ?duration, "instance failed {} calls in a row; ejected", super::failure::EJECT_AFTER_FAILURES);
        self.rebuild_ready();
        let set = Arc::downgrade(self);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tokio::time::sleep(duration).await;
                if let Some(set) = set.upgrade() {
                    set.rebuild_ready();
                }
            });
        }
    }

    /// A connection to an instance could not be made: discovery looks again (it may be gone,
    /// and replaced elsewhere).
    pub(super) fn connect_failed(&self) {
        self.refresh.notify_one();
    }

    /// `instance` closed its connection gracefully (GOAWAY): it is connected again at once,
    /// without counting as a failure.
    pub(crate) fn report_closed(&self, instance: &Instance) {
        if instance.report_closed() {
            tracing::debug!(target = %self.target, instance = %instance.key, "connection closed by the instance; connecting again");
            self.rebuild_ready();
        }
    }

    /// Marks `instance` failed after a call could not be sent to it, and asks discovery to
    /// look again (it may be gone).
    pub(crate) fn report_failure(&self, instance: &Instance, error: String) {
        if instance.report_failure(error) {
            tracing::warn!(target = %self.target, instance = %instance.key, "connection failed; instance not picked until it reconnects");
            self.rebuild_ready();
            self.refresh.notify_one();
        }
    }

    /// Picks a ready instance. When there is none, waits while that may change (connections
    /// being made, the first DNS answer pending), until `deadline` (the call's own) or the
    /// set's wait timeout, whichever comes first; otherwise fails at once.
    ///
    /// A retry passes the instances already `tried`: another is picked when there is one. A
    /// call with a routing key (its hash) goes to the ready instance that ranks highest for it.
    pub(crate) async fn pick(
        &self,
        deadline: Option<Instant>,
        tried: &[Arc<Instance>],
        key: Option<u64>,
    ) -> Result<(Arc<Instance>, InFlight), tonic::Status> {
        let pick = |ready: &Ready| match key {
            Some(key) => ready.pick_for_key(key, tried).cloned(),
            None => ready.pick_avoiding(tried).cloned(),
        };
        // The common case: an instance is ready, and nothing needs to wait for a change.
        if let Some(instance) = pick(&self.ready.load()) {
            let in_flight = instance.start_call();
            return Ok((instance, in_flight));
        }
        let wait_until = Instant::now() + self.settings.wait_timeout;
        let wait_until = deadline.map_or(wait_until, |d| d.min(wait_until));
        // The wait ends at the call's deadline: its time is spent (as grpc-go says).
        let gave_up = |message: String| {
            if deadline.is_some_and(|deadline| deadline <= wait_until) {
                tonic::Status::deadline_exceeded(format!(
                    "the call's deadline passed while waiting for an instance: {message}"
                ))
            } else {
                tonic::Status::unavailable(message)
            }
        };
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(instance) = pick(&self.ready.load()) {
                let in_flight = instance.start_call();
                return Ok((instance, in_flight));
            }
            let why = self.why_unavailable();
            if !why.may_change {
                return Err(tonic::Status::unavailable(why.message));
            }
            if Instant::now() >= wait_until {
                return Err(gave_up(why.message));
            }
            if tokio::time::timeout_at(wait_until, changed).await.is_err() {
                return Err(gave_up(self.why_unavailable().message));
            }
        }
    }
}

impl InstanceSet {
    fn why_unavailable(&self) -> Unavailable {
        let status = self.discovery.borrow().clone();
        Unavailable::of(&self.target, &self.lock_all(), status)
    }
}

impl Drop for InstanceSet {
    fn drop(&mut self) {
        // Ends every instance's connection task.
        for instance in self.lock_all().iter() {
            instance.remove();
        }
    }
}

#[cfg(test)]
mod test;
