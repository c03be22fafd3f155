//! How one stream's events are handled: the typed [`Handler`], and [`Handling`] around it
//! (its span and trace link, the concurrency permit, retries with backoff, dead letters).

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument;

use super::control::{Instance, Shared};
use super::event::{DeadLetter, Event, Gap, HandlerError};
use crate::backoff::Backoff;
use crate::telemetry::ObserverMetrics;
use crate::v1::EventMetadata;

/// The longest pause between two attempts of a handler: the pauses double from
/// [`ObserverOptions::handler_retries`](super::ObserverOptions::handler_retries)'s backoff up
/// to this, so that many attempts do not wait for days.
pub(crate) const LONGEST_RETRY_PAUSE: Duration = Duration::from_secs(30);

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

/// An event left unhandled because the observer stopped.
#[derive(Debug)]
pub(crate) struct Abandoned;

/// How one stream's events are handled: the handler, its retries and dead letters. Shared
/// with the tasks of keyed lanes.
pub(crate) struct Handling<T, H> {
    pub(crate) rpc: &'static str,
    pub(crate) handler: Arc<H>,
    pub(crate) event: PhantomData<fn() -> T>,
    pub(crate) instance: Arc<str>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) control: watch::Receiver<Instance>,
    pub(crate) metrics: ObserverMetrics,
}

impl<T, H> Handling<T, H>
where
    T: Send + Sync + 'static,
    H: Handler<T>,
{
    /// Reports the gap an event's metadata tells of, if any, to the gap callback.
    pub(crate) fn report_gap(&self, metadata: &EventMetadata) {
        if metadata.missed == 0 && metadata.previous_epoch == 0 {
            return;
        }
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

    /// Calls the handler, retrying with backoff; dead-letters the event after the last attempt.
    /// A stop during the backoff abandons the event: neither handled nor dead-lettered, so
    /// that whoever comes next (this observer resuming, or another group member) gets it.
    pub(crate) async fn handle(&self, event: Event<T>) -> Result<(), Abandoned> {
        if event.delivery_count() > 1 {
            self.metrics.redelivered.increment(1);
        }
        let metadata = event.metadata();
        if !crate::trace_context::traces_event(&metadata.traceparent) {
            return self.handle_with_retries(&event).await;
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
        let mut backoff = Backoff::exact(options.retry_backoff, LONGEST_RETRY_PAUSE);
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
