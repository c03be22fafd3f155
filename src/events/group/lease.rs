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

/// A member's lease when its `Subscribe` leaves `lease_ms` at 0.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(5);
/// The longest lease a member may ask for.
pub(crate) const MAX_LEASE: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub(super) struct Lease {
    pub(super) length: Duration,
    /// Running while the member is away: one per member, however often it reconnects.
    timer: Option<AbortHandle>,
}

impl Lease {
    pub(super) fn new(length: Duration) -> Self {
        Self {
            length,
            timer: None,
        }
    }

    /// Starts the lease: `ran_out` runs when it has passed, unless it is cancelled first.
    /// Returns false when there is nothing to wait for (a zero lease, or no runtime to time
    /// it): the lease has run out already.
    pub(super) fn start(&mut self, ran_out: impl FnOnce() + Send + 'static) -> bool {
        self.cancel();
        if self.length.is_zero() {
            return false;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let length = self.length;
        let timer = runtime.spawn(async move {
            tokio::time::sleep(length).await;
            ran_out();
        });
        self.timer = Some(timer.abort_handle());
        true
    }

    /// Stops the timer, if it runs: the member came back, left, or the publisher closed.
    pub(super) fn cancel(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.cancel();
    }
}
