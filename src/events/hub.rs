//! The hub of one event RPC on a publisher: publishing into the [event log](super::log), waking
//! the subscribers that wait for the next event, consumer groups, and the drain.
//!
//! Plain subscribers read the log by cursor (see `EventStream`); the hub only says where a
//! subscription starts and wakes streams that have caught up. Consumer groups
//! ([`super::group`]) are handed each event as it is published.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

use bytes::{Bytes, BytesMut};
use prost::Message;
use tokio::sync::Notify;

use super::disk::Syncer;
use super::fanout::{self, Waiters};
use super::group::{Groups, Join, Joined};
use super::log::{EventLog, Read, Stored};
use super::protocol::{self, Membership, Refusal, Subscription};
use super::wire;
use crate::keys::KeyPath;
use crate::peer::PeerIdentity;
use crate::v1::{AcknowledgeResponse, Acknowledgement, Cursor};

/// How many events a plain stream takes from the log at a time.
const READ_BATCH: usize = 32;

/// Why an event was not published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The event, encoded, is larger than what its event RPC delivers
    /// ([`PublisherSettings::max_event_size`](super::PublisherSettings::max_event_size)). It
    /// was not kept: no subscriber will see it.
    #[error("the {rpc} event is {size} bytes encoded; the event RPC delivers at most {limit}")]
    TooLarge {
        /// The event RPC, `package.Service/Method`.
        rpc: String,
        /// The event's encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The event could not be written to the event log's files (a full disk, an I/O error),
    /// or, for a durable publish, synced to stable storage. Not kept when it could not be
    /// written; when only the sync failed, it was published but may not survive a crash of
    /// the machine.
    #[error("the {rpc} event log: {reason}")]
    Io {
        /// The event RPC, `package.Service/Method`.
        rpc: String,
        /// What failed.
        reason: String,
    },
}

impl From<PublishError> for tonic::Status {
    /// `RESOURCE_EXHAUSTED` for an event over the size limit, as for any message over it;
    /// `UNAVAILABLE` when the event log failed (another instance may take the call).
    fn from(error: PublishError) -> Self {
        match error {
            PublishError::TooLarge { .. } => tonic::Status::resource_exhausted(error.to_string()),
            PublishError::Io { .. } => tonic::Status::unavailable(error.to_string()),
        }
    }
}

pub(crate) struct Hub {
    /// `package.Service/Method`, for messages.
    pub(crate) method: String,
    pub(crate) epoch: u64,
    /// How far a plain subscriber may fall behind the events published since it subscribed
    /// before it is cut off; also the most a group member's window may be.
    pub(crate) buffer: usize,
    /// The largest event, encoded, that `publish` takes: what the stream's message limit lets
    /// through, with room for the per-subscriber metadata.
    pub(crate) max_event_size: usize,
    state: Mutex<State>,
    /// The sequence of the latest event, for heartbeats.
    latest: AtomicU64,
    /// How many subscribers were cut off for falling behind.
    pub(crate) cut_off: AtomicU64,
    /// Open streams of subscribers without a group.
    plain_streams: AtomicUsize,
    /// The most plain subscribers served at once.
    pub(crate) max_subscribers: usize,
    /// Woken when an acknowledgement arrives or a stream ends: what a drain waits for.
    changed: Notify,
    /// The metadata of a first delivery to a group, encoded once.
    first_delivery: Bytes,
    /// Metric handles, made once: labelling them per event would allocate per event.
    published: metrics::Counter,
    subscribers: metrics::Gauge,
    redeliveries: metrics::Counter,
    refused: metrics::Counter,
    write_errors: metrics::Counter,
    /// Durable publishes wait on it; `None` for a log in memory.
    syncer: Option<Syncer>,
    /// Where each event's key is, for an event RPC with keys.
    pub(crate) key: Option<KeyPath>,
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
}

/// Where a plain subscription starts.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Position {
    /// The first sequence to send.
    pub(crate) next: u64,
    /// Events of this epoch the subscriber missed before `next`.
    pub(crate) missed: u64,
    /// The epoch of the subscriber's cursor when it was another one: whatever that epoch
    /// published after the cursor is lost, count unknown. 0 otherwise.
    pub(crate) previous_epoch: u64,
}

/// What a plain stream found when it asked for more.
#[derive(Debug)]
pub(crate) enum Fetched {
    /// Events were added to the batch (`missed` of them were no longer retained).
    Events { missed: u64 },
    /// Nothing new; the stream is woken when there is.
    Waiting,
    /// Nothing new and nothing more to come: the drain ends the stream.
    End,
    /// Further behind than the buffer allows.
    CutOff,
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
    pub(crate) fn new(method: String, epoch: u64, retain: usize, buffer: usize) -> Self {
        Self::with_log(
            method,
            epoch,
            Box::new(super::log::MemoryLog::new(retain)),
            None,
            retain,
            buffer,
        )
    }

    /// A hub over `log`, which may hold events already (a log reopened from disk).
    pub(crate) fn with_log(
        method: String,
        epoch: u64,
        log: Box<dyn EventLog>,
        syncer: Option<Syncer>,
        retain: usize,
        buffer: usize,
    ) -> Self {
        let buffer = buffer.max(1);
        let latest = log.latest();
        let mut log = log;
        let mut groups = Groups::new(retain);
        if log.keeps_groups() {
            groups.restore(log.take_saved_groups(), log.as_ref());
            groups.journal();
        }
        Self {
            epoch,
            buffer,
            max_event_size: crate::DEFAULT_MAX_MESSAGE_SIZE,
            state: Mutex::new(State {
                log,
                waiters: Waiters::default(),
                live: true,
                groups,
                draining: false,
                closed: false,
            }),
            latest: AtomicU64::new(latest),
            cut_off: AtomicU64::new(0),
            plain_streams: AtomicUsize::new(0),
            max_subscribers: usize::MAX,
            changed: Notify::new(),
            first_delivery: wire::delivery_field(1, 0, 0),
            published: metrics::counter!("meshless_events_published_total", "rpc" => method.clone()),
            subscribers: metrics::gauge!("meshless_event_subscribers", "rpc" => method.clone()),
            redeliveries: metrics::counter!("meshless_event_redeliveries_total", "rpc" => method.clone()),
            refused: metrics::counter!("meshless_events_refused_total", "rpc" => method.clone()),
            write_errors: metrics::counter!("meshless_event_log_errors_total", "rpc" => method.clone()),
            syncer,
            key: None,
            method,
        }
    }

    pub(crate) fn latest(&self) -> u64 {
        self.latest.load(Ordering::Acquire)
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
                self.write_errors.increment(1);
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

    /// Publishes an event: never waits for subscribers. An event too large for the stream's
    /// message limit is refused, so that it can never hold up the events behind it.
    pub(crate) fn publish(&self, event: &impl Message) -> Result<Cursor, PublishError> {
        let size = event.encoded_len();
        if size > self.max_event_size {
            self.refused.increment(1);
            return Err(PublishError::TooLarge {
                rpc: self.method.clone(),
                size,
                limit: self.max_event_size,
            });
        }
        // The publisher's span, for the observers' spans to link to (`opentelemetry` feature).
        let (traceparent, tracestate) = crate::trace_context::of_current_span();
        // Encoded once, outside the lock; only the small metadata is added under it.
        let mut bytes =
            BytesMut::with_capacity(size + 32 + traceparent.len() + tracestate.len() + 8);
        event.encode_raw(&mut bytes);
        let key = self.key.map(|path| path.key_of(&bytes));
        // An empty key (a string or bytes key left unset) is no key.
        let key_hash = key
            .as_deref()
            .filter(|key| !key.is_empty())
            .map(crate::keys::hash);
        let published_at = wire::now_unix_micros();

        let mut state = self.lock();
        let sequence = state.log.next_sequence();
        // Straight into the event's buffer, which has room for it.
        wire::append_published(
            &mut bytes,
            wire::Published {
                epoch: self.epoch,
                sequence,
                published_at,
                traceparent,
                tracestate,
                key: key.unwrap_or_default(),
            },
        );
        let stored = Stored {
            sequence,
            published_at: u64::try_from(published_at).unwrap_or(0),
            bytes: bytes.freeze(),
            key: key_hash,
        };
        if let Err(error) = state.log.append(stored.clone()) {
            drop(state);
            self.write_errors.increment(1);
            tracing::error!(rpc = %self.method, %error, "writing an event to the event log failed; publish_* returns the error");
            return Err(PublishError::Io {
                rpc: self.method.clone(),
                reason: format!("writing the event: {error}"),
            });
        }
        // First deliveries only: a group that cannot take the event now reads it from the
        // log later.
        let State { groups, log, .. } = &mut *state;
        groups.offer(&stored, log.as_mut());
        self.latest.store(sequence, Ordering::Release);
        let woken = state.waiters.take();
        drop(state);
        if !woken.is_empty() {
            let emptied = fanout::wake(woken);
            self.lock().waiters.recycle(emptied);
        }
        self.published.increment(1);
        Ok(Cursor {
            epoch: self.epoch,
            sequence,
        })
    }

    /// Where a subscription starts, from its cursor (if any) and start position.
    fn position(
        &self,
        log: &dyn EventLog,
        subscription: &Subscription,
    ) -> Result<Position, Refusal> {
        let latest = log.latest();
        let oldest = log.oldest();
        let live = latest + 1;
        let start = |missed_before_oldest: u64, previous_epoch: u64| {
            if subscription.start_live {
                Position {
                    next: live,
                    missed: missed_before_oldest + (live - oldest),
                    previous_epoch,
                }
            } else {
                Position {
                    next: oldest,
                    missed: missed_before_oldest,
                    previous_epoch,
                }
            }
        };
        let (after, lost_epoch) = super::log::continued_cursor(log, self.epoch, subscription.after);
        let position = match after {
            Some(cursor) if cursor.epoch == self.epoch => {
                let after = cursor.sequence;
                if after > latest {
                    return Err(Refusal::CursorAhead { cursor, latest });
                }
                if after + 1 >= oldest {
                    Position {
                        next: after + 1,
                        missed: 0,
                        previous_epoch: 0,
                    }
                } else {
                    start(oldest - after - 1, 0)
                }
            }
            // Another epoch: the publisher restarted. What the old process published after the
            // cursor is gone with it (how much is unknown); of this epoch, the events no longer
            // retained are missed.
            Some(cursor) => start(oldest - 1, cursor.epoch),
            None if subscription.start_live => Position {
                next: live,
                missed: 0,
                previous_epoch: 0,
            },
            None => Position {
                next: oldest,
                missed: 0,
                previous_epoch: 0,
            },
        };
        Ok(match lost_epoch {
            0 => position,
            lost_epoch => Position {
                previous_epoch: lost_epoch,
                ..position
            },
        })
    }

    /// Where a plain subscription starts.
    pub(crate) fn start(&self, subscription: &Subscription) -> Result<Position, Refusal> {
        let mut state = self.lock();
        if state.closed {
            return Err(Refusal::ShuttingDown);
        }
        state
            .log
            .expire(u64::try_from(wire::now_unix_micros()).unwrap_or(0));
        self.position(state.log.as_ref(), subscription)
    }

    /// Reads what a plain stream has not sent yet into `batch`, from `next` on, or registers
    /// the stream (number `stream`) to be woken by the next event. `floor` is the latest
    /// sequence when the stream subscribed: only events published since count against its
    /// buffer. `registered` is the round the stream is registered in, if any.
    pub(crate) fn fetch(
        &self,
        next: &mut u64,
        floor: u64,
        batch: &mut VecDeque<Stored>,
        (stream, registered): (u64, &mut Option<u64>),
        waker: &Waker,
    ) -> Fetched {
        let mut state = self.lock();
        state
            .log
            .expire(u64::try_from(wire::now_unix_micros()).unwrap_or(0));
        let latest = state.log.latest();
        if *next > latest {
            if !state.live {
                return Fetched::End;
            }
            state.waiters.register(stream, registered, waker);
            return Fetched::Waiting;
        }
        let behind = latest - (*next - 1).max(floor);
        if behind > self.buffer as u64 && !state.draining {
            return Fetched::CutOff;
        }
        let Read {
            missed,
            next: after,
        } = state.log.read(*next, READ_BATCH, batch);
        *next = after;
        Fetched::Events { missed }
    }

    /// Joins a member to its consumer group, creating the group, where the request says it
    /// starts, when it is new on this publisher.
    fn join_group(
        &self,
        subscription: &Subscription,
        membership: &Membership,
    ) -> Result<Joined, Refusal> {
        let mut state = self.lock();
        if state.closed {
            return Err(Refusal::ShuttingDown);
        }
        if state.groups.contains(&membership.group) {
            // Only checked: the group already stands somewhere.
            if let Some(cursor) = subscription.after.filter(|c| c.epoch == self.epoch) {
                if cursor.sequence > state.log.latest() {
                    return Err(Refusal::CursorAhead {
                        cursor,
                        latest: state.log.latest(),
                    });
                }
            }
        } else {
            if state.draining {
                return Err(Refusal::ShuttingDown);
            }
            let position = self.position(state.log.as_ref(), subscription)?;
            state
                .groups
                .create(
                    &membership.group,
                    position.next,
                    position.missed,
                    position.previous_epoch,
                )
                .map_err(Refusal::Join)?;
        }
        let handled = subscription
            .after
            .filter(|cursor| cursor.epoch == self.epoch && cursor.sequence > 0)
            .map(|cursor| cursor.sequence);
        let State { groups, log, .. } = &mut *state;
        let joined = groups
            .join(
                Join {
                    group: membership.group.clone(),
                    member: membership.member.clone(),
                    window: membership.window.min(self.buffer),
                    lease: membership.lease,
                    handled,
                    identity: membership.identity.clone(),
                },
                log.as_mut(),
            )
            .map_err(Refusal::Join);
        self.after_group_change(&mut state);
        joined
    }

    /// A member's stream ended: once its lease runs out without it coming back, its
    /// unacknowledged events go to the other members.
    pub(crate) fn member_disconnected(
        self: &Arc<Self>,
        group: &str,
        member: &str,
        connection: u64,
    ) {
        let (lease, closed) = {
            let mut state = self.lock();
            let State { groups, log, .. } = &mut *state;
            let lease = groups.disconnect(group, member, connection, log.as_mut());
            self.after_group_change(&mut state);
            (lease, state.closed)
        };
        self.changed.notify_waiters();
        let Some(lease) = lease else { return };
        if closed {
            // Shutting down: nobody is handed anything any more, and no timer outlives the
            // server.
            return;
        }
        let expire = {
            let hub = Arc::downgrade(self);
            let (group, member) = (group.to_owned(), member.to_owned());
            move || {
                let Some(hub) = hub.upgrade() else { return };
                let mut state = hub.lock();
                let State { groups, log, .. } = &mut *state;
                let expired = groups.expire(&group, &member, connection, log.as_mut());
                hub.after_group_change(&mut state);
                if expired {
                    drop(state);
                    tracing::debug!(rpc = %hub.method, group, member, "member's lease ran out; its events go to the rest of the group");
                    hub.changed.notify_waiters();
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if !lease.is_zero() => {
                let timer = runtime.spawn(async move {
                    tokio::time::sleep(lease).await;
                    expire();
                });
                self.lock()
                    .groups
                    .set_lease_timer(group, member, connection, timer.abort_handle());
            }
            _ => expire(),
        }
    }

    /// Acknowledges what a group member handled.
    pub(crate) fn acknowledge(
        &self,
        ack: &Acknowledgement,
        identity: Option<&PeerIdentity>,
    ) -> Result<AcknowledgeResponse, tonic::Status> {
        let (handled, handled_each) =
            protocol::handled(&self.method, self.epoch, self.latest(), ack)?;
        let mut state = self.lock();
        let State { groups, log, .. } = &mut *state;
        let result = groups.acknowledge(
            &ack.group,
            &ack.member,
            handled,
            &handled_each,
            ack.leave,
            identity,
            log.as_mut(),
        );
        self.after_group_change(&mut state);
        drop(state);
        match result {
            Ok(unacknowledged) => {
                self.changed.notify_waiters();
                Ok(AcknowledgeResponse { unacknowledged })
            }
            Err(error) => Err(protocol::ack_refused(&self.method, &error, ack)),
        }
    }

    /// Admits a plain subscriber (counted until [`plain_stream_ended`](Self::plain_stream_ended)):
    /// where it starts, and the latest sequence now (its buffer's floor).
    pub(crate) fn admit_plain(
        &self,
        subscription: &Subscription,
    ) -> Result<(Position, u64), tonic::Status> {
        let open = self.plain_streams.fetch_add(1, Ordering::AcqRel);
        self.subscribers.set((open + 1) as f64);
        let refusal = if open >= self.max_subscribers {
            Refusal::TooManySubscribers(self.max_subscribers)
        } else {
            match self.start(subscription) {
                Ok(position) => return Ok((position, self.latest())),
                Err(refusal) => refusal,
            }
        };
        self.plain_stream_ended();
        Err(protocol::refused(&self.method, &refusal, None))
    }

    /// Joins a group member, as the subscription asks.
    pub(crate) fn join(
        &self,
        subscription: &Subscription,
        membership: &Membership,
    ) -> Result<Joined, tonic::Status> {
        self.join_group(subscription, membership)
            .map_err(|refusal| protocol::refused(&self.method, &refusal, Some(membership)))
    }

    /// A plain stream that ends takes its waker out of the list it was registered in, unless
    /// that list was woken since.
    pub(crate) fn unregister(&self, stream: u64, round: u64) {
        self.lock().waiters.unregister(stream, round);
    }

    /// How many plain subscribers have a stream open.
    pub(crate) fn plain_subscribers(&self) -> usize {
        self.plain_streams.load(Ordering::Acquire)
    }

    /// A plain subscriber's stream ended.
    pub(crate) fn plain_stream_ended(&self) {
        let open = self.plain_streams.fetch_sub(1, Ordering::AcqRel) - 1;
        self.subscribers.set(open as f64);
        self.changed.notify_waiters();
    }

    /// After an operation on groups: counts the deliveries beyond the first it made, and hands
    /// its changes to the log (which keeps them if it keeps groups).
    fn after_group_change(&self, state: &mut State) {
        let redelivered = state.groups.take_redelivered();
        if redelivered > 0 {
            self.redeliveries.increment(redelivered);
        }
        let changes = state.groups.take_changes();
        if !changes.is_empty() {
            state.log.record_groups(&changes);
        }
    }

    /// The metadata of a delivery to a group member: shared for a first delivery.
    pub(crate) fn delivery_bytes(
        &self,
        delivery_count: u32,
        missed: u64,
        previous_epoch: u64,
    ) -> Bytes {
        if delivery_count == 1 && missed == 0 && previous_epoch == 0 {
            return self.first_delivery.clone();
        }
        wire::delivery_field(delivery_count, missed, previous_epoch)
    }

    #[cfg(test)]
    pub(crate) fn has_group(&self, group: &str) -> bool {
        self.lock().groups.contains(group)
    }

    #[cfg(test)]
    pub(crate) fn unacked(&self, group: &str, member: &str) -> Vec<u64> {
        self.lock().groups.unacked(group, member)
    }

    /// The metadata field of a heartbeat (and of a pending gap report).
    pub(crate) fn heartbeat_bytes(&self, missed: u64, previous_epoch: u64) -> Bytes {
        wire::heartbeat_field(self.epoch, self.latest(), missed, previous_epoch)
    }
}

#[path = "drain.rs"]
mod drain;

#[cfg(test)]
#[path = "hub_test.rs"]
mod test;

#[cfg(test)]
#[path = "group_test.rs"]
mod group_test;

#[cfg(test)]
#[path = "keyed_group_test.rs"]
mod keyed_group_test;
