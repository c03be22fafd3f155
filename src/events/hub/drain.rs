//! The drain of one event RPC, for shutdown: plain streams end once they have sent what was
//! published, consumer groups are waited for until they have acknowledged everything, then
//! everything closes.
//!
//! While draining, plain subscribers are not cut off for falling behind, and one that was
//! (just before) may subscribe again to read the rest: the drain counts its stream.

use std::sync::atomic::Ordering;

use super::Hub;
use crate::events::fanout;

impl Hub {
    /// Lets every plain subscriber's stream end once it has sent what was already published;
    /// consumer groups go on. The first step of a drain. Until [`close`](Self::close), plain
    /// subscribers may still subscribe (to resume from their cursor) and are not cut off.
    pub(crate) fn close_plain(&self) {
        let mut state = self.lock();
        state.live = false;
        state.draining = true;
        let woken = state.waiters.take();
        drop(state);
        fanout::wake(woken);
    }

    /// Ends every stream, group members' too, after what was already handed to it, refuses
    /// new subscriptions, and cancels lease timers: for shutdown. Publishing still works
    /// (events are retained).
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.live = false;
        state.closed = true;
        state.groups.close();
        let woken = state.waiters.take();
        drop(state);
        fanout::wake(woken);
    }

    /// Whether every group member has acknowledged, and every plain stream has ended: the
    /// second step of a drain, after [`close_plain`](Self::close_plain).
    pub(crate) fn drained(&self) -> bool {
        if self.plain_streams.load(Ordering::Acquire) != 0 {
            return false;
        }
        let state = self.lock();
        state.groups.settled(state.log.as_ref())
    }

    /// Waits until [`drained`](Self::drained), or `deadline`. Returns whether drained.
    pub(crate) async fn wait_drained(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.drained() {
                break;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                self.report_abandoned();
                return false;
            }
        }
        // Drained, unless a group was left without members with events still to deliver.
        self.report_abandoned()
    }

    /// Logs the groups left without any member while they still hold events, which are lost
    /// with this instance. Returns whether there are none.
    fn report_abandoned(&self) -> bool {
        let abandoned = {
            let state = self.lock();
            state.groups.abandoned(state.log.as_ref())
        };
        for (group, events) in &abandoned {
            tracing::warn!(rpc = %self.method, group, events, "consumer group without members; its events are lost with this instance");
        }
        abandoned.is_empty()
    }
}
