//! Groups without members: each keeps its place, and what it is owed, for [`IDLE_GROUP_TTL`]
//! for the next member to join; then a timer has it forgotten, whether or not other groups
//! come meanwhile.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::lease::Timer;

/// How long a group without members keeps its place (and its events) for the next member.
pub(crate) const IDLE_GROUP_TTL: Duration = Duration::from_secs(3600);

/// What the timer calls: the hub's sweep of the groups past their time.
pub(crate) type Sweep = Arc<dyn Fn() + Send + Sync>;

/// One timer for all the groups of an event RPC, set for the first of them to run out of
/// time.
#[derive(Default)]
pub(super) struct IdleClock {
    timer: Timer,
    sweep: Option<Sweep>,
    /// Whether a group may have lost its last member since the timer was set.
    changed: bool,
}

impl std::fmt::Debug for IdleClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleClock")
            .field("timer", &self.timer)
            .field("changed", &self.changed)
            .finish_non_exhaustive()
    }
}

impl IdleClock {
    pub(super) fn sweep_with(&mut self, sweep: Sweep) {
        self.sweep = Some(sweep);
    }

    /// A group is without members now (new, restored, or its last member went).
    pub(super) fn went_idle(&mut self) {
        self.changed = true;
    }

    /// The timer fired: it is set again by the next [`keep`](Self::keep).
    pub(super) fn fired(&mut self) {
        self.timer.fired();
        self.changed = true;
    }

    /// Sets the timer for the group without members the longest, `earliest` (when it lost
    /// its last member), unless it is set already. Without a runtime to time it, tries again
    /// on the next call.
    pub(super) fn keep(&mut self, earliest: impl FnOnce() -> Option<Instant>) {
        if !self.changed || self.timer.is_set() {
            return;
        }
        let Some(sweep) = self.sweep.clone() else {
            return;
        };
        match earliest() {
            None => self.changed = false,
            Some(since) => {
                if self.timer.start(since + IDLE_GROUP_TTL, move || sweep()) {
                    self.changed = false;
                }
            }
        }
    }

    /// For shutdown: no timer outlives the publisher.
    pub(super) fn close(&mut self) {
        self.timer.cancel();
        self.sweep = None;
    }
}
