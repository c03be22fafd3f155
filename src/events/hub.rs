//! The hub of one event RPC on a publisher: sequence numbers, the retention ring, live
//! fan-out to plain subscribers, consumer groups, and where a new subscription starts.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use prost::Message;
use tokio::sync::{broadcast, Notify};

use super::group::{self, AckError, Groups, Join, JoinError, Joined};
use super::stream::EventStream;
use super::wire::{encode_metadata_field, EVENT_METADATA_FIELD};
use crate::v1::{
    AcknowledgeResponse, Acknowledgement, Cursor, EventMetadata, StartPosition, Subscribe,
};

/// One published event, encoded once with its metadata, shared by every subscriber (a clone
/// shares the bytes).
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) sequence: u64,
    pub(crate) bytes: Bytes,
}

pub(crate) struct Hub {
    /// `package.Service/Method`, for messages.
    pub(crate) method: String,
    pub(crate) epoch: u64,
    /// Per-subscriber buffer: a subscriber further behind than this is cut off.
    pub(crate) buffer: usize,
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
}

struct State {
    /// The sequence the next event gets; the first is 1.
    next: u64,
    ring: VecDeque<Stored>,
    retain: usize,
    /// The live fan-out; `None` once closed, which ends every plain subscriber's stream after
    /// the events already handed to it.
    live: Option<broadcast::Sender<Stored>>,
    groups: Groups,
    /// Draining: no new groups (their backlog would hold the drain up).
    draining: bool,
    /// Closed for groups too: every stream ends, nobody may subscribe.
    closed: bool,
}

/// Where a subscription starts: the retained events it gets first, and how many it missed.
#[derive(Debug)]
pub(crate) struct Start {
    pub(crate) backlog: VecDeque<Stored>,
    pub(crate) missed: u64,
    pub(crate) live: broadcast::Receiver<Stored>,
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
    pub(crate) fn new(method: String, epoch: u64, retain: usize, buffer: usize) -> Self {
        let buffer = buffer.max(1);
        Self {
            epoch,
            buffer,
            state: Mutex::new(State {
                next: 1,
                ring: VecDeque::with_capacity(retain.min(4096)),
                retain,
                live: Some(broadcast::channel(buffer).0),
                groups: Groups::default(),
                draining: false,
                closed: false,
            }),
            latest: AtomicU64::new(0),
            cut_off: AtomicU64::new(0),
            plain_streams: AtomicUsize::new(0),
            max_subscribers: usize::MAX,
            changed: Notify::new(),
            first_delivery: encode_metadata_field(&EventMetadata {
                delivery_count: 1,
                ..EventMetadata::default()
            }),
            published: metrics::counter!("meshless_events_published_total", "rpc" => method.clone()),
            subscribers: metrics::gauge!("meshless_event_subscribers", "rpc" => method.clone()),
            redeliveries: metrics::counter!("meshless_event_redeliveries_total", "rpc" => method.clone()),
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

    /// Publishes an event: never waits for subscribers.
    pub(crate) fn publish(&self, event: &impl Message) -> Cursor {
        // Encoded once, outside the lock; only the small metadata is added under it.
        let mut bytes = BytesMut::with_capacity(event.encoded_len() + 32);
        event.encode_raw(&mut bytes);
        let published_at_unix_micros = unix_micros(SystemTime::now());

        let mut state = self.lock();
        let sequence = state.next;
        state.next += 1;
        let metadata = EventMetadata {
            epoch: self.epoch,
            sequence,
            published_at_unix_micros,
            ..EventMetadata::default()
        };
        // Straight into the event's buffer, which has room for it.
        prost::encoding::message::encode(EVENT_METADATA_FIELD, &metadata, &mut bytes);
        let stored = Stored {
            sequence,
            bytes: bytes.freeze(),
        };
        if state.retain > 0 {
            if state.ring.len() == state.retain {
                state.ring.pop_front();
            }
            state.ring.push_back(stored.clone());
        }
        let capacity = state.retain;
        state.groups.offer(&stored, capacity);
        if let Some(live) = &state.live {
            // No receiver is fine: nobody is subscribed.
            let _ = live.send(stored);
        }
        self.latest.store(sequence, Ordering::Release);
        let redelivered = state.groups.take_redelivered();
        drop(state);
        self.published.increment(1);
        if redelivered > 0 {
            self.redeliveries.increment(redelivered);
        }
        Cursor {
            epoch: self.epoch,
            sequence,
        }
    }

    /// Ends every plain subscriber's stream once it has sent what was already published, and
    /// refuses new plain subscribers; consumer groups go on. The first step of a drain.
    pub(crate) fn close_plain(&self) {
        let mut state = self.lock();
        state.live = None;
        state.draining = true;
    }

    /// Ends every stream, group members' too, after what was already handed to it, and refuses
    /// new subscriptions: for shutdown. Publishing still works (events are retained).
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.live = None;
        state.closed = true;
        state.groups.close();
    }

    /// Whether every group member has acknowledged, and every plain stream has ended: the
    /// second step of a drain, after [`close_plain`](Self::close_plain).
    pub(crate) fn drained(&self) -> bool {
        self.plain_streams.load(Ordering::Acquire) == 0 && self.lock().groups.settled()
    }

    /// Waits until [`drained`](Self::drained), or `deadline`. Returns whether drained.
    pub(crate) async fn wait_drained(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.drained() {
                break;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                self.report_abandoned();
                return false;
            }
        }
        // Drained, unless a group was left without members with events still to deliver.
        self.report_abandoned()
    }

    /// Logs the groups left without any member while they still hold events, which are lost
    /// with this instance. Returns whether there are none.
    fn report_abandoned(&self) -> bool {
        let abandoned = self.lock().groups.abandoned();
        for (group, events) in &abandoned {
            tracing::warn!(rpc = %self.method, group, events, "consumer group without members; its events are lost with this instance");
        }
        abandoned.is_empty()
    }

    /// Where a subscription starts: the retained events it gets first, and how many it missed.
    fn position(
        &self,
        state: &State,
        request: &Subscribe,
    ) -> Result<(VecDeque<Stored>, u64), tonic::Status> {
        let latest = state.next - 1;
        let oldest = state.ring.front().map_or(latest + 1, |e| e.sequence);
        let start_live = request.start() == StartPosition::Live;
        let from = |first: u64| {
            state
                .ring
                .iter()
                .filter(|e| e.sequence >= first)
                .cloned()
                .collect()
        };
        let everything = || state.ring.iter().cloned().collect();

        Ok(match request.after.as_ref().filter(|c| c.epoch != 0) {
            Some(cursor) if cursor.epoch == self.epoch => {
                let after = cursor.sequence;
                if after > latest {
                    return Err(tonic::Status::invalid_argument(format!(
                        "cursor (epoch {:#x}, sequence {after}) is ahead of {}'s latest event ({latest}); \
                         resubscribe without a cursor",
                        cursor.epoch, self.method
                    )));
                }
                if after + 1 >= oldest {
                    (from(after + 1), 0)
                } else if start_live {
                    (VecDeque::new(), latest - after)
                } else {
                    (everything(), oldest - after - 1)
                }
            }
            // Another epoch: the publisher restarted. What the old process published after the
            // cursor is gone with it; of this epoch, the events no longer retained are missed.
            Some(_) if start_live => (VecDeque::new(), latest),
            Some(_) => (everything(), oldest - 1),
            None if start_live => (VecDeque::new(), 0),
            None => (everything(), 0),
        })
    }

    /// Starts a plain subscription. Taking the backlog and joining the live fan-out happen
    /// under one lock, so no event falls between them or arrives twice.
    pub(crate) fn start(&self, request: &Subscribe) -> Result<Start, tonic::Status> {
        let state = self.lock();
        let Some(live) = state.live.as_ref().map(broadcast::Sender::subscribe) else {
            return Err(self.shutting_down());
        };
        let (backlog, missed) = self.position(&state, request)?;
        Ok(Start {
            backlog,
            missed,
            live,
        })
    }

    /// Joins a member to its consumer group, creating the group, where the request says it
    /// starts, when it is new on this publisher.
    pub(crate) fn join(&self, request: &Subscribe) -> Result<Joined, tonic::Status> {
        for (what, name) in [("group", &request.group), ("member", &request.member)] {
            if name.len() > group::MAX_NAME_LEN {
                return Err(tonic::Status::invalid_argument(format!(
                    "the {what} name is {} bytes long; at most {} are allowed",
                    name.len(),
                    group::MAX_NAME_LEN
                )));
            }
        }
        if request.member.is_empty() {
            return Err(tonic::Status::invalid_argument(format!(
                "a member of consumer group `{}` needs a name (`Subscribe.member`), unique in the \
                 group and kept across reconnections, to acknowledge what it handles",
                request.group
            )));
        }
        let window = match request.max_unacknowledged {
            0 => group::DEFAULT_WINDOW,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        }
        .min(self.buffer);
        let lease = match request.lease_ms {
            0 => group::DEFAULT_LEASE,
            ms => Duration::from_millis(u64::from(ms)).min(group::MAX_LEASE),
        };
        let mut state = self.lock();
        if state.closed {
            return Err(self.shutting_down());
        }
        if state.groups.contains(&request.group) {
            // Only checked: the group already stands somewhere.
            if let Some(cursor) = request.after.filter(|c| c.epoch == self.epoch) {
                if cursor.sequence >= state.next {
                    return Err(tonic::Status::invalid_argument(format!(
                        "cursor (epoch {:#x}, sequence {}) is ahead of {}'s latest event ({})",
                        cursor.epoch,
                        cursor.sequence,
                        self.method,
                        state.next - 1
                    )));
                }
            }
        } else {
            if state.draining {
                return Err(self.shutting_down());
            }
            let (backlog, missed) = self.position(&state, request)?;
            state
                .groups
                .create(&request.group, backlog, missed)
                .map_err(|e| self.join_refused(&e, request))?;
        }
        let handled = request
            .after
            .filter(|cursor| cursor.epoch == self.epoch && cursor.sequence > 0)
            .map(|cursor| cursor.sequence);
        let capacity = state.retain;
        let joined = state
            .groups
            .join(
                Join {
                    group: request.group.clone(),
                    member: request.member.clone(),
                    window,
                    lease,
                    handled,
                },
                capacity,
            )
            .map_err(|e| self.join_refused(&e, request));
        self.count_redeliveries(&mut state);
        joined
    }

    fn join_refused(&self, error: &JoinError, request: &Subscribe) -> tonic::Status {
        tonic::Status::resource_exhausted(match error {
            JoinError::TooManyGroups => format!(
                "{} already serves {} consumer groups; group `{}` cannot be added",
                self.method,
                group::MAX_GROUPS,
                request.group
            ),
            JoinError::TooManyMembers => format!(
                "consumer group `{}` on {} already has {} members",
                request.group,
                self.method,
                group::MAX_MEMBERS
            ),
        })
    }

    /// A member's stream ended: once its lease runs out without it coming back, its
    /// unacknowledged events go to the other members.
    pub(crate) fn member_disconnected(
        self: &Arc<Self>,
        group: &str,
        member: &str,
        connection: u64,
    ) {
        let lease = self.lock().groups.disconnect(group, member, connection);
        self.changed.notify_waiters();
        let Some(lease) = lease else { return };
        let expire = {
            let hub = self.clone();
            let (group, member) = (group.to_owned(), member.to_owned());
            move || {
                let mut state = hub.lock();
                let capacity = state.retain;
                let expired = state.groups.expire(&group, &member, connection, capacity);
                hub.count_redeliveries(&mut state);
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
    ) -> Result<AcknowledgeResponse, tonic::Status> {
        let handled = match ack.handled {
            Some(cursor) if cursor.epoch != self.epoch => {
                return Err(tonic::Status::failed_precondition(format!(
                    "cursor of epoch {:#x}, but this instance of {} publishes epoch {:#x}: it \
                     restarted, and what the earlier run delivered cannot be acknowledged here",
                    cursor.epoch, self.method, self.epoch
                )));
            }
            Some(cursor) if cursor.sequence == 0 || cursor.sequence > self.latest() => {
                return Err(tonic::Status::invalid_argument(format!(
                    "no event {} was published on {} (latest: {})",
                    cursor.sequence,
                    self.method,
                    self.latest()
                )));
            }
            Some(cursor) => Some(cursor.sequence),
            None if ack.leave => None,
            None => {
                return Err(tonic::Status::invalid_argument(
                    "an acknowledgement names the last event handled (`handled`), or leaves",
                ))
            }
        };
        let mut state = self.lock();
        let capacity = state.retain;
        let result =
            state
                .groups
                .acknowledge(&ack.group, &ack.member, handled, ack.leave, capacity);
        self.count_redeliveries(&mut state);
        drop(state);
        match result {
            Ok(unacknowledged) => {
                self.changed.notify_waiters();
                Ok(AcknowledgeResponse { unacknowledged })
            }
            Err(AckError::UnknownGroup) => Err(tonic::Status::not_found(format!(
                "no consumer group `{}` on this instance of {}",
                group::shown(&ack.group),
                self.method
            ))),
            Err(AckError::UnknownMember) => Err(tonic::Status::not_found(format!(
                "no member `{}` in consumer group `{}` on this instance of {} (its lease ran out, \
                 or it left); resubscribe to rejoin",
                group::shown(&ack.member),
                group::shown(&ack.group),
                self.method
            ))),
        }
    }

    pub(crate) fn stream<T>(
        self: &Arc<Self>,
        request: &Subscribe,
    ) -> Result<EventStream<T>, tonic::Status> {
        let heartbeat = match request.heartbeat_interval_ms {
            0 => None,
            // Faster than every 10 ms is a mistake, not a liveness check.
            ms => Some(Duration::from_millis(u64::from(ms).max(10))),
        };
        if request.group.is_empty() {
            let open = self.plain_streams.fetch_add(1, Ordering::AcqRel);
            self.subscribers.set((open + 1) as f64);
            if open >= self.max_subscribers {
                self.plain_stream_ended();
                return Err(tonic::Status::resource_exhausted(format!(
                    "{} already has {} subscribers, its limit",
                    self.method, self.max_subscribers
                )));
            }
            let start = match self.start(request) {
                Ok(start) => start,
                Err(status) => {
                    self.plain_stream_ended();
                    return Err(status);
                }
            };
            Ok(EventStream::plain(self.clone(), start, heartbeat))
        } else {
            let joined = self.join(request)?;
            Ok(EventStream::member(
                self.clone(),
                request.group.clone(),
                joined,
                heartbeat,
            ))
        }
    }

    /// A plain subscriber's stream ended.
    pub(crate) fn plain_stream_ended(&self) {
        let open = self.plain_streams.fetch_sub(1, Ordering::AcqRel) - 1;
        self.subscribers.set(open as f64);
        self.changed.notify_waiters();
    }

    /// Counts the deliveries to groups beyond the first made by the last operation.
    fn count_redeliveries(&self, state: &mut State) {
        let redelivered = state.groups.take_redelivered();
        if redelivered > 0 {
            self.redeliveries.increment(redelivered);
        }
    }

    /// The metadata of a delivery to a group member: shared for a first delivery.
    pub(crate) fn delivery_bytes(&self, delivery_count: u32, missed: u64) -> Bytes {
        if delivery_count == 1 && missed == 0 {
            return self.first_delivery.clone();
        }
        encode_metadata_field(&EventMetadata {
            delivery_count,
            missed,
            ..EventMetadata::default()
        })
    }

    fn shutting_down(&self) -> tonic::Status {
        tonic::Status::unavailable(format!("{} is shutting down", self.method))
    }

    #[cfg(test)]
    pub(crate) fn unacked(&self, group: &str, member: &str) -> Vec<u64> {
        self.lock().groups.unacked(group, member)
    }

    /// The metadata field of a heartbeat (and of a pending `missed` count).
    pub(crate) fn heartbeat_bytes(&self, missed: u64) -> Bytes {
        encode_metadata_field(&EventMetadata {
            epoch: self.epoch,
            sequence: self.latest(),
            published_at_unix_micros: unix_micros(SystemTime::now()),
            missed,
            heartbeat: true,
            ..EventMetadata::default()
        })
    }
}

fn unix_micros(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
#[path = "hub_test.rs"]
mod test;

#[cfg(test)]
#[path = "group_test.rs"]
mod group_test;
