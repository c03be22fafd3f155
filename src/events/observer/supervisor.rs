//! [`ObserverBuilder`] and [`ObserverHandle`]: which events, which target, and the task that
//! follows the target's instances.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use prost::Message;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use super::book::Book;
use super::control::{Instance, Shared};
use super::control::{Subscription, Typed};
use super::cursors::CursorStore;
use super::event::{Event, HandlerError};
use super::options::ObserverOptions;
use crate::discovery::{self, InstanceUpdate, Resolution};
use crate::endpoint::Connector;
use crate::events::filter::{self, EventSchema, Filter};
use crate::{Error, Target};

/// Collects the event handlers of an observer, then starts it. The generated
/// `{Service}Observer` builds one with a typed method per event RPC.
#[must_use]
pub struct ObserverBuilder {
    service: &'static str,
    subscriptions: Vec<Arc<dyn Subscription>>,
    rpcs: Vec<&'static str>,
    options: ObserverOptions,
    /// The filters given, by gRPC path, with the event message's schema to check them.
    filters: HashMap<&'static str, (EventSchema, Filter)>,
}

impl std::fmt::Debug for ObserverBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObserverBuilder")
            .field("service", &self.service)
            .field("rpcs", &self.rpcs)
            .field("options", &self.options)
            .finish()
    }
}

impl ObserverBuilder {
    #[doc(hidden)]
    pub fn new(service: &'static str) -> Self {
        Self {
            service,
            subscriptions: Vec::new(),
            rpcs: Vec::new(),
            options: ObserverOptions::default(),
            filters: HashMap::new(),
        }
    }

    /// Takes only the events of `rpc` (its gRPC path) that match `filter`, which `start`
    /// checks against the event message `event` (`.package.Message`) that `descriptors` (an
    /// encoded `FileDescriptorSet`) describes. The generated `{event}_filter` methods call it.
    #[doc(hidden)]
    pub fn filter(
        mut self,
        rpc: &'static str,
        descriptors: &'static [u8],
        event: &'static str,
        filter: Filter,
    ) -> Self {
        let schema = EventSchema {
            descriptors,
            message: event,
        };
        self.filters.insert(rpc, (schema, filter));
        self
    }

    #[doc(hidden)]
    pub fn observe<T, F, Fut>(mut self, rpc: &'static str, keyed: bool, handler: F) -> Self
    where
        T: Message + Default + Clone + Send + Sync + 'static,
        F: Fn(Event<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.subscriptions.push(Arc::new(Typed {
            rpc,
            handler,
            event: std::marker::PhantomData,
            keyed,
        }));
        self.rpcs.push(rpc);
        self
    }

    /// Replaces the options.
    pub fn options(mut self, options: ObserverOptions) -> Self {
        self.options = options;
        self
    }

    /// Starts observing every instance of `target` (any target a client takes). For `dns:`
    /// and `dns+srv:` targets the first DNS answer is awaited, so that its instances are
    /// subscribed to when this returns. Must run within a Tokio runtime.
    pub async fn start(self, target: &str) -> Result<ObserverHandle, Error> {
        if self.subscriptions.is_empty() {
            return Err(Error::invalid_input(format!(
                "an observer of {} needs at least one event handler",
                self.service
            )));
        }
        if let (Some(group), crate::v1::StartPosition::LatestPerKey) =
            (&self.options.group, self.options.start)
        {
            return Err(Error::invalid_input(format!(
                "consumer group `{group}` cannot start at the latest event of every key: a group \
                 stands at one place in each producer's log (start it at the oldest event)"
            )));
        }
        let filters = filter::checked(self.filters, &self.rpcs)?;
        let parsed: Target = target.parse()?;
        let connector = Connector::new(self.options.connect_timeout, self.options.keepalive);
        #[cfg(feature = "tls")]
        let connector = connector.with_tls(self.options.tls.as_ref(), parsed.server_name());
        let book = Book::default();
        let cursor_store = self
            .options
            .cursor_store
            .clone()
            .filter(|_| self.options.group.is_none());
        if let Some(store) = &cursor_store {
            let known = |rpc: &str| self.rpcs.iter().find(|known| **known == rpc).copied();
            for (rpc, cursor) in store.load()? {
                match known(&rpc) {
                    Some(known) => book.preload(known, cursor),
                    None => tracing::debug!(rpc, "a stored cursor of an event RPC not observed"),
                }
            }
            for (rpc, cursor) in store.load_ahead()? {
                if let Some(known) = known(&rpc) {
                    book.preload_ahead(known, cursor);
                }
            }
        }
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Shared {
            handlers: self
                .options
                .max_concurrent_handlers
                .map(|n| Arc::new(Semaphore::new(n))),
            options: self.options,
            // Random, so that two observers never take each other for the same member.
            member: format!("{:016x}", fastrand::u64(..)),
            book,
            filters,
        });
        let listed = Arc::new(Mutex::new(BTreeSet::new()));
        let mut instances = Instances {
            connector,
            subscriptions: self.subscriptions,
            shared,
            stop: stopped.clone(),
            running: HashMap::new(),
            listed: listed.clone(),
        };
        let mut resolution = discovery::resolve(&parsed, &instances.shared.options.dns)?;
        if !resolution
            .first_answer(|update| instances.apply(update))
            .await
        {
            tracing::warn!(
                target,
                waited = ?instances.shared.options.dns.first_answer_timeout,
                "no answer from DNS yet; observing the instances as they come"
            );
        }
        let task = tokio::spawn(instances.run(resolution));
        Ok(ObserverHandle {
            target: target.to_owned(),
            cursor_store,
            stop,
            task: Some(task),
            listed,
        })
    }
}

/// A running observer. [`stop`](Self::stop) it to finish gracefully; dropping it stops it
/// too, without waiting.
///
/// ```no_run
/// mod users {
///     meshless::include_proto!("signup.v1");
/// }
/// use meshless::events::{Event, HandlerError};
/// use users::{UserSignedUpEvent, UserSignedUpObserver, UsersObserver};
///
/// struct Feed;
///
/// impl UserSignedUpObserver for Feed {
///     async fn user_signed_up(&self, event: Event<UserSignedUpEvent>) -> Result<(), HandlerError> {
///         println!("event {} from {}", event.cursor().sequence, event.instance());
///         Ok(())
///     }
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let handle = UsersObserver::new()
///     .user_signed_up(Feed)
///     .start("dns+srv:users.service.consul")
///     .await?;
/// // The producer instances it subscribes to, as discovery lists them.
/// println!("observing {:?}", handle.instances());
/// // Lets the handlers running finish, keeps the cursors, and leaves consumer groups.
/// handle.stop().await;
/// # Ok(())
/// # }
/// ```
pub struct ObserverHandle {
    target: String,
    cursor_store: Option<Arc<dyn CursorStore>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    listed: Arc<Mutex<BTreeSet<String>>>,
}

impl std::fmt::Debug for ObserverHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObserverHandle")
            .field("target", &self.target)
            .field("cursor_store", &self.cursor_store.is_some())
            .finish_non_exhaustive()
    }
}

impl ObserverHandle {
    /// The target observed.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The producer instances (`host:port`) discovery lists now, each observed. Instances
    /// that left discovery are not listed, though their streams may still be read (see
    /// [`ObserverOptions::removal_grace`]).
    pub fn instances(&self) -> Vec<String> {
        lock(&self.listed).iter().cloned().collect()
    }

    /// Stops taking events, lets the handlers in flight finish (a handler waiting to be
    /// retried is not called again), and returns when every subscription has ended, those to
    /// instances that left discovery included.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        if let Some(store) = &self.cursor_store {
            store.flush();
        }
    }
}

impl Drop for ObserverHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(store) = &self.cursor_store {
            store.flush();
        }
    }
}

/// The subscriptions running per producer instance.
struct Instances {
    connector: Connector,
    subscriptions: Vec<Arc<dyn Subscription>>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    running: HashMap<String, Running>,
    /// The instances in discovery, for [`ObserverHandle::instances`].
    listed: Arc<Mutex<BTreeSet<String>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Running {
    /// What this instance's subscriptions are told: active, retired (gone from discovery) or
    /// stopped.
    control: watch::Sender<Instance>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    fn finished(&self) -> bool {
        self.tasks.iter().all(JoinHandle::is_finished)
    }
}

impl Instances {
    /// Observes the instance at `key` (`host:port`), unless it is already observed; an
    /// instance back in discovery while its streams still run keeps them.
    fn add(&mut self, key: String) -> Result<(), Error> {
        lock(&self.listed).insert(key.clone());
        if let Some(running) = self.running.get(&key) {
            if !running.finished() {
                running.control.send_replace(Instance::Active);
                return Ok(());
            }
        }
        let endpoint = self.connector.endpoint(&key)?;
        let (control, controlled) = watch::channel(Instance::Active);
        let tasks = self
            .subscriptions
            .iter()
            .map(|s| {
                s.spawn(
                    key.clone(),
                    endpoint.clone(),
                    self.shared.clone(),
                    controlled.clone(),
                )
            })
            .collect();
        tracing::debug!(instance = %key, "observing");
        self.running.insert(key, Running { control, tasks });
        Ok(())
    }

    /// The instance left discovery: its streams are read until the producer ends them (its
    /// drain) or they break, within the removal grace, and never subscribed again.
    fn remove(&mut self, key: &str) {
        lock(&self.listed).remove(key);
        if let Some(running) = self.running.get(key) {
            let until = tokio::time::Instant::now() + self.shared.options.removal_grace;
            tracing::debug!(instance = %key, grace = ?self.shared.options.removal_grace, "instance gone from discovery; reading what it still sends");
            running.control.send_replace(Instance::Retired(until));
        }
        self.running.retain(|_, running| !running.finished());
    }

    fn apply(&mut self, update: InstanceUpdate) {
        match update {
            InstanceUpdate::Insert(authority, _) => {
                if let Err(error) = self.add(authority.clone()) {
                    tracing::warn!(instance = %authority, %error, "instance not observed");
                }
            }
            InstanceUpdate::Remove(authority) => self.remove(&authority),
            InstanceUpdate::Status(_) => {}
        }
    }

    /// Follows the target's instances until the observer stops.
    async fn run(mut self, mut resolution: Resolution) {
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                update = resolution.next() => match update {
                    Some(update) => self.apply(update),
                    // No more changes (a fixed list): observe what there is until stopped.
                    None => break,
                },
                _ = stop.wait_for(|stop| *stop) => break,
            }
        }
        let _ = stop.wait_for(|stop| *stop).await;
        self.finish().await;
    }

    /// Stops every subscription and waits for them (and their handlers in flight).
    async fn finish(&mut self) {
        for running in self.running.values() {
            running.control.send_replace(Instance::Stopped);
        }
        for (_, running) in self.running.drain() {
            for task in running.tasks {
                let _ = task.await;
            }
        }
    }
}

#[cfg(test)]
mod test;
