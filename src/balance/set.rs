//! The set of instances behind one target: membership, connection upkeep, and picking.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::transport::Endpoint;

use super::instance::{InFlight, Instance, State};

/// Connection and waiting settings shared by the instances of a set.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) connect_timeout: Duration,
    pub(crate) wait_timeout: Duration,
    pub(crate) reconnect_backoff: Duration,
    pub(crate) reconnect_backoff_max: Duration,
}

/// The instances of one target.
pub(crate) struct InstanceSet {
    target: String,
    settings: Settings,
    /// Every instance; changed only by membership updates.
    all: Mutex<Vec<Arc<Instance>>>,
    /// The ready instances: the snapshot every call reads, rebuilt when a state changes.
    ready: ArcSwap<Vec<Arc<Instance>>>,
    /// Notified whenever `ready` is rebuilt, for calls waiting for an instance.
    changed: Notify,
}

impl std::fmt::Debug for InstanceSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceSet")
            .field("target", &self.target)
            .field("ready", &self.ready.load().len())
            .finish_non_exhaustive()
    }
}

impl InstanceSet {
    pub(crate) fn new(target: String, settings: Settings) -> Arc<Self> {
        Arc::new(Self {
            target,
            settings,
            all: Mutex::new(Vec::new()),
            ready: ArcSwap::from_pointee(Vec::new()),
            changed: Notify::new(),
        })
    }

    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    /// Adds an instance and starts connecting to it. Must be called within a Tokio runtime.
    pub(crate) fn insert(self: &Arc<Self>, key: String, endpoint: Endpoint) {
        let endpoint = endpoint
            .connect_timeout(self.settings.connect_timeout)
            .tcp_nodelay(true);
        let instance = Arc::new(Instance::new(key, endpoint));
        self.lock_all().push(instance.clone());
        tokio::spawn(keep_connected(instance, Arc::downgrade(self)));
    }

    fn lock_all(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Instance>>> {
        // A panic while holding this lock cannot leave the Vec half-updated, so poisoning is
        // of no concern.
        self.all
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn rebuild_ready(&self) {
        let ready: Vec<_> = self
            .lock_all()
            .iter()
            .filter(|i| i.state() == State::Ready)
            .cloned()
            .collect();
        self.ready.store(Arc::new(ready));
        self.changed.notify_waiters();
    }

    /// Marks `instance` failed after a call could not be sent to it.
    pub(crate) fn report_failure(&self, instance: &Instance, error: String) {
        if instance.report_failure(error) {
            tracing::warn!(target = %self.target, instance = %instance.key, "connection failed; instance not picked until it reconnects");
            self.rebuild_ready();
        }
    }

    /// Picks a ready instance, waiting while instances are still connecting, until `deadline`
    /// (the call's own) or the set's wait timeout, whichever comes first.
    pub(crate) async fn pick(
        &self,
        deadline: Option<Instant>,
    ) -> Result<(Arc<Instance>, InFlight), tonic::Status> {
        let wait_until = Instant::now() + self.settings.wait_timeout;
        let wait_until = deadline.map_or(wait_until, |d| d.min(wait_until));
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(instance) = power_of_two_choices(&self.ready.load()) {
                let in_flight = instance.start_call();
                return Ok((instance.clone(), in_flight));
            }
            let (connecting, failed) = self.count_unready();
            if connecting == 0 || Instant::now() >= wait_until {
                return Err(self.unavailable(connecting, failed));
            }
            if tokio::time::timeout_at(wait_until, changed).await.is_err() {
                return Err(self.unavailable(connecting, failed));
            }
        }
    }

    fn count_unready(&self) -> (usize, usize) {
        let all = self.lock_all();
        let connecting = all
            .iter()
            .filter(|i| i.state() == State::Connecting)
            .count();
        (connecting, all.len() - connecting)
    }

    fn unavailable(&self, connecting: usize, failed: usize) -> tonic::Status {
        let target = &self.target;
        let message = if connecting + failed == 0 {
            format!("no instance of `{target}` is known")
        } else if connecting > 0 {
            format!("no instance of `{target}` connected in time ({connecting} still connecting, {failed} failing)")
        } else {
            let last_error = self
                .lock_all()
                .iter()
                .find_map(|i| i.last_error().map(|e| format!("; {}: {e}", i.key)))
                .unwrap_or_default();
            format!(
                "no instance of `{target}` is reachable ({failed} failing to connect{last_error})"
            )
        };
        tonic::Status::unavailable(message)
    }
}

/// Power of two choices: of two distinct instances drawn at random, the one with fewer calls
/// in flight.
fn power_of_two_choices(ready: &[Arc<Instance>]) -> Option<&Arc<Instance>> {
    match ready.len() {
        0 => None,
        1 => ready.first(),
        n => {
            let a = fastrand::usize(..n);
            let mut b = fastrand::usize(..n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (&ready[a], &ready[b]);
            Some(if a.in_flight() <= b.in_flight() { a } else { b })
        }
    }
}

/// Connects to an instance and reconnects it, with exponential backoff, whenever a call
/// reports its connection failed; ends when the instance is removed or the set is dropped.
async fn keep_connected(instance: Arc<Instance>, set: Weak<InstanceSet>) {
    let Some(settings) = set.upgrade().map(|s| s.settings.clone()) else {
        return;
    };
    let mut backoff = settings.reconnect_backoff;
    loop {
        let result = instance.endpoint.connect().await;
        if instance.is_removed() {
            return;
        }
        let Some(set) = set.upgrade() else { return };
        match result {
            Ok(channel) => {
                tracing::debug!(target = %set.target, instance = %instance.key, "connected");
                instance.connected(channel);
                set.rebuild_ready();
                drop(set);
                backoff = settings.reconnect_backoff;
                // Sleep until a call reports a failure, or the instance is removed.
                instance.wake.notified().await;
                if instance.is_removed() {
                    return;
                }
            }
            Err(error) => {
                let error = error_chain(&error);
                tracing::debug!(target = %set.target, instance = %instance.key, %error, "connect failed");
                instance.connect_failed(error);
                set.rebuild_ready();
                drop(set);
                let jitter = backoff.mul_f64(fastrand::f64() * 0.2);
                tokio::select! {
                    () = tokio::time::sleep(backoff + jitter) => {}
                    () = instance.wake.notified() => {}
                }
                if instance.is_removed() {
                    return;
                }
                backoff = (backoff * 2).min(settings.reconnect_backoff_max);
            }
        }
    }
}

/// An error and its sources on one line: tonic's transport errors say little at the top.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
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
mod test {
    use super::*;

    fn set_with_one_connecting_instance(
        wait_timeout: Duration,
    ) -> (Arc<InstanceSet>, Arc<Instance>) {
        let settings = Settings {
            connect_timeout: Duration::from_secs(1),
            wait_timeout,
            reconnect_backoff: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(1),
        };
        let set = InstanceSet::new("ipv4:127.0.0.1:1".into(), settings);
        // No connection task: the test decides when the instance connects.
        let instance = Arc::new(Instance::new(
            "127.0.0.1:1".into(),
            Endpoint::from_static("http://127.0.0.1:1"),
        ));
        set.lock_all().push(instance.clone());
        (set, instance)
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_waits_for_a_connecting_instance_until_its_deadline() {
        let (set, _instance) = set_with_one_connecting_instance(Duration::from_secs(3600));
        let started = Instant::now();
        let error = set
            .pick(Some(started + Duration::from_secs(2)))
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unavailable);
        assert!(
            error
                .message()
                .contains("connected in time (1 still connecting"),
            "{}",
            error.message()
        );
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_deadline_a_call_waits_the_wait_timeout() {
        let (set, _instance) = set_with_one_connecting_instance(Duration::from_secs(10));
        let started = Instant::now();
        set.pick(None).await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_call_proceeds_as_soon_as_an_instance_connects() {
        let (set, instance) = set_with_one_connecting_instance(Duration::from_secs(10));
        let started = Instant::now();
        let waiting = tokio::spawn({
            let set = set.clone();
            async move { set.pick(None).await.map(|(picked, _)| picked.key.clone()) }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        instance.connected(instance.endpoint.connect_lazy());
        set.rebuild_ready();
        assert_eq!(waiting.await.unwrap().unwrap(), "127.0.0.1:1");
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn failed_instances_are_not_picked_and_fail_fast() {
        let (set, instance) = set_with_one_connecting_instance(Duration::from_secs(3600));
        instance.connected(instance.endpoint.connect_lazy());
        set.rebuild_ready();
        assert!(set.pick(None).await.is_ok());
        set.report_failure(&instance, "connection refused".into());
        let error = set.pick(None).await.unwrap_err();
        assert!(
            error
                .message()
                .contains("1 failing to connect; 127.0.0.1:1: connection refused"),
            "{}",
            error.message()
        );
    }

    #[test]
    fn power_of_two_choices_prefers_the_less_loaded() {
        let instances: Vec<_> = (0..2)
            .map(|i| {
                Arc::new(Instance::new(
                    format!("i{i}"),
                    Endpoint::from_static("http://127.0.0.1:1"),
                ))
            })
            .collect();
        let _busy = [instances[0].start_call(), instances[0].start_call()];
        for _ in 0..100 {
            // With two instances both are always drawn: the idle one wins every time.
            assert_eq!(power_of_two_choices(&instances).unwrap().key, "i1");
        }
    }
}
