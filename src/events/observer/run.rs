//! One subscription: one event RPC on one producer instance, from connect to stop.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use prost::Message;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::Stream;
use tonic::transport::Endpoint;
use tracing::Instrument;

use super::book::{Book, Claim};
use super::event::{DeadLetter, Event, Gap, HandlerError};
use super::lanes::{Lanes, Position};
use super::membership::{self, Membership};
use super::options::ObserverOptions;
use crate::backoff::Backoff;
use crate::events::wire::{parse_epoch_header, EventCodec, EPOCH_HEADER, START_AFTER_HEADER};
use crate::events::Envelope;
use crate::v1::{Acknowledgement, Cursor, EventMetadata, Subscribe};

/// A typed handler: what the generated observer registers per event RPC. Kept in its own
/// type (not boxed), so that calling it allocates nothing per event.
pub(crate) trait Handler<T>: Send + Sync + 'static {
    type Handled: Future<Output = Result<(), HandlerError>> + Send + 'static;

    fn handle(&self, event: Event<T>) -> Self::Handled;
}

impl<T, F, Fut> Handler<T> for F
where
    F: Fn(Event<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    type Handled = Fut;

    fn handle(&self, event: Event<T>) -> Fut {
        self(event)
    }
}

/// What one subscription needs, shared by its instances.
pub(crate) struct Shared {
    pub(crate) options: ObserverOptions,
    pub(crate) handlers: Option<Arc<Semaphore>>,
    /// This observer's name in its consumer group, the same on every producer instance.
    pub(crate) member: String,
    /// Where this observer stands with each producer (plain subscriptions).
    pub(crate) book: Book,
}

/// What the supervisor says of one producer instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Instance {
    /// In discovery: subscribe, and resubscribe whenever the stream ends.
    Active,
    /// Gone from discovery: read the stream until the producer ends it or it breaks, but at
    /// most until then; never subscribe again.
    Retired(Instant),
    /// The observer stops.
    Stopped,
}

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
        static STREAMS: AtomicU64 = AtomicU64::new(1);
        let metrics = StreamMetrics::new(self.rpc);
        let instance: Arc<str> = instance.into();
        let handling = Arc::new(Handling {
            rpc: self.rpc,
            handler: self.handler.clone(),
            event: PhantomData,
            instance: instance.clone(),
            shared: shared.clone(),
            control: control.clone(),
            metrics: metrics.clone(),
        });
        let stream = InstanceStream {
            rpc: self.rpc,
            handling,
            keyed: self.keyed,
            instance,
            id: STREAMS.fetch_add(1, Ordering::Relaxed),
            endpoint,
            shared,
            control,
            cursor: None,
            joined: false,
            metrics,
        };
        tokio::spawn(stream.run())
    }
}

/// Metric handles of one instance stream, made once (see [`crate::telemetry`]).
#[derive(Clone)]
struct StreamMetrics {
    handled: metrics::Counter,
    dead_letters: metrics::Counter,
    missed: metrics::Counter,
    redelivered: metrics::Counter,
    gaps: metrics::Counter,
    lag: metrics::Gauge,
}

impl StreamMetrics {
    fn new(rpc: &'static str) -> Self {
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

struct InstanceStream<T, H> {
    rpc: &'static str,
    handling: Arc<Handling<T, H>>,
    /// Whether the event RPC declares a key.
    keyed: bool,
    /// Shared with every event from this instance, so no event copies it.
    instance: Arc<str>,
    /// Tells this stream apart from the others of the observer in the [`Book`].
    id: u64,
    endpoint: Endpoint,
    shared: Arc<Shared>,
    control: watch::Receiver<Instance>,
    /// After the last event handled.
    cursor: Option<Cursor>,
    /// Whether a consumer group member's subscription went through once.
    joined: bool,
    metrics: StreamMetrics,
}

/// What woke a stream's loop.
enum Next<T> {
    Message(Option<Result<Envelope<T>, tonic::Status>>),
    /// A keyed lane's handling ended.
    Finished(Result<Finished, tokio::task::JoinError>),
    /// Time to check that the stream is not silent.
    Check,
    Stopped,
    /// Gone from discovery, and the grace to read what the producer still sends is over.
    GraceOver,
}

/// The lag gauge, set from the last event handled when the stream catches up, and every
/// [`LagSample::EVERY`] events while it does not: reading the clock per event costs more than a
/// small event.
#[derive(Default)]
struct LagSample {
    /// When the last event handled was published (unix micros), until recorded.
    published_at: Option<i64>,
    since_recorded: u32,
}

impl LagSample {
    const EVERY: u32 = 256;

    fn handled(&mut self, published_at_unix_micros: i64, gauge: &metrics::Gauge) {
        self.published_at = Some(published_at_unix_micros);
        self.since_recorded += 1;
        if self.since_recorded >= Self::EVERY {
            self.record(gauge);
        }
    }

    fn record(&mut self, gauge: &metrics::Gauge) {
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

/// An event left unhandled because the observer stopped.
struct Abandoned;

/// Why a stream ended.
enum Ended {
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

/// A subscription the producer accepted.
struct Subscribed<T> {
    stream: tonic::Streaming<Envelope<T>>,
    /// The producer's epoch, when it said.
    epoch: Option<u64>,
    start_after: Option<u64>,
    membership: Option<Membership>,
}

impl<T, H> InstanceStream<T, H>
where
    T: Message + Default + Clone + Send + Sync + 'static,
    H: Handler<T>,
{
    async fn run(mut self) {
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
            if let Ok(Ok(channel)) =
                tokio::time::timeout(options.connect_timeout, self.endpoint.connect()).await
            {
                membership::leave(
                    channel,
                    self.acknowledgement(group),
                    &options.metadata,
                    self.cursor,
                    options.connect_timeout,
                )
                .await;
            }
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

    /// Connects and subscribes, after the cursor the book holds for this address.
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
        let mut control = self.control.clone();
        let connected = tokio::select! {
            connected = Box::pin(self.endpoint.connect()) => connected,
            _ = control.wait_for(|state| *state == Instance::Stopped) => return Err(Ended::Stopped),
        };
        let channel = connected.map_err(|error| Ended::Failed(crate::text::error_chain(&error)))?;
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
        let membership = options.group.as_ref().map(|group| {
            Membership::start(
                channel.clone(),
                self.acknowledgement(group),
                options.metadata.clone(),
            )
        });
        let mut grpc = tonic::client::Grpc::new(channel);
        let path = http::uri::PathAndQuery::from_static(self.rpc);
        let codec = EventCodec::<T>::default();
        let subscribed = Box::pin(async {
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let mut request = tonic::Request::new(request);
            options.metadata.add_to(request.metadata_mut().as_mut());
            grpc.server_streaming(request, path, codec).await
        });
        let response = tokio::select! {
            response = subscribed => response.map_err(|status| Ended::Failed(format!("{:?}: {}", status.code(), status.message())))?,
            _ = control.wait_for(|state| *state == Instance::Stopped) => return Err(Ended::Stopped),
        };
        let header = |name| {
            response
                .metadata()
                .get(name)
                .and_then(|value| value.to_str().ok())
        };
        let epoch = header(EPOCH_HEADER).and_then(parse_epoch_header);
        let start_after = header(START_AFTER_HEADER).and_then(|value| value.parse().ok());
        Ok(Subscribed {
            stream: response.into_inner(),
            epoch,
            start_after,
            membership,
        })
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
        let ended = self.read(subscribed.stream, subscribed.membership).await;
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
    async fn read(
        &mut self,
        mut stream: tonic::Streaming<Envelope<T>>,
        membership: Option<Membership>,
    ) -> Ended {
        let options = &self.shared.options;
        if membership.is_some() {
            // The subscription acknowledged everything up to the cursor. From here the cursor
            // is the last event handled on this stream: events come in delivery order, and an
            // older cursor could name an event delivered again later, acknowledging the events
            // delivered before it unhandled.
            self.joined = true;
            self.cursor = None;
        }

        // A stream silent for three heartbeat periods is dead. Checked by a ticking timer, not
        // a timeout per message; and while messages keep coming, neither the timer nor the
        // control signal's waiter is polled: per event, either would touch the timer wheel or
        // take a lock. The control signal is then checked with one atomic load.
        let quiet_limit = options.heartbeat * 3;
        let mut check =
            tokio::time::interval_at(tokio::time::Instant::now() + quiet_limit, quiet_limit);
        // Not polled while busy: after a long burst, one late check, then a period again (a
        // burst of missed checks would find the stream silent at the second).
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = false;
        let mut told = WatchStream::from_changes(self.control.clone());
        // Armed once the instance leaves discovery: the grace to read what it still sends.
        let mut grace: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let mut lag = LagSample::default();
        let mut lanes = self.lanes();
        let outcome = loop {
            let next = std::future::poll_fn(|cx| {
                if self.control.has_changed().unwrap_or(true) {
                    match *self.control.borrow_and_update() {
                        Instance::Stopped => return Poll::Ready(Next::Stopped),
                        Instance::Retired(until) => {
                            if grace.is_none() {
                                grace = Some(Box::pin(tokio::time::sleep_until(until)));
                            }
                        }
                        Instance::Active => grace = None,
                    }
                }
                // Only a retired stream has a grace, checked before its messages: a producer
                // that keeps publishing must not hold it past the grace.
                if grace
                    .as_mut()
                    .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
                {
                    return Poll::Ready(Next::GraceOver);
                }
                let mut room = true;
                if let Some(lanes) = &mut lanes {
                    if let Poll::Ready(Some(finished)) = lanes.running.poll_join_next(cx) {
                        return Poll::Ready(Next::Finished(finished));
                    }
                    room = lanes.has_room();
                }
                if room {
                    if let Poll::Ready(message) = Pin::new(&mut stream).poll_next(cx) {
                        return Poll::Ready(Next::Message(message));
                    }
                    // Caught up: the lag of the last event handled is the lag now.
                    lag.record(&self.metrics.lag);
                }
                if Pin::new(&mut told).poll_next(cx).is_ready() {
                    // Looked at at the top, on the next turn.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                if check.poll_tick(cx).is_ready() {
                    return Poll::Ready(Next::Check);
                }
                Poll::Pending
            })
            .await;
            let next = match next {
                Next::Message(message) => message,
                Next::Finished(finished) => {
                    let lanes = lanes.as_mut().expect("only lanes finish handlings");
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
                Some(Ok(envelope)) => {
                    let Some((message, metadata)) = envelope.into_parts() else {
                        continue;
                    };
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
            Some(limit) if self.keyed && limit > 1 => Some(LaneSet {
                lanes: Lanes::new(limit),
                running: JoinSet::new(),
                most_held: (limit * 16).max(256),
            }),
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
        let in_order = self.shared.options.group.is_none();
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

/// A stream's keyed lanes and the handlings they run.
struct LaneSet<T> {
    lanes: Lanes<Event<T>>,
    running: JoinSet<Finished>,
    /// The most events held (being handled, waiting, or handled after one that is not):
    /// past it, the stream is not read.
    most_held: usize,
}

impl<T: Message + Default + Clone + Send + Sync + 'static> LaneSet<T> {
    fn has_room(&self) -> bool {
        self.lanes.held() < self.most_held
    }

    fn start<H: Handler<T>>(
        &mut self,
        handling: &Arc<Handling<T, H>>,
        key: u64,
        position: Position,
        event: Event<T>,
    ) {
        let handling = handling.clone();
        self.running.spawn(async move {
            let cursor = event.cursor();
            let published_at = event.metadata().published_at_unix_micros;
            let outcome = handling.handle(event).await;
            Finished {
                key,
                position,
                cursor,
                published_at,
                outcome,
            }
        });
    }
}

/// One lane's handling of one event, ended.
struct Finished {
    key: u64,
    position: Position,
    cursor: Cursor,
    published_at: i64,
    outcome: Result<(), Abandoned>,
}

/// How one stream's events are handled: the handler, its retries and dead letters. Shared
/// with the tasks of keyed lanes.
struct Handling<T, H> {
    rpc: &'static str,
    handler: Arc<H>,
    event: PhantomData<fn() -> T>,
    instance: Arc<str>,
    shared: Arc<Shared>,
    control: watch::Receiver<Instance>,
    metrics: StreamMetrics,
}

impl<T, H> Handling<T, H>
where
    T: Message + Default + Clone + Send + Sync + 'static,
    H: Handler<T>,
{
    /// Calls the handler, retrying with backoff; dead-letters the event after the last attempt.
    /// A stop during the backoff abandons the event: neither handled nor dead-lettered, so
    /// that whoever comes next (this observer resuming, or another group member) gets it.
    async fn handle(&self, event: Event<T>) -> Result<(), Abandoned> {
        if event.delivery_count() > 1 {
            self.metrics.redelivered.increment(1);
        }
        let span = tracing::debug_span!(
            "meshless.event",
            rpc = self.rpc,
            instance = %self.instance,
            epoch = event.metadata().epoch,
            sequence = event.metadata().sequence,
            delivery_count = event.delivery_count(),
        );
        // A link to the publisher's span (`opentelemetry` feature): one publish is handled by
        // many observers, maybe much later, so it is not this span's parent.
        let metadata = event.metadata();
        crate::trace_context::link(&span, &metadata.traceparent, &metadata.tracestate);
        if span.is_disabled() {
            self.handle_with_retries(&event).await
        } else {
            self.handle_with_retries(&event).instrument(span).await
        }
    }

    async fn handle_with_retries(&self, event: &Event<T>) -> Result<(), Abandoned> {
        let _permit = match &self.shared.handlers {
            Some(limit) => limit.clone().acquire_owned().await.ok(),
            None => None,
        };
        match self.handler.handle(event.clone()).await {
            Ok(()) => {
                self.metrics.handled.increment(1);
                Ok(())
            }
            // The rare path, kept out of this future, which every event makes.
            Err(error) => Box::pin(self.after_failure(event, error)).await,
        }
    }

    /// Retries a handler that failed on its first attempt, with backoff, then dead-letters the
    /// event.
    async fn after_failure(
        &self,
        event: &Event<T>,
        mut error: HandlerError,
    ) -> Result<(), Abandoned> {
        let options = &self.shared.options;
        // Handler retries double without jitter: they are one observer's own.
        let mut backoff = Backoff::exact(options.retry_backoff, Duration::MAX);
        let mut attempt = 1;
        loop {
            if attempt >= options.handler_attempts {
                tracing::warn!(instance = %self.instance, rpc = self.rpc, attempts = attempt, %error, "handler failed on every attempt; event dead-lettered");
                let dead = DeadLetter {
                    instance: self.instance.to_string(),
                    rpc: self.rpc,
                    cursor: event.cursor(),
                    attempts: attempt,
                    error: error.to_string(),
                };
                self.metrics.dead_letters.increment(1);
                (options.on_dead_letter)(&dead);
                return Ok(());
            }
            tracing::debug!(instance = %self.instance, rpc = self.rpc, attempt, %error, "handler failed; retrying");
            let mut control = self.control.clone();
            tokio::select! {
                () = tokio::time::sleep(backoff.next_pause()) => {}
                _ = control.wait_for(|state| *state == Instance::Stopped) => {
                    tracing::debug!(instance = %self.instance, rpc = self.rpc, "stopped while retrying a handler; the event is left for whoever comes next");
                    return Err(Abandoned);
                }
            }
            attempt += 1;
            match self.handler.handle(event.clone()).await {
                Ok(()) => {
                    self.metrics.handled.increment(1);
                    return Ok(());
                }
                Err(failed) => error = failed,
            }
        }
    }
}
