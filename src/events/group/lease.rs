//! A member's lease: how long a member whose stream ended keeps its unacknowledged events
//! (and its keys' turns) before they go to the rest of its group, and the timer that says so.
//!
//! The life of a lease: the member's stream ends ([`Groups::disconnect`](super::Groups::disconnect))
//! and its lease starts; the member comes back (`join` cancels it), leaves (`acknowledge`
//! with `leave`), or the timer fires and [`Groups::lease_ran_out`](super::Groups::lease_ran_out)
//! gives its events back. Timers whose member was dropped, or whose publisher closed, are
//! cancelled; one that fires late for a connection that is no longer the member's does
//! nothing.

use std::time::Duration;

use tokio::task::AbortHandle;
use tokio::time::Instant;

#[derive(Debug)]
pub(super) struct Lease {
    pub(super) length: Duration,
    /// Running while the member is away: one per member, however often it reconnects.
    timer: Timer,
}

impl Lease {
    pub(super) fn new(length: Duration) -> Self {
        Self {
            length,
            timer: Timer::default(),
        }
    }

    /// Starts the lease: `ran_out` runs when it has passed, unless it is cancelled first.
    /// Returns false when there is nothing to wait for (a zero lease, or no runtime to time
    /// it): the lease has run out already.
    pub(super) fn start(&mut self, ran_out: impl FnOnce() + Send + 'static) -> bool {
        self.timer.cancel();
        !self.length.is_zero() && self.timer.start(Instant::now() + self.length, ran_out)
    }

    /// Stops the timer, if it runs: the member came back, left, or the publisher closed.
    pub(super) fn cancel(&mut self) {
        self.timer.cancel();
    }
}

/// A task that calls something at a deadline, unless cancelled (or dropped) first.
#[derive(Debug, Default)]
pub(super) struct Timer(Option<AbortHandle>);

impl Timer {
    /// Calls `then` at `deadline`, cancelling what was set before. Returns false, calling
    /// nothing, when there is no runtime to time it.
    pub(super) fn start(
        &mut self,
        deadline: Instant,
        then: impl FnOnce() + Send + 'static,
    ) -> bool {
        self.cancel();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let timer = runtime.spawn(async move {
            tokio::time::sleep_until(deadline).await;
            then();
        });
        self.0 = Some(timer.abort_handle());
        true
    }

    /// Whether it is set and has not fired yet.
    pub(super) fn is_set(&self) -> bool {
        self.0.as_ref().is_some_and(|timer| !timer.is_finished())
    }

    /// Forgets the timer without stopping it: called from what it called.
    pub(super) fn fired(&mut self) {
        self.0 = None;
    }

    pub(super) fn cancel(&mut self) {
        if let Some(timer) = self.0.take() {
            timer.abort();
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.cancel();
    }
}
