//! The hub of one event RPC on a publisher: publishing into the [event log](super::log), waking
//! the subscribers that wait for the next event, consumer groups, and the drain.
//!
//! Plain subscribers read the log by cursor (see `EventStream`); the hub only says where a
//! subscription starts and wakes streams that have caught up (`plain.rs`). Consumer groups
//! ([`super::group`]) are handed each event as it is published, and joined, acknowledged and
//! left under the hub's lock (`groups.rs`). `publish.rs` appends events, one or a batch at a
//! time; `drain.rs` ends it all for shutdown; `status.rs` is the hub's part of the admin status.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use tokio::sync::Notify;

use super::disk::Syncer;
use super::error::PublishError;
use super::fanout::Waiters;
use super::filter::{EventSchema, Filters};
use super::group::{Groups, Sweep};
use super::log::EventLog;
use super::wire;
use crate::keys::KeyPath;
use crate::telemetry::EventMetrics;
use crate::v1::Cursor;

pub(crate) use plain::{Admitted, Fetched, Progress};
#[cfg(feature = "postgres")]
pub(crate) use publish::Encoded;

/// How many events a plain stream takes from the log at a time.
const READ_BATCH: usize = 32;

pub(crate) struct Hub {
    /// `package.Service/Method`, for messages.
    pub(crate) method: String,
    pub(crate) epoch: u64,
    /// How far a plain subscriber may fall behind the events published since it subscribed
    /// before it is cut off; also the most a group member's window may be.
    pub(crate) buffer: usize,
    /// The largest event, encoded, that `publish` takes: what the stream's message limit lets
    /// through, with room for the per-subscriber metadata.
    max_event_size: usize,
    state: Mutex<State>,
    /// The sequence of the latest event, for heartbeats.
    latest: AtomicU64,
    /// How many subscribers were cut off for falling behind.
    pub(crate) cut_off: AtomicU64,
    /// Open streams of subscribers without a group.
    plain_streams: AtomicUsize,
    /// Those streams, by number, with how far each got (for the admin status): each is
    /// listed when admitted and taken off when it ends, never touched per event.
    plain: Mutex<std::collections::BTreeMap<u64, Arc<Progress>>>,
    /// The most plain subscribers served at once.
    max_subscribers: usize,
    /// Woken when an acknowledgement arrives or a stream ends: what a drain waits for.
    changed: Notify,
    /// The metadata of a first delivery to a group, encoded once.
    first_delivery: Bytes,
    /// Metric handles, made once: labelling them per event would allocate per event.
    pub(crate) metrics: EventMetrics,
    /// Durable publishes wait on it; `None` for a log in memory.
    syncer: Option<Syncer>,
    /// Where each event's key is, for an event RPC with keys.
    key: Option<KeyPath>,
    /// Checks subscribers' filters against the event message.
    pub(crate) filters: Filters,
}

/// What a hub is made with.
#[derive(Debug, Clone)]
pub(crate) struct HubSettings {
    /// `package.Service/Method`.
    pub(crate) method: String,
    pub(crate) epoch: u64,
    /// The event RPC's `retain`: also the most events a group holds unacknowledged.
    pub(crate) retain: usize,
    /// How far a plain subscriber may fall behind (see [`Hub::buffer`](Hub)).
    pub(crate) buffer: usize,
    pub(crate) max_event_size: usize,
    pub(crate) max_subscribers: usize,
    pub(crate) key: Option<KeyPath>,
    /// The event message's schema, for subscribers' filters.
    pub(crate) schema: Option<EventSchema>,
}

impl HubSettings {
    /// Settings with the defaults for the rest: no key, no limit of subscribers, the default
    /// message limit.
    #[cfg(test)]
    pub(crate) fn new(method: String, epoch: u64, retain: usize, buffer: usize) -> Self {
        Self {
            method,
            epoch,
            retain,
            buffer,
            max_event_size: crate::DEFAULT_MAX_MESSAGE_SIZE,
            max_subscribers: usize::MAX,
            key: None,
            schema: None,
        }
    }
}

struct State {
    log: Box<dyn EventLog>,
    /// Plain streams that have read everything, to wake on the next event.
    waiters: Waiters,
    /// Whether plain streams wait for more events; once draining, each ends when it has read
    /// everything.
    live: bool,
    groups: Groups,
    /// Draining: no new groups (their backlog would hold the drain up).
    draining: bool,
    /// Closed: every stream ends, nobody may subscribe, no lease timer starts.
    closed: bool,
    /// Kept events the log dropped past its compaction bound, as counted so far.
    compaction_dropped: u64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("method", &self.method)
            .field("epoch", &self.epoch)
            .field("latest", &self.latest())
            .finish_non_exhaustive()
    }
}

impl Hub {
    #[cfg(test)]
    pub(crate) fn new(method: String, epoch: u64, retain: usize, buffer: usize) -> Arc<Self> {
        let log = Box::new(super::log::MemoryLog::new(retain));
        Self::with_log(HubSettings::new(method, epoch, retain, buffer), log, None)
    }

    /// A hub over `log`, which may hold events already (a log reopened from disk).
    pub(crate) fn with_log(
        settings: HubSettings,
        log: Box<dyn EventLog>,
        syncer: Option<Syncer>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|hub: &Weak<Self>| {
            let hub = hub.clone();
            let sweep = Arc::new(move || {
                if let Some(hub) = hub.upgrade() {
                    hub.sweep_idle_groups();
                }
            });
            Self::with_sweep(settings, log, syncer, sweep)
        })
    }

    fn with_sweep(
        settings: HubSettings,
        mut log: Box<dyn EventLog>,
        syncer: Option<Syncer>,
        sweep: Sweep,
    ) -> Self {
        let HubSettings {
            method,
            epoch,
            retain,
            buffer,
            max_event_size,
            max_subscribers,
            key,
            schema,
        } = settings;
        let buffer = buffer.max(1);
        let latest = log.latest();
        let mut groups = Groups::new(retain);
        groups.sweep_with(sweep);
        if log.keeps_groups() {
            groups.restore(log.take_saved_groups(), log.as_ref());
        }
        Self {
            epoch,
            buffer,
            max_event_size,
            state: Mutex::new(State {
                log,
                waiters: Waiters::default(),
                live: true,
                groups,
                draining: false,
                closed: false,
                compaction_dropped: 0,
            }),
            latest: AtomicU64::new(latest),
            cut_off: AtomicU64::new(0),
            plain_streams: AtomicUsize::new(0),
            plain: Mutex::new(std::collections::BTreeMap::new()),
            max_subscribers,
            changed: Notify::new(),
            first_delivery: wire::delivery_field(1, 0, 0),
            metrics: EventMetrics::new(&method),
            syncer,
            key,
            filters: Filters::new(schema),
            method,
        }
    }

    pub(crate) fn latest(&self) -> u64 {
        self.latest.load(Ordering::Acquire)
    }

    /// The oldest sequence the log keeps, once what is past its age limit has left it.
    #[cfg(feature = "postgres")]
    pub(crate) fn oldest_retained(&self) -> u64 {
        let mut state = self.lock();
        state
            .log
            .expire(u64::try_from(wire::now_unix_micros()).unwrap_or(0));
        state.log.oldest()
    }

    /// With compaction by key: the sequences of the events kept past the window.
    #[cfg(feature = "postgres")]
    pub(crate) fn kept_sequences(&self) -> Option<Vec<u64>> {
        self.lock().log.kept_sequences()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update of the state is complete before it can panic; poisoning is harmless.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until the event at `cursor` is on stable storage: at once for a log in memory,
    /// which has none.
    pub(crate) async fn synced(&self, cursor: Cursor) -> Result<Cursor, PublishError> {
        let Some(syncer) = &self.syncer else {
            return Ok(cursor);
        };
        match syncer.wait(cursor.sequence).await {
            Ok(()) => Ok(cursor),
            Err(reason) => {
                self.metrics.log_errors.increment(1);
                Err(PublishError::Io {
                    rpc: self.method.clone(),
                    reason: reason.to_string(),
                })
            }
        }
    }

    /// How many syncs the log ran (0 in memory).
    pub(crate) fn syncs(&self) -> u64 {
        self.syncer.as_ref().map_or(0, Syncer::syncs)
    }
}

mod drain;
mod groups;
mod plain;
mod publish;
mod status;

#[cfg(test)]
mod test;
