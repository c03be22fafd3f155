//! Reading one subscription's stream: the [`Reader`] hands each event to the handler (one at a
//! time, or through keyed lanes), reports gaps, moves the stream's [`Progress`], takes a silent
//! stream for dead, and when the stream ends or the observer stops, finishes what its lanes
//! hold.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::watch;

use super::control::{Instance, Shared, Typed};
use super::event::Event;
use super::handling::{Abandoned, Handler, Handling};
use super::lanes::LaneSet;
use super::membership::Membership;
use super::metrics::LagSample;
use super::progress::Progress;
use super::subscribe::Events;
use super::wakeups::{Next, Wakeups};
use crate::telemetry::ObserverMetrics;
use crate::v1::{Cursor, EventMetadata};

/// What reads one producer instance's event RPC, one stream after another.
pub(crate) struct Reader<T, H> {
    pub(crate) rpc: &'static str,
    /// Shared with every event from this instance, so no event copies it.
    pub(crate) instance: Arc<str>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) control: watch::Receiver<Instance>,
    /// After the last event handled, and what was handled past it.
    pub(crate) progress: Progress,
    handling: Arc<Handling<T, H>>,
    /// Whether the event RPC declares a key.
    keyed: bool,
    /// What the subscription asks the producer to filter by.
    pub(crate) filter: Option<crate::v1::Filter>,
    /// Whether the producer of the current stream applies it: only then do its heartbeats
    /// carry a cursor past the events filtered out.
    pub(crate) producer_filters: bool,
    metrics: ObserverMetrics,
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

impl<T, H> Reader<T, H>
where
    T: Message + Default + Clone + Send + Sync + 'static,
    H: Handler<T>,
{
    pub(crate) fn new(
        typed: &Typed<T, H>,
        instance: Arc<str>,
        shared: Arc<Shared>,
        control: watch::Receiver<Instance>,
    ) -> Self {
        let store = shared
            .options
            .cursor_store
            .clone()
            .filter(|_| shared.options.group.is_none());
        let metrics = ObserverMetrics::new(typed.rpc);
        let filter = shared.filters.get(typed.rpc).cloned();
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
            instance,
            shared,
            control,
            progress: Progress::new(typed.rpc, store),
            handling,
            keyed: typed.keyed,
            filter,
            producer_filters: false,
            metrics,
        }
    }

    /// Whether this is a plain observer (not a consumer group member).
    pub(crate) fn plain(&self) -> bool {
        self.shared.options.group.is_none()
    }

    /// Reads the stream until it ends, breaks, goes quiet, or the observer stops.
    pub(crate) async fn read(
        &mut self,
        mut events: Events<T>,
        membership: Option<Membership>,
    ) -> Ended {
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
                    let finished = lanes.finished(
                        &self.handling,
                        finished,
                        &mut self.progress,
                        membership.as_ref(),
                        &mut lag,
                    );
                    match finished {
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
                Some(Ok((_, metadata))) if metadata.heartbeat && self.producer_filters => {
                    self.noticed(&metadata);
                    let idle = lanes.as_ref().is_none_or(|lanes| lanes.lanes.held() == 0);
                    if idle && self.plain() {
                        self.passed_over(&metadata);
                    }
                }
                Some(Ok((message, metadata))) => {
                    let received = match &mut lanes {
                        Some(lanes) => {
                            if self.noticed(&metadata) {
                                let event =
                                    Event::new(message, metadata, self.instance.clone(), self.rpc);
                                lanes.arrive(&self.handling, &mut self.progress, event);
                            }
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
        if let Some(lanes) = &mut lanes {
            // A plain observer handles what waits in its lanes: it was delivered, and there
            // may be no next stream (a producer gone from discovery is not subscribed again).
            let handle_waiting =
                membership.is_none() && !matches!(outcome, Outcome::Stop(Stop::Stopped));
            let control = self.control.clone();
            let finishing = lanes.finish(
                &self.handling,
                handle_waiting,
                &mut self.progress,
                membership.as_ref(),
                &mut lag,
                control,
            );
            Box::pin(finishing).await;
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

    /// Reports a gap the event's metadata tells of; returns whether it is an event to handle
    /// (not a heartbeat, nor one handled already).
    fn noticed(&mut self, metadata: &EventMetadata) -> bool {
        self.handling.report_gap(metadata);
        if metadata.heartbeat {
            return false;
        }
        // In a group, events come in delivery order, which is not sequence order once one is
        // redelivered.
        let in_order = self.plain();
        // Already handled (cannot happen with a well-behaved publisher).
        !(in_order
            && self
                .progress
                .cursor
                .is_some_and(|c| c.epoch == metadata.epoch && c.sequence >= metadata.sequence))
    }

    /// A heartbeat to a subscriber with a filter carries the last sequence the producer sent
    /// or filtered out: with every event received handled, the cursor moves there, so that a
    /// resubscription does not go over the events filtered out again.
    fn passed_over(&mut self, heartbeat: &EventMetadata) {
        let cursor = Cursor {
            epoch: heartbeat.epoch,
            sequence: heartbeat.sequence,
        };
        let behind = self
            .progress
            .cursor
            .is_none_or(|c| c.epoch != cursor.epoch || c.sequence < cursor.sequence);
        if behind && cursor.epoch != 0 {
            self.progress.moved(cursor);
        }
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
        if self.progress.handled_ahead(cursor) {
            // Handled by an earlier stream, and so is everything before it, in order.
            self.progress.moved(cursor);
            return Ok(None);
        }
        let published_at = metadata.published_at_unix_micros;
        self.handling
            .handle(Event::new(
                message,
                metadata,
                self.instance.clone(),
                self.rpc,
            ))
            .await?;
        lag.handled(published_at, &self.metrics.lag);
        // In a group, the cursor is the last event handled, for the producer to acknowledge
        // when the member resubscribes.
        self.progress.moved(cursor);
        Ok(Some(cursor))
    }
}
