//! One subscription: one event RPC on one producer instance, from connect to stop.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use prost::Message;
use tokio::sync::{watch, Semaphore};
use tokio_stream::Stream;
use tonic::transport::Endpoint;
use tracing::Instrument;

use super::event::{DeadLetter, Event, Gap, HandlerError};
use super::membership::{self, Membership};
use super::options::ObserverOptions;
use crate::events::wire::EventCodec;
use crate::events::Envelope;
use crate::v1::{Acknowledgement, Cursor, EventMetadata, Subscribe};

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A typed handler, erased: what the generated observer registers per event RPC.
pub(crate) type Handler<T> =
    Arc<dyn Fn(Event<T>) -> BoxFuture<Result<(), HandlerError>> + Send + Sync>;

/// What one subscription needs, shared by its instances.
pub(crate) struct Shared {
    pub(crate) options: ObserverOptions,
    pub(crate) handlers: Option<Arc<Semaphore>>,
    /// This observer's name in its consumer group, the same on every producer instance.
    pub(crate) member: String,
}

/// A subscription to one event RPC, without its event type: spawns one task per instance.
pub(crate) trait Subscription: Send + Sync {
    fn spawn(
        &self,
        instance: String,
        endpoint: Endpoint,
        shared: Arc<Shared>,
        stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()>;
}

pub(crate) struct Typed<T> {
    pub(crate) rpc: &'static str,
    pub(crate) handler: Handler<T>,
}

impl<T> Subscription for Typed<T>
where
    T: Message + Default + Clone + Send + Sync + 'static,
{
    fn spawn(
        &self,
        instance: String,
        endpoint: Endpoint,
        shared: Arc<Shared>,
        stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let metrics = StreamMetrics::new(self.rpc, &instance);
        let stream = InstanceStream {
            rpc: self.rpc,
            handler: self.handler.clone(),
            instance: instance.into(),
            endpoint,
            shared,
            stop,
            cursor: None,
            joined: false,
            metrics,
        };
        tokio::spawn(stream.run())
    }
}

/// Metric handles of one instance stream, made once (see [`crate::telemetry`]).
struct StreamMetrics {
    handled: metrics::Counter,
    dead_letters: metrics::Counter,
    missed: metrics::Counter,
    redelivered: metrics::Counter,
    lag: metrics::Gauge,
}

impl StreamMetrics {
    fn new(rpc: &'static str, instance: &str) -> Self {
        Self {
            handled: metrics::counter!("meshless_observer_events_total", "rpc" => rpc, "outcome" => "handled"),
            dead_letters: metrics::counter!("meshless_observer_events_total", "rpc" => rpc, "outcome" => "dead_letter"),
            missed: metrics::counter!("meshless_observer_missed_events_total", "rpc" => rpc),
            redelivered: metrics::counter!("meshless_observer_redelivered_events_total", "rpc" => rpc),
            lag: metrics::gauge!("meshless_observer_lag_seconds", "rpc" => rpc, "instance" => instance.to_owned()),
        }
    }
}

struct InstanceStream<T> {
    rpc: &'static str,
    handler: Handler<T>,
    /// Shared with every event from this instance, so no event copies it.
    instance: Arc<str>,
    endpoint: Endpoint,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    /// After the last event handled.
    cursor: Option<Cursor>,
    /// Whether a consumer group member's subscription went through once.
    joined: bool,
    metrics: StreamMetrics,
}

/// What woke a stream's loop.
enum Next<T> {
    Message(Option<Result<Envelope<T>, tonic::Status>>),
    /// Time to check that the stream is not silent.
    Check,
    Stopped,
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
        let published =
            SystemTime::UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0));
        if let Ok(lag) = SystemTime::now().duration_since(published) {
            gauge.set(lag.as_secs_f64());
        }
    }
}

/// Why a stream ended.
enum Ended {
    Stopped,
    /// Stopped, and left the consumer group.
    Left,
    /// Resubscribe now (cut off for falling behind, or the stream went quiet).
    Resubscribe,
    /// Resubscribe after a pause.
    Failed(String),
}

impl<T> InstanceStream<T>
where
    T: Message + Default + Clone + Send + Sync + 'static,
{
    async fn run(mut self) {
        let options = self.shared.options.clone();
        let mut backoff = options.reconnect_backoff;
        loop {
            if self.stopping() {
                break;
            }
            match self.subscribe_once().await {
                Ended::Left => return,
                Ended::Stopped => break,
                Ended::Resubscribe => backoff = options.reconnect_backoff,
                Ended::Failed(error) => {
                    tracing::debug!(instance = %self.instance, rpc = self.rpc, %error, ?backoff, "subscription failed; retrying");
                    let jitter = backoff.mul_f64(fastrand::f64() * 0.2);
                    if self.sleep_unless_stopped(backoff + jitter).await {
                        break;
                    }
                    backoff = (backoff * 2).min(options.reconnect_backoff_max);
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

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps; returns whether the observer stopped meanwhile.
    async fn sleep_unless_stopped(&mut self, pause: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(pause) => self.stopping(),
            _ = self.stop.changed() => true,
        }
    }

    async fn subscribe_once(&mut self) -> Ended {
        let options = &self.shared.options;
        let connected = tokio::select! {
            connected = Box::pin(self.endpoint.connect()) => connected,
            _ = self.stop.changed() => return Ended::Stopped,
        };
        let channel = match connected {
            Ok(channel) => channel,
            Err(error) => return Ended::Failed(crate::balance::error_chain(&error)),
        };
        let request = Subscribe {
            after: self.cursor,
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
        let membership = options
            .group
            .as_ref()
            .map(|group| Membership::start(channel.clone(), self.acknowledgement(group)));
        let mut grpc = tonic::client::Grpc::new(channel);
        let path = http::uri::PathAndQuery::from_static(self.rpc);
        let codec = EventCodec::<T>::default();
        // Boxed, as the connect above and the leave below: run once per stream, they would
        // otherwise make the state every event goes through several times larger.
        let subscribed = Box::pin(async {
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            grpc.server_streaming(tonic::Request::new(request), path, codec)
                .await
        });
        let mut stream = tokio::select! {
            response = subscribed => match response {
                Ok(response) => response.into_inner(),
                Err(status) => return Ended::Failed(format!("{:?}: {}", status.code(), status.message())),
            },
            _ = self.stop.changed() => return Ended::Stopped,
        };
        tracing::debug!(instance = %self.instance, rpc = self.rpc, cursor = ?self.cursor, "subscribed");
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
        // stop signal's waiter is polled: per event, either would touch the timer wheel or take
        // a lock. The stop signal is then checked with one atomic load.
        let quiet_limit = options.heartbeat * 3;
        let mut check =
            tokio::time::interval_at(tokio::time::Instant::now() + quiet_limit, quiet_limit);
        // Not polled while busy: after a long burst, one late check, then a period again (a
        // burst of missed checks would find the stream silent at the second).
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = false;
        let mut stop = self.stop.clone();
        let stopped = stop.wait_for(|stop| *stop);
        tokio::pin!(stopped);
        let mut lag = LagSample::default();
        loop {
            let next = std::future::poll_fn(|cx| {
                if self.stop_signalled() {
                    return Poll::Ready(Next::Stopped);
                }
                if let Poll::Ready(message) = Pin::new(&mut stream).poll_next(cx) {
                    return Poll::Ready(Next::Message(message));
                }
                // Caught up: the lag of the last event handled is the lag now.
                lag.record(&self.metrics.lag);
                if stopped.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Next::Stopped);
                }
                if check.poll_tick(cx).is_ready() {
                    return Poll::Ready(Next::Check);
                }
                Poll::Pending
            })
            .await;
            let next = match next {
                Next::Message(message) => message,
                Next::Check => {
                    if !std::mem::take(&mut heard) {
                        tracing::warn!(instance = %self.instance, rpc = self.rpc, "no event or heartbeat for {quiet_limit:?}; resubscribing");
                        return Ended::Resubscribe;
                    }
                    continue;
                }
                Next::Stopped => {
                    // The handler in flight has finished: acknowledge it, and let the group
                    // have the rest at once.
                    if let Some(membership) = membership {
                        Box::pin(membership.leave(self.shared.options.connect_timeout)).await;
                        return Ended::Left;
                    }
                    return Ended::Stopped;
                }
            };
            heard = true;
            match next {
                Some(Ok(envelope)) => {
                    if let Some((message, metadata)) = envelope.into_parts() {
                        if let Some(cursor) = self.receive(message, metadata, &mut lag).await {
                            if let Some(membership) = &membership {
                                membership.handled(cursor);
                            }
                        }
                    }
                }
                None => return Ended::Failed("the stream ended".into()),
                Some(Err(status)) if status.code() == tonic::Code::ResourceExhausted => {
                    tracing::info!(instance = %self.instance, rpc = self.rpc, "cut off for falling behind; resuming from the cursor");
                    return Ended::Resubscribe;
                }
                Some(Err(status)) => {
                    return Ended::Failed(format!("{:?}: {}", status.code(), status.message()))
                }
            }
        }
    }

    /// Whether the observer was told to stop (or dropped), with one atomic load while not.
    fn stop_signalled(&self) -> bool {
        match self.stop.has_changed() {
            Ok(false) => false,
            Ok(true) => self.stopping(),
            Err(_closed) => true,
        }
    }

    /// Handles one event (or heartbeat); returns the event's cursor once handled.
    async fn receive(
        &mut self,
        message: T,
        metadata: EventMetadata,
        lag: &mut LagSample,
    ) -> Option<Cursor> {
        if metadata.missed > 0 {
            self.metrics.missed.increment(metadata.missed);
            let gap = Gap {
                instance: self.instance.to_string(),
                rpc: self.rpc,
                missed: metadata.missed,
                epoch: metadata.epoch,
            };
            (self.shared.options.on_gap)(&gap);
        }
        if metadata.heartbeat {
            return None;
        }
        let cursor = Cursor {
            epoch: metadata.epoch,
            sequence: metadata.sequence,
        };
        // In a group, events come in delivery order, which is not sequence order once one is
        // redelivered; the cursor is then the last event handled, for the producer to
        // acknowledge when the member resubscribes.
        let in_order = self.shared.options.group.is_none();
        if in_order
            && self
                .cursor
                .as_ref()
                .is_some_and(|c| c.epoch == cursor.epoch && c.sequence >= cursor.sequence)
        {
            // Already handled (cannot happen with a well-behaved publisher).
            return None;
        }
        let published_at = metadata.published_at_unix_micros;
        self.handle(Event::new(message, metadata, self.instance.clone()))
            .await;
        lag.handled(published_at, &self.metrics.lag);
        self.cursor = Some(cursor);
        Some(cursor)
    }

    /// Calls the handler, retrying with backoff; dead-letters the event after the last attempt.
    async fn handle(&self, event: Event<T>) {
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
        self.handle_with_retries(&event).instrument(span).await;
    }

    async fn handle_with_retries(&self, event: &Event<T>) {
        let options = &self.shared.options;
        let _permit = match &self.shared.handlers {
            Some(limit) => limit.clone().acquire_owned().await.ok(),
            None => None,
        };
        let mut backoff = options.retry_backoff;
        let mut attempt = 1;
        loop {
            match (self.handler)(event.clone()).await {
                Ok(()) => {
                    self.metrics.handled.increment(1);
                    return;
                }
                Err(error) if attempt >= options.handler_attempts => {
                    let dead = DeadLetter {
                        instance: self.instance.to_string(),
                        rpc: self.rpc,
                        cursor: event.cursor(),
                        attempts: attempt,
                        error: error.to_string(),
                    };
                    self.metrics.dead_letters.increment(1);
                    (options.on_dead_letter)(&dead);
                    return;
                }
                Err(error) => {
                    tracing::debug!(instance = %self.instance, rpc = self.rpc, attempt, %error, "handler failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
            }
        }
    }
}
