//! One subscription: one event RPC on one producer instance, from connect to stop. The
//! [`InstanceStream`] subscribes through its [`Source`], reads until the stream ends, breaks,
//! goes quiet or the observer stops, and resubscribes after the last event handled.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::Endpoint;

use super::book::Claim;
use super::control::{Instance, Shared};
use super::event::{Event, Gap};
use super::handling::{Abandoned, Handler, Handling};
use super::lanes::{Finished, LaneSet};
use super::membership::Membership;
use super::metrics::{LagSample, StreamMetrics};
use super::subscribe::{Events, Remote, Source, Subscribed};
use super::wakeups::{Next, Wakeups};
use crate::backoff::Backoff;
use crate::v1::{Acknowledgement, Cursor, EventMetadata, Subscribe};

/// A subscription to one event RPC, without its event type: spawns one task per instance.
pub(crate) trait Subscription: Send + Sync {
    fn spawn(
        &self,
        instance: String,
        endpoint: Endpoint,
        shared: Arc<Shared>,
        control: watch::Receiver<Instance>,
    ) -> tokio::task::JoinHandle<()>;
}

pub(crate) struct Typed<T, H> {
    pub(crate) rpc: &'static str,
    pub(crate) handler: Arc<H>,
    pub(crate) event: PhantomData<fn() -> T>,
    /// Whether the event RPC declares a key: its events may then go to keyed lanes.
    pub(crate) keyed: bool,
}

impl<T, H> Subscription for Typed<T, H>
where
    T: Message + Default + Clone + Send + Sync + 'static,
    H: Handler<T>,
{
    fn spawn(
        &self,
        instance: String,
        endpoint: Endpoint,
        shared: Arc<Shared>,
        control: watch::Receiver<Instance>,
    ) -> tokio::task::JoinHandle<()> {
        let source = Remote {
            rpc: self.rpc,
            endpoint,
            metadata: shared.options.metadata.clone(),
            connect_timeout: shared.options.connect_timeout,
        };
        let stream = InstanceStream::new(self, instance.into(), Arc::new(source), shared, control);
        tokio::spawn(stream.run())
    }
}

pub(crate) struct InstanceStream<T, H> {
    rpc: &'static str,
    handling: Arc<Handling<T, H>>,
    /// Whether the event RPC declares a key.
    keyed: bool,
    /// Shared with every event from this instance, so no event copies it.
    instance: Arc<str>,
    /// Tells this stream apart from the others of the observer in the book.
    id: u64,
    source: Arc<dyn Source<T>>,
    shared: Arc<Shared>,
    control: watch::Receiver<Instance>,
    /// After the last event handled.
    cursor: Option<Cursor>,
    /// Whether a consumer group member's subscription went through once.
    joined: bool,
    metrics: StreamMetrics,
}

/// Why a stream ended.
pub(crate) enum Ended {
    Stopped,
    /// Stopped (or out of grace), and left the consumer group.
    Left,
    /// Resubscribe now (cut off for falling behind, the stream went quiet, or the book knows a
    /// better cursor).
    Resubscribe,
    /// Resubscribe after a pause.
    Failed(String),
    /// Another stream reads this producer (reachable at another address too).
    Duplicate,
}

/// How a stream's reading ended.
enum Outcome {
    Stop(Stop),
    End(Ended),
}

/// Why a stream stops being read though it still works.
enum Stop {
    /// The observer stops (or a handler was abandoned because it does).
    Stopped,
    /// Gone from discovery, and the grace to read what the producer still sends is over.
    GraceOver,
}

impl<T, H> InstanceStream<T, H>
where
    T: Message + Default + Clone + Send + Sync + 'static,
    H: Handler<T>,
{
    pub(crate) fn new(
        typed: &Typed<T, H>,
        instance: Arc<str>,
        source: Arc<dyn Source<T>>,
        shared: Arc<Shared>,
        control: watch::Receiver<Instance>,
    ) -> Self {
        static STREAMS: AtomicU64 = AtomicU64::new(1);
        let metrics = StreamMetrics::new(typed.rpc);
        let handling = Arc::new(Handling {
            rpc: typed.rpc,
            handler: typed.handler.clone(),
            event: PhantomData,
            instance: instance.clone(),
            shared: shared.clone(),
            control: control.clone(),
            metrics: metrics.clone(),
        });
        Self {
            rpc: typed.rpc,
            handling,
            keyed: typed.keyed,
            instance,
            id: STREAMS.fetch_add(1, Ordering::Relaxed),
            source,
            shared,
            control,
            cursor: None,
            joined: false,
            metrics,
        }
    }

    pub(crate) async fn run(mut self) {
        let options = self.shared.options.clone();
        let mut backoff = Backoff::new(options.reconnect_backoff, options.reconnect_backoff_max);
        loop {
            let retired = match *self.control.borrow() {
                Instance::Active => false,
                Instance::Retired(until) => Instant::now() >= until,
                Instance::Stopped => break,
            };
            if retired {
                return;
            }
            let ended = self.subscribe_once().await;
            let retired = matches!(*self.control.borrow(), Instance::Retired(_));
            match ended {
                Ended::Left => return,
                Ended::Stopped => break,
                // Cut off while the producer drains: what it still holds is ours to read.
                Ended::Resubscribe => backoff.reset(),
                // Gone from discovery, and the stream is over: never subscribe again.
                Ended::Failed(_) | Ended::Duplicate if retired => return,
                Ended::Duplicate => {
                    if self.wait_for_release().await {
                        break;
                    }
                }
                Ended::Failed(error) => {
                    let pause = backoff.next_pause();
                    tracing::debug!(instance = %self.instance, rpc = self.rpc, %error, ?pause, "subscription failed; retrying");
                    if self.sleep_unless_told(pause).await {
                        break;
                    }
                }
            }
        }
        // Stopped between streams: a member that joined leaves over a new connection, so that
        // its unacknowledged events go to the others at once rather than after its lease.
        if let (Some(group), true) = (&options.group, self.joined) {
            let member = self.acknowledgement(group);
            self.source.leave(member, self.cursor).await;
        }
    }

    /// This observer's name in the consumer group on this producer instance: one per
    /// instance, so that an instance reachable at two addresses sees two members, not one
    /// member whose streams keep taking over from each other.
    fn member_name(&self) -> String {
        format!("{}@{}", self.shared.member, self.instance)
    }

    /// An acknowledgement of this stream's group member, to fill in.
    fn acknowledgement(&self, group: &str) -> Acknowledgement {
        Acknowledgement {
            rpc: self.rpc.to_owned(),
            group: group.to_owned(),
            member: self.member_name(),
            ..Acknowledgement::default()
        }
    }

    fn plain(&self) -> bool {
        self.shared.options.group.is_none()
    }

    /// Sleeps; returns whether the observer stopped meanwhile. A change of the instance's
    /// state (retired, back in discovery) ends the pause early.
    async fn sleep_unless_told(&mut self, pause: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = self.control.changed() => {}
        }
        *self.control.borrow() == Instance::Stopped
    }

    /// Waits until the stream that reads this producer lets go (or the instance's state
    /// changes); returns whether the observer stopped meanwhile.
    async fn wait_for_release(&mut self) -> bool {
        let book = &self.shared.book;
        tokio::select! {
            () = book.released() => {}
            _ = self.control.changed() => {}
            // In case the release came between the claim and this wait.
            () = tokio::time::sleep(self.shared.options.heartbeat) => {}
        }
        *self.control.borrow() == Instance::Stopped
    }

    /// Subscribes, after the cursor the book holds for this address.
    async fn subscribe(&mut self) -> Result<Subscribed<T>, Ended> {
        let options = &self.shared.options;
        if self.plain() {
            if self
                .shared
                .book
                .read_elsewhere(self.rpc, &self.instance, self.id)
            {
                return Err(Ended::Duplicate);
            }
            self.cursor = self.shared.book.resume_after(self.rpc, &self.instance);
        }
        // A group member's cursor names an event in delivery order, which a rejoin can change:
        // sent once, so that a later subscription cannot acknowledge an event delivered anew
        // since (at worst, what it handled comes again).
        let after = if self.plain() {
            self.cursor
        } else {
            self.cursor.take()
        };
        let request = Subscribe {
            after,
            start: options.start as i32,
            heartbeat_interval_ms: u32::try_from(options.heartbeat.as_millis()).unwrap_or(u32::MAX),
            group: options.group.clone().unwrap_or_default(),
            member: options
                .group
                .as_ref()
                .map(|_| self.member_name())
                .unwrap_or_default(),
            lease_ms: u32::try_from(options.member_lease.as_millis()).unwrap_or(u32::MAX),
            max_unacknowledged: options.max_unacknowledged,
        };
        let member = options
            .group
            .as_ref()
            .map(|group| self.acknowledgement(group));
        let mut control = self.control.clone();
        tokio::select! {
            subscribed = self.source.subscribe(request, member) => subscribed.map_err(Ended::Failed),
            _ = control.wait_for(|state| *state == Instance::Stopped) => Err(Ended::Stopped),
        }
    }

    async fn subscribe_once(&mut self) -> Ended {
        let subscribed = match self.subscribe().await {
            Ok(subscribed) => subscribed,
            Err(ended) => return ended,
        };
        let claimed = match (self.plain(), subscribed.epoch) {
            (true, Some(epoch)) => {
                let claim = self.shared.book.claim(
                    self.rpc,
                    &self.instance,
                    epoch,
                    self.id,
                    self.cursor,
                    subscribed.start_after,
                );
                match claim {
                    Claim::Read { after } => {
                        self.cursor = after;
                        Some(epoch)
                    }
                    Claim::Duplicate => return Ended::Duplicate,
                    Claim::Resubscribe => return Ended::Resubscribe,
                }
            }
            _ => None,
        };
        tracing::debug!(instance = %self.instance, rpc = self.rpc, cursor = ?self.cursor, "subscribed");
        let ended = self.read(subscribed.events, subscribed.membership).await;
        match (claimed, self.cursor) {
            (Some(epoch), handled) => {
                self.shared.book.release(self.rpc, epoch, self.id, handled);
            }
            (None, Some(handled)) if self.plain() => {
                self.shared.book.record(self.rpc, &self.instance, handled);
            }
            _ => {}
        }
        ended
    }

    /// Reads the stream until it ends, breaks, goes quiet, or the observer stops.
    async fn read(&mut self, mut events: Events<T>, membership: Option<Membership>) -> Ended {
        if membership.is_some() {
            // The subscription acknowledged everything up to the cursor. From here the cursor
            // is the last event handled on this stream: events come in delivery order, and an
            // older cursor could name an event delivered again later, acknowledging the events
            // delivered before it unhandled.
            self.joined = true;
            self.cursor = None;
        }
        // A stream silent for three heartbeat periods is dead. Checked by a ticking timer, not
        // a timeout per message.
        let quiet_limit = self.shared.options.heartbeat * 3;
        let mut wakeups = Wakeups::new(self.control.clone(), quiet_limit);
        let mut heard = false;
        let mut lag = LagSample::default();
        let mut lanes = self.lanes();
        let outcome = loop {
            let lag_gauge = &self.metrics.lag;
            let next = wakeups
                .next(lanes.as_mut(), &mut events, || lag.record(lag_gauge))
                .await;
            let next = match next {
                Next::Message(message) => message,
                Next::Finished(finished) => {
                    let Some(lanes) = lanes.as_mut() else {
                        continue;
                    };
                    match self.lane_finished(lanes, finished, membership.as_ref(), &mut lag) {
                        Ok(()) => continue,
                        Err(Abandoned) => break Outcome::Stop(Stop::Stopped),
                    }
                }
                Next::Check => {
                    // A stream held back by busy lanes is not silent.
                    let busy = lanes.as_ref().is_some_and(|lanes| !lanes.has_room());
                    if !std::mem::take(&mut heard) && !busy {
                        tracing::warn!(instance = %self.instance, rpc = self.rpc, "no event or heartbeat for {quiet_limit:?}; resubscribing");
                        break Outcome::End(Ended::Resubscribe);
                    }
                    continue;
                }
                Next::Stopped => break Outcome::Stop(Stop::Stopped),
                Next::GraceOver => break Outcome::Stop(Stop::GraceOver),
            };
            heard = true;
            match next {
                Some(Ok((message, metadata))) => {
                    let received = match &mut lanes {
                        Some(lanes) => {
                            self.hand_to_lane(lanes, message, metadata);
                            Ok(None)
                        }
                        None => self.receive(message, metadata, &mut lag).await,
                    };
                    match received {
                        Ok(Some(cursor)) => {
                            if let Some(membership) = &membership {
                                membership.handled(cursor);
                            }
                        }
                        Ok(None) => {}
                        Err(Abandoned) => break Outcome::Stop(Stop::Stopped),
                    }
                }
                None => break Outcome::End(Ended::Failed("the stream ended".into())),
                Some(Err(status)) if status.code() == tonic::Code::ResourceExhausted => {
                    tracing::info!(instance = %self.instance, rpc = self.rpc, "cut off for falling behind; resuming from the cursor");
                    break Outcome::End(Ended::Resubscribe);
                }
                Some(Err(status)) => {
                    break Outcome::End(Ended::Failed(format!(
                        "{:?}: {}",
                        status.code(),
                        status.message()
                    )))
                }
            }
        };
        // Handlings under way end first (one retrying stops when the observer does), so that
        // what they handled is acknowledged and the cursor is past it.
        if let Some(lanes) = &mut lanes {
            lanes.lanes.drop_waiting();
            while let Some(finished) = lanes.running.join_next().await {
                let _ = self.lane_finished(lanes, finished, membership.as_ref(), &mut lag);
            }
        }
        let stop = match outcome {
            Outcome::End(ended) => {
                // Events handled alone are not covered by the cursor the member resubscribes
                // with: acknowledged now, if the producer still answers, or they come again.
                if let Some(membership) = membership {
                    let timeout = self
                        .shared
                        .options
                        .connect_timeout
                        .min(Duration::from_secs(1));
                    Box::pin(membership.flush(timeout)).await;
                }
                return ended;
            }
            Outcome::Stop(stop) => stop,
        };
        // The handler in flight has finished: acknowledge it, and let the group have the rest
        // at once.
        if let Some(membership) = membership {
            Box::pin(membership.leave(self.shared.options.connect_timeout)).await;
            return Ended::Left;
        }
        match stop {
            Stop::GraceOver => {
                tracing::info!(instance = %self.instance, rpc = self.rpc, "gone from discovery, and its stream still open after the grace; letting go");
                Ended::Failed("gone from discovery".into())
            }
            Stop::Stopped => Ended::Stopped,
        }
    }

    /// Keyed lanes for this stream, when events have keys and several handlers may run.
    fn lanes(&self) -> Option<LaneSet<T>> {
        match self.shared.options.max_concurrent_handlers {
            Some(limit) if self.keyed && limit > 1 => Some(LaneSet::new(limit)),
            _ => None,
        }
    }

    /// Hands an event to its key's lane, and starts it if it may start now.
    fn hand_to_lane(&mut self, lanes: &mut LaneSet<T>, message: T, metadata: EventMetadata) {
        if !self.noticed(&metadata) {
            return;
        }
        let key = crate::keys::hash(&metadata.key);
        let cursor = Cursor {
            epoch: metadata.epoch,
            sequence: metadata.sequence,
        };
        let event = Event::new(message, metadata, self.instance.clone());
        if let Some((position, event)) = lanes.lanes.arrive(key, cursor, event) {
            lanes.start(&self.handling, key, position, event);
        }
    }

    /// A lane's handling ended: the cursor moves past what was handled before it, the group
    /// is told, and the events it held up start.
    fn lane_finished(
        &mut self,
        lanes: &mut LaneSet<T>,
        finished: Result<Finished, tokio::task::JoinError>,
        membership: Option<&Membership>,
        lag: &mut LagSample,
    ) -> Result<(), Abandoned> {
        let finished = match finished {
            Ok(finished) => finished,
            // As an inline handler's panic would.
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => return Err(Abandoned),
        };
        finished.outcome?;
        lag.handled(finished.published_at, &self.metrics.lag);
        let (moved, start) = lanes.lanes.finished(finished.key, finished.position);
        if let Some(cursor) = moved {
            self.cursor = Some(cursor);
            if let (None, Some(store)) = (membership, &self.shared.options.cursor_store) {
                store.handled(self.rpc, cursor);
            }
        }
        if let Some(membership) = membership {
            membership.handled_alone(finished.cursor);
        }
        for (key, position, event) in start {
            lanes.start(&self.handling, key, position, event);
        }
        Ok(())
    }

    /// Reports a gap the event's metadata tells of; returns whether it is an event to handle
    /// (not a heartbeat, nor one handled already).
    fn noticed(&mut self, metadata: &EventMetadata) -> bool {
        if metadata.missed > 0 || metadata.previous_epoch != 0 {
            self.metrics.missed.increment(metadata.missed);
            self.metrics.gaps.increment(1);
            let gap = Gap {
                instance: self.instance.to_string(),
                rpc: self.rpc,
                missed: metadata.missed,
                epoch: metadata.epoch,
                previous_epoch: (metadata.previous_epoch != 0).then_some(metadata.previous_epoch),
            };
            (self.shared.options.on_gap)(&gap);
        }
        if metadata.heartbeat {
            return false;
        }
        // In a group, events come in delivery order, which is not sequence order once one is
        // redelivered.
        let in_order = self.plain();
        // Already handled (cannot happen with a well-behaved publisher).
        !(in_order
            && self
                .cursor
                .as_ref()
                .is_some_and(|c| c.epoch == metadata.epoch && c.sequence >= metadata.sequence))
    }

    /// Handles one event (or heartbeat); returns the event's cursor once handled.
    async fn receive(
        &mut self,
        message: T,
        metadata: EventMetadata,
        lag: &mut LagSample,
    ) -> Result<Option<Cursor>, Abandoned> {
        if !self.noticed(&metadata) {
            return Ok(None);
        }
        let cursor = Cursor {
            epoch: metadata.epoch,
            sequence: metadata.sequence,
        };
        let published_at = metadata.published_at_unix_micros;
        self.handling
            .handle(Event::new(message, metadata, self.instance.clone()))
            .await?;
        lag.handled(published_at, &self.metrics.lag);
        // In a group, the cursor is the last event handled, for the producer to acknowledge
        // when the member resubscribes.
        self.cursor = Some(cursor);
        if self.plain() {
            if let Some(store) = &self.shared.options.cursor_store {
                store.handled(self.rpc, cursor);
            }
        }
        Ok(Some(cursor))
    }
}
