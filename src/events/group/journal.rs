//! What the groups tell a log that keeps them: the changes to journal (groups created and
//! forgotten, events acknowledged), the marks of how far events may have been handed out, and
//! the groups formed again from what a log kept.

use std::collections::{HashSet, VecDeque};

use super::member::Unacked;
use crate::events::log::{EventLog, GroupChange, SavedGroup, Stored};

/// How far ahead of the events handed out a log that keeps groups records that they may have
/// been: after a crash, at most this many events go out marked as redeliveries that were not.
const MARK_AHEAD: u64 = 16;

/// The changes of the groups not yet handed to the log, when the log keeps groups.
#[derive(Debug, Default)]
pub(super) struct Journal {
    on: bool,
    changes: Vec<GroupChange>,
    /// Acknowledgements in `changes`.
    acked: usize,
}

/// Acknowledgements that wait for the next change of a group before a publish hands them to
/// the log itself.
const MAX_PENDING_ACKS: usize = 1024;

impl Journal {
    /// Records changes from now on.
    pub(super) fn start(&mut self) {
        self.on = true;
    }

    pub(super) fn push(&mut self, change: impl FnOnce() -> GroupChange) {
        if !self.on {
            return;
        }
        let change = change();
        if let GroupChange::Acked { sequences, .. } = &change {
            self.acked += sequences.len();
        }
        // Acknowledgements of one group in a row are one change (events a filter passes over
        // come one at a time).
        if let (
            Some(GroupChange::Acked {
                group: last,
                sequences: acked,
            }),
            GroupChange::Acked { group, sequences },
        ) = (self.changes.last_mut(), &change)
        {
            if last == group {
                acked.extend(sequences);
                return;
            }
        }
        self.changes.push(change);
    }

    /// Whether so many acknowledgements wait that they should go to the log now, rather than
    /// with the next change of a group.
    pub(super) fn is_full(&self) -> bool {
        self.acked >= MAX_PENDING_ACKS
    }

    /// The changes since the last call, for the log.
    pub(super) fn take(&mut self) -> Vec<GroupChange> {
        self.acked = 0;
        std::mem::take(&mut self.changes)
    }

    /// Hands the changes so far to the log: before events go out that only the
    /// acknowledgements just recorded let go, so that after a crash the log never shows
    /// them as not yet handed out while the acknowledgement before them is missing.
    pub(super) fn write(&mut self, log: &mut dyn EventLog) {
        if !self.changes.is_empty() {
            log.record_groups(&self.take());
        }
    }
}

/// How far a group's events may have been handed out, as the log knows.
#[derive(Debug, Default)]
pub(super) struct HandedOut {
    through: u64,
}

impl HandedOut {
    pub(super) fn restored(through: u64) -> Self {
        Self { through }
    }

    /// Before event `sequence` is first handed to a member, makes sure a log that keeps
    /// groups has recorded that it may have been: after a restart it then goes out again
    /// marked as a redelivery. Recorded [`MARK_AHEAD`] events ahead, so that one record covers
    /// many deliveries.
    pub(super) fn announce(&mut self, group: &str, sequence: u64, log: &mut dyn EventLog) {
        if sequence > self.through && log.keeps_groups() {
            self.through = sequence + MARK_AHEAD;
            log.record_groups(&[GroupChange::HandedOut {
                group: group.to_owned(),
                through: self.through,
            }]);
        }
    }
}

/// What a group a log kept is owed when it is formed again: see [`restore`].
#[derive(Debug)]
pub(super) struct Restored {
    pub(super) owed: VecDeque<Unacked>,
    pub(super) missed: u64,
    pub(super) marks: HandedOut,
    /// The next event of the log it has not handed out.
    pub(super) next: u64,
}

/// What a group a log kept is owed, to form it again without members: the events of the log
/// from its start that it did not acknowledge (those no longer retained are reported missed).
/// Those it may have handed out already go out again marked as redeliveries: up to the
/// handed-out mark, each event without a key, and of each key only its first not
/// acknowledged, since a key's next event goes out only once the one before is acknowledged
/// (the later ones waited for their turn).
pub(super) fn restore(
    name: &str,
    saved: SavedGroup,
    log: &dyn EventLog,
    scratch: &mut VecDeque<Stored>,
) -> Restored {
    let from = saved.start.max(log.oldest());
    let mut owed = VecDeque::new();
    let mut keys_seen = HashSet::new();
    let mark_every_owed = log.may_lose_recent_group_changes();
    let mut next = from;
    while next <= log.latest() {
        let read = log.read(next, 256, scratch);
        if read.next == next {
            break;
        }
        next = read.next;
        for event in scratch.drain(..) {
            if !saved.acked.contains(&event.sequence) {
                let mut unacked = Unacked::new(event);
                let first_of_key = unacked.event.key.is_none_or(|key| keys_seen.insert(key));
                if unacked.event.sequence <= saved.handed_out && (first_of_key || mark_every_owed) {
                    unacked.deliveries = 1;
                }
                owed.push_back(unacked);
            }
        }
    }
    tracing::info!(group = %crate::text::shown(name), owed = owed.len(), "consumer group restored from the event log");
    Restored {
        owed,
        missed: saved.missed + (from - saved.start.min(from)),
        marks: HandedOut::restored(saved.handed_out),
        next: log.latest() + 1,
    }
}
