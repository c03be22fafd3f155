//! [`EventStream`]: the server stream of one subscriber, from the retained backlog into live
//! events, with heartbeats when idle.

use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::Stream;

use super::hub::{Hub, Start, Stored};
use super::wire::{encode_metadata_field, Envelope};
use crate::v1::EventMetadata;

/// The events of one subscription, as the server stream of an event RPC.
///
/// Yields each event's shared bytes (no per-subscriber encoding), ends with
/// `RESOURCE_EXHAUSTED` when the subscriber falls further behind than its buffer.
pub struct EventStream<T> {
    hub: Arc<Hub>,
    backlog: VecDeque<Arc<Stored>>,
    live: BroadcastStream<Arc<Stored>>,
    /// Missed events to report with the first thing sent.
    missed: u64,
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

impl<T> std::fmt::Debug for EventStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("method", &self.hub.method)
            .field("last_sent", &self.last_sent)
            .finish_non_exhaustive()
    }
}

impl<T> EventStream<T> {
    pub(crate) fn new(hub: Arc<Hub>, start: Start, heartbeat: Option<Duration>) -> Self {
        Self {
            backlog: start.backlog,
            live: BroadcastStream::new(start.live),
            missed: start.missed,
            heartbeat: heartbeat.map(|every| (every, Box::pin(tokio::time::sleep(every)))),
            sent_since_tick: false,
            last_sent: 0,
            done: false,
            hub,
            _event: PhantomData,
        }
    }

    fn envelope(&mut self, event: &Stored) -> Envelope<T> {
        self.last_sent = event.sequence;
        let extra = (self.missed > 0).then(|| {
            let missed = std::mem::take(&mut self.missed);
            encode_metadata_field(&EventMetadata {
                missed,
                ..EventMetadata::default()
            })
        });
        Envelope::encoded(event.bytes.clone(), extra)
    }

    fn cut_off(&mut self) -> tonic::Status {
        self.done = true;
        self.hub.cut_off.fetch_add(1, Ordering::Relaxed);
        tonic::Status::resource_exhausted(format!(
            "subscriber fell more than {} events behind on {} and was cut off; resubscribe with \
             after = (epoch {:#x}, sequence {}) to resume without loss",
            self.hub.buffer, self.hub.method, self.hub.epoch, self.last_sent
        ))
    }
}

impl<T> Stream for EventStream<T> {
    type Item = Result<Envelope<T>, tonic::Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let next = match this.backlog.pop_front() {
            Some(event) => Some(event),
            None => loop {
                match Pin::new(&mut this.live).poll_next(cx) {
                    // Already sent from the backlog.
                    Poll::Ready(Some(Ok(event))) if event.sequence <= this.last_sent => continue,
                    Poll::Ready(Some(Ok(event))) => break Some(event),
                    Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(_)))) => {
                        return Poll::Ready(Some(Err(this.cut_off())));
                    }
                    Poll::Ready(None) => {
                        this.done = true;
                        return Poll::Ready(None);
                    }
                    Poll::Pending => break None,
                }
            },
        };
        if let Some(event) = next {
            this.sent_since_tick = true;
            let envelope = this.envelope(&event);
            return Poll::Ready(Some(Ok(envelope)));
        }
        if let Some((every, sleep)) = &mut this.heartbeat {
            while sleep.as_mut().poll(cx).is_ready() {
                sleep.as_mut().reset(Instant::now() + *every);
                if !std::mem::take(&mut this.sent_since_tick) {
                    // Idle for a whole period: a heartbeat (at most two periods after the last event).
                    let missed = std::mem::take(&mut this.missed);
                    let heartbeat = Envelope::encoded(this.hub.heartbeat_bytes(missed), None);
                    return Poll::Ready(Some(Ok(heartbeat)));
                }
            }
        }
        Poll::Pending
    }
}
