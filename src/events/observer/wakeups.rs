//! [`Wakeups`]: what wakes a stream's read loop, in the order it is looked at: the observer's
//! control signal, the grace of a retired instance, a keyed lane's handling that ended, the
//! next message, and the check that the stream is not silent.
//!
//! While messages keep coming, neither the check's timer nor the control signal's waiter is
//! polled: per event, either would touch the timer wheel or take a lock. The control signal
//! is then checked with one atomic load.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior, Sleep};
use tokio_stream::wrappers::WatchStream;
use tokio_stream::Stream;

use super::control::Instance;
use super::lanes::{Finished, LaneSet};
use super::subscribe::Events;
use crate::v1::EventMetadata;

/// What woke a stream's loop.
pub(crate) enum Next<T> {
    /// A message, or the end of the stream (`None`).
    Message(Option<Result<(T, EventMetadata), tonic::Status>>),
    /// A keyed lane's handling ended.
    Finished(Result<Finished, tokio::task::JoinError>),
    /// Time to check that the stream is not silent.
    Check,
    Stopped,
    /// Gone from discovery, and the grace to read what the producer still sends is over.
    GraceOver,
}

pub(crate) struct Wakeups {
    control: watch::Receiver<Instance>,
    told: WatchStream<Instance>,
    /// Armed once the instance leaves discovery: the grace to read what it still sends.
    grace: Option<Pin<Box<Sleep>>>,
    check: Interval,
}

impl Wakeups {
    /// Checks for silence every `quiet_limit`, the first time `quiet_limit` from now.
    pub(crate) fn new(control: watch::Receiver<Instance>, quiet_limit: Duration) -> Self {
        let mut check = tokio::time::interval_at(Instant::now() + quiet_limit, quiet_limit);
        // Not polled while busy: after a long burst, one late check, then a period again (a
        // burst of missed checks would find the stream silent at the second).
        check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            told: WatchStream::from_changes(control.clone()),
            control,
            grace: None,
            check,
        }
    }

    /// Waits for the next thing to do. The stream is read only while the lanes (if any) have
    /// room; `caught_up` is called when it has nothing more for now.
    pub(crate) async fn next<T>(
        &mut self,
        lanes: Option<&mut LaneSet<T>>,
        events: &mut Events<T>,
        caught_up: impl FnMut(),
    ) -> Next<T> {
        let mut lanes = lanes;
        let mut caught_up = caught_up;
        std::future::poll_fn(|cx| self.poll_next(cx, lanes.as_deref_mut(), events, &mut caught_up))
            .await
    }

    fn poll_next<T>(
        &mut self,
        cx: &mut Context<'_>,
        lanes: Option<&mut LaneSet<T>>,
        events: &mut Events<T>,
        caught_up: &mut impl FnMut(),
    ) -> Poll<Next<T>> {
        if self.control.has_changed().unwrap_or(true) {
            match *self.control.borrow_and_update() {
                Instance::Stopped => return Poll::Ready(Next::Stopped),
                Instance::Retired(until) => {
                    if self.grace.is_none() {
                        self.grace = Some(Box::pin(tokio::time::sleep_until(until)));
                    }
                }
                Instance::Active => self.grace = None,
            }
        }
        // Only a retired stream has a grace, checked before its messages: a producer that
        // keeps publishing must not hold it past the grace.
        if self
            .grace
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
        {
            return Poll::Ready(Next::GraceOver);
        }
        let mut room = true;
        if let Some(lanes) = lanes {
            if let Poll::Ready(Some(finished)) = lanes.running.poll_join_next(cx) {
                return Poll::Ready(Next::Finished(finished));
            }
            room = lanes.has_room();
        }
        if room {
            if let Poll::Ready(message) = events.as_mut().poll_next(cx) {
                return Poll::Ready(Next::Message(message));
            }
            caught_up();
        }
        if Pin::new(&mut self.told).poll_next(cx).is_ready() {
            // Looked at at the top, on the next turn.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if self.check.poll_tick(cx).is_ready() {
            return Poll::Ready(Next::Check);
        }
        Poll::Pending
    }
}
