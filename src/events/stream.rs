//! [`EventStream`]: the server stream of one subscriber: for a plain subscriber, the event
//! log read from its cursor on (retained events, then each new one as it is published); for a
//! group member, the events its group hands it. With heartbeats when idle.

use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;

use super::filter::EventFilter;
use super::group::{Delivery, Joined};
use super::hub::{Admitted, Fetched, Hub, Progress};
use super::log::Stored;
use super::protocol::{self, Subscription};
use super::wire::{delivery_field, Envelope};

/// How many events filtered out one poll of a stream passes over before it lets other tasks
/// run.
const PASS_OVER_BUDGET: usize = 1024;

/// The events of one subscription, as the server stream of an event RPC.
///
/// Yields each event's shared bytes (no per-subscriber encoding). A plain subscriber's stream
/// ends with `RESOURCE_EXHAUSTED` when it falls further behind than its buffer; a group
/// member's is paced by its acknowledgements instead.
pub struct EventStream<T> {
    hub: Arc<Hub>,
    feed: Feed,
    /// Missed events to report with the next thing sent.
    missed: u64,
    /// The epoch whose tail was lost, to report with the next thing sent (0: none).
    previous_epoch: u64,
    heartbeat: Option<(Duration, Pin<Box<Sleep>>)>,
    /// Whether an event went out since the heartbeat timer was last armed. The timer is re-armed
    /// when it fires, not per event: touching the timer wheel per event per subscriber costs
    /// more than the event itself.
    sent_since_tick: bool,
    /// The sequence of the last event sent, for the resume hint.
    last_sent: u64,
    done: bool,
    _event: PhantomData<fn() -> T>,
}

enum Feed {
    Plain {
        /// The next sequence to read from the log.
        next: u64,
        /// The latest sequence when the stream subscribed: what it finds retained does not
        /// count against its buffer.
        floor: u64,
        /// Read from the log, not yet sent.
        batch: VecDeque<Stored>,
        /// This stream's number, to be woken by the hub.
        id: u64,
        /// The hub's round of wake-ups this stream is registered in.
        registered: Option<u64>,
        /// The subscriber's filter: events that do not match are passed over.
        filter: Option<EventFilter>,
        /// The last sequence sent or passed over: where a subscriber with a filter may resume.
        scanned: u64,
        /// `scanned` as the admin status sees it, and the subscriber's address.
        progress: Arc<Progress>,
    },
    Member {
        group: String,
        member: String,
        connection: u64,
        deliveries: mpsc::UnboundedReceiver<Delivery>,
        superseded: Arc<AtomicBool>,
    },
}

impl<T> std::fmt::Debug for EventStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("EventStream");
        debug.field("method", &self.hub.method);
        if let Feed::Member { group, member, .. } = &self.feed {
            debug.field("group", group).field("member", member);
        }
        debug
            .field("last_sent", &self.last_sent)
            .finish_non_exhaustive()
    }
}

impl<T> EventStream<T> {
    /// The stream of one subscriber of `hub`, or why it is refused.
    pub(crate) fn open(hub: &Arc<Hub>, subscription: &Subscription) -> Result<Self, tonic::Status> {
        match &subscription.membership {
            None => {
                let filter = hub
                    .filters
                    .compile(&subscription.filter)
                    .map_err(|why| protocol::bad_filter(&hub.method, &why))?;
                let admitted = hub.admit_plain(subscription)?;
                Ok(Self::plain(
                    hub.clone(),
                    admitted,
                    subscription.heartbeat,
                    filter,
                ))
            }
            Some(membership) => {
                let joined = hub.join(subscription, membership)?;
                Ok(Self::member(
                    hub.clone(),
                    membership.group.clone(),
                    joined,
                    subscription.heartbeat,
                ))
            }
        }
    }

    /// A plain subscriber's stream. The hub has counted and listed it.
    fn plain(
        hub: Arc<Hub>,
        admitted: Admitted,
        heartbeat: Option<Duration>,
        filter: Option<EventFilter>,
    ) -> Self {
        let Admitted {
            position: start,
            floor,
            id,
            progress,
        } = admitted;
        let feed = Feed::Plain {
            next: start.next,
            floor,
            // The latest event of every key, for such a start: sent before `next`.
            batch: start.snapshot.0.into(),
            id,
            registered: None,
            filter,
            scanned: start.next - 1,
            progress,
        };
        let mut stream = Self::new(hub, feed, start.missed, heartbeat);
        stream.previous_epoch = start.previous_epoch;
        stream
    }

    /// A group member's stream.
    fn member(hub: Arc<Hub>, group: String, joined: Joined, heartbeat: Option<Duration>) -> Self {
        let feed = Feed::Member {
            group,
            member: joined.member,
            connection: joined.connection,
            deliveries: joined.deliveries,
            superseded: joined.superseded,
        };
        Self::new(hub, feed, 0, heartbeat)
    }

    /// For a group member's stream: its connection number, which acknowledgements name.
    pub(crate) fn member_connection(&self) -> Option<u64> {
        match &self.feed {
            Feed::Member { connection, .. } => Some(*connection),
            Feed::Plain { .. } => None,
        }
    }

    /// For a plain stream that reports no gap first: the sequence right before its first
    /// event, so that the subscriber knows where it stands before any event arrives.
    pub(crate) fn start_after(&self) -> Option<u64> {
        match &self.feed {
            Feed::Plain { next, batch, .. }
                if self.missed == 0 && self.previous_epoch == 0 && batch.is_empty() =>
            {
                Some(next - 1)
            }
            _ => None,
        }
    }

    fn new(hub: Arc<Hub>, feed: Feed, missed: u64, heartbeat: Option<Duration>) -> Self {
        Self {
            hub,
            feed,
            missed,
            previous_epoch: 0,
            heartbeat: heartbeat.map(|every| (every, Box::pin(tokio::time::sleep(every)))),
            sent_since_tick: false,
            last_sent: 0,
            done: false,
            _event: PhantomData,
        }
    }

    fn envelope(&mut self, shared: Bytes, sequence: u64, extra: Option<Bytes>) -> Envelope<T> {
        self.last_sent = sequence;
        let extra = match (extra, self.missed, self.previous_epoch) {
            (extra, 0, 0) => extra,
            // Only plain streams carry a gap report of their own; a group's rides on the
            // delivery.
            (_, missed, previous_epoch) => {
                self.missed = 0;
                self.previous_epoch = 0;
                Some(delivery_field(0, missed, previous_epoch))
            }
        };
        Envelope::encoded(shared, extra)
    }

    fn cut_off(&mut self) -> tonic::Status {
        self.done = true;
        self.hub.cut_off.fetch_add(1, Ordering::Relaxed);
        self.hub.metrics.cut_off.increment(1);
        protocol::cut_off(
            &self.hub.method,
            self.hub.buffer,
            self.hub.epoch,
            self.last_sent,
        )
    }

    /// The next event of the feed, if one is ready.
    fn poll_feed(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Envelope<T>, tonic::Status>>> {
        match &mut self.feed {
            Feed::Plain {
                next,
                floor,
                batch,
                id,
                registered,
                filter,
                scanned,
                progress,
            } => {
                let mut passed_over = 0;
                let event = loop {
                    let event = match batch.pop_front() {
                        Some(event) => event,
                        None => {
                            match self
                                .hub
                                .fetch(next, *floor, batch, (*id, registered), cx.waker())
                            {
                                Fetched::Events { missed } => {
                                    self.missed += missed;
                                    match batch.pop_front() {
                                        Some(event) => event,
                                        // Everything asked for was gone: report it with what
                                        // follows (a heartbeat's cursor is past it too).
                                        None => {
                                            *scanned = (*scanned).max(*next - 1);
                                            progress.cursor.store(*scanned, Ordering::Relaxed);
                                            cx.waker().wake_by_ref();
                                            return Poll::Pending;
                                        }
                                    }
                                }
                                Fetched::Waiting => return Poll::Pending,
                                Fetched::End => return Poll::Ready(None),
                                Fetched::CutOff => return Poll::Ready(Some(Err(self.cut_off()))),
                            }
                        }
                    };
                    *scanned = event.sequence;
                    // For the admin status: a relaxed store, nothing else per event.
                    progress.cursor.store(event.sequence, Ordering::Relaxed);
                    match filter {
                        Some(filter) if !filter.matches(&event.bytes) => {
                            passed_over += 1;
                            // A long run of events filtered out yields to the other tasks.
                            if passed_over == PASS_OVER_BUDGET {
                                cx.waker().wake_by_ref();
                                return Poll::Pending;
                            }
                        }
                        _ => break event,
                    }
                };
                let envelope = self.envelope(event.bytes, event.sequence, None);
                Poll::Ready(Some(Ok(envelope)))
            }
            Feed::Member {
                deliveries,
                superseded,
                ..
            } => match deliveries.poll_recv(cx) {
                // The member came back on another stream, or left: this one is over.
                _ if superseded.load(Ordering::Acquire) => Poll::Ready(None),
                Poll::Ready(Some(delivery)) => {
                    let extra = self.hub.delivery_bytes(
                        delivery.delivery_count,
                        delivery.missed,
                        delivery.previous_epoch,
                    );
                    let envelope = self.envelope(
                        delivery.event.bytes.clone(),
                        delivery.event.sequence,
                        Some(extra),
                    );
                    Poll::Ready(Some(Ok(envelope)))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl Feed {
    /// For a plain stream with a filter: the last sequence it sent or passed over, which its
    /// heartbeats carry (a subscriber may resume after it). `None`: heartbeats carry the
    /// latest sequence published.
    fn resume_point(&self) -> Option<u64> {
        match self {
            Feed::Plain {
                filter: Some(_),
                scanned,
                ..
            } => Some(*scanned),
            _ => None,
        }
    }
}

impl<T> Stream for EventStream<T> {
    type Item = Result<Envelope<T>, tonic::Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match this.poll_feed(cx) {
            Poll::Ready(Some(item)) => {
                this.sent_since_tick = true;
                return Poll::Ready(Some(item));
            }
            Poll::Ready(None) => {
                this.done = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        if let Some((every, sleep)) = &mut this.heartbeat {
            while sleep.as_mut().poll(cx).is_ready() {
                sleep.as_mut().reset(Instant::now() + *every);
                if !std::mem::take(&mut this.sent_since_tick) {
                    // Idle for a whole period: a heartbeat (at most two periods after the last event).
                    let missed = std::mem::take(&mut this.missed);
                    let previous_epoch = std::mem::take(&mut this.previous_epoch);
                    let heartbeat = Envelope::encoded(
                        this.hub
                            .heartbeat_bytes(this.feed.resume_point(), missed, previous_epoch),
                        None,
                    );
                    return Poll::Ready(Some(Ok(heartbeat)));
                }
            }
        }
        Poll::Pending
    }
}

impl<T> Drop for EventStream<T> {
    fn drop(&mut self) {
        match &self.feed {
            Feed::Plain { id, registered, .. } => {
                if let Some(round) = registered {
                    self.hub.unregister(*id, *round);
                }
                self.hub.plain_stream_ended(*id);
            }
            Feed::Member {
                group,
                member,
                connection,
                ..
            } => self.hub.member_disconnected(group, member, *connection),
        }
    }
}
