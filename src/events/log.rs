//! The event log of one event RPC on a publisher: sequencing, retention, and reads by cursor.
//!
//! This is the seam between the hub (fan-out, groups, drain) and where events are kept.
//! [`MemoryLog`] keeps the last `retain` events in a ring; every subscriber reads from it by
//! sequence, so a subscription costs a cursor, never a copy of the ring. The disk log
//! (`disk::DiskLog`) keeps them in files too, and reads from such a ring. With compaction by
//! key, the ring's events that leave it are kept while they are the latest of their key (see
//! [`Compaction`]): a reader from before the ring reads those after its cursor.

use std::collections::VecDeque;

use bytes::Bytes;

pub(crate) use compact::Compaction;
pub(crate) use continued::continued_cursor;
pub(crate) use failure::LastError;
pub(crate) use groups::{GroupChange, SavedGroup};
pub(crate) use memory::MemoryLog;

mod compact;
mod continued;
mod failure;
mod groups;
mod memory;

/// One published event, encoded once with its metadata, shared by every subscriber (a clone
/// shares the bytes).
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) sequence: u64,
    /// When it was published, in microseconds since the Unix epoch.
    pub(crate) published_at: u64,
    pub(crate) bytes: Bytes,
    /// The hash of the event's key, for an event RPC with keys.
    pub(crate) key: Option<u64>,
}

/// How much a log retains besides its count (`retain`): at most this many bytes of events,
/// and events no older than this.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Limits {
    pub(crate) max_bytes: Option<u64>,
    pub(crate) max_age: Option<std::time::Duration>,
    /// With compaction by key: at most this many events kept past the window (see
    /// [`Compaction`]).
    pub(crate) compact: Option<usize>,
}

/// What a read found: the events from the first retained sequence at or after the one asked
/// for, and how many asked-for events were no longer retained.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Read {
    /// Events between the requested sequence and the first one returned that are gone.
    pub(crate) missed: u64,
    /// The sequence to read from next time.
    pub(crate) next: u64,
}

/// Where a log keeps its events, as the admin status tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Storage<'a> {
    Memory,
    /// In files, in this folder (the event RPC's).
    Files(&'a std::path::Path),
    #[cfg(feature = "postgres")]
    Postgres,
}

impl Storage<'_> {
    /// Its name in the admin status: `memory`, `files` or `postgres`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Storage::Memory => "memory",
            Storage::Files(_) => "files",
            #[cfg(feature = "postgres")]
            Storage::Postgres => "postgres",
        }
    }
}

/// Where the events of one event RPC are kept.
pub(crate) trait EventLog: Send + 'static {
    /// The sequence the next event gets; the first event is 1.
    fn next_sequence(&self) -> u64;

    /// The oldest retained sequence; [`next_sequence`](Self::next_sequence) when none is.
    fn oldest(&self) -> u64;

    /// Appends an event whose sequence is [`next_sequence`](Self::next_sequence), dropping the
    /// oldest events beyond retention. On error the event is not in the log.
    fn append(&mut self, event: Stored) -> std::io::Result<()>;

    /// Appends events whose sequences follow [`next_sequence`](Self::next_sequence) in order,
    /// all or none: on error none of them is in the log. A log that writes does it in one
    /// write, and overrides this default, which is for logs whose `append` cannot fail (in
    /// memory).
    fn append_all(&mut self, events: &[Stored]) -> std::io::Result<()> {
        for event in events {
            self.append(event.clone())?;
        }
        Ok(())
    }

    /// Drops the events older than the log's age limit at `now` (microseconds since the Unix
    /// epoch), if it has one.
    fn expire(&mut self, _now: u64) {}

    /// Appends to `out` up to `max` events from sequence `from` on.
    fn read(&self, from: u64, max: usize, out: &mut VecDeque<Stored>) -> Read;

    /// Where a reader from `time` (microseconds since the Unix epoch) starts: the first
    /// retained event published at or after it ([`next_sequence`](Self::next_sequence) when
    /// none is), and whether events published at or after it may have left the log already.
    /// This default reads the log through; it cannot tell when dropped events were published.
    fn since(&self, time: u64) -> (u64, bool) {
        let oldest = self.oldest();
        let mut batch = VecDeque::new();
        let mut from = oldest;
        loop {
            let read = self.read(from, 1024, &mut batch);
            if let Some(found) = batch.iter().find(|event| event.published_at >= time) {
                return (found.sequence, oldest > 1 && found.sequence == oldest);
            }
            if batch.is_empty() {
                return (self.next_sequence(), oldest > 1 && from == oldest);
            }
            batch.clear();
            from = read.next;
        }
    }

    /// The event that is the latest of its key, of every key the log has, in sequence order:
    /// a reader that starts "latest per key" gets them, then what is published after
    /// [`latest`](Self::latest). Events without a key have the empty key. This default reads
    /// the retained events through (a log that compacts overrides it).
    fn latest_per_key(&self) -> Vec<Stored> {
        let mut all = VecDeque::new();
        let mut from = self.oldest();
        loop {
            let before = all.len();
            from = self.read(from, 1024, &mut all).next;
            if all.len() == before {
                break;
            }
        }
        let mut seen = std::collections::HashSet::new();
        let mut latest: Vec<Stored> = all
            .into_iter()
            .rev()
            .filter(|event| seen.insert(compact::key_of(event)))
            .collect();
        latest.reverse();
        latest
    }

    /// Whether the log keeps the latest event of every key past its window (then a reader
    /// from before the window reads the kept events after it, and misses only those dropped
    /// past the bound).
    fn compacts(&self) -> bool {
        false
    }

    /// How many events kept past the window were dropped past the bound, since the log was
    /// opened.
    fn dropped_past_bound(&self) -> u64 {
        0
    }

    /// With compaction by key: the sequences of the events kept past the window.
    #[cfg(feature = "postgres")]
    fn kept_sequences(&self) -> Option<Vec<u64>> {
        None
    }

    /// The latest sequence published; 0 before the first event.
    fn latest(&self) -> u64 {
        self.next_sequence() - 1
    }

    /// Where the log keeps its events.
    fn storage(&self) -> Storage<'_> {
        Storage::Memory
    }

    /// With compaction by key: how many events are kept past the window now.
    fn compacted_keys(&self) -> u64 {
        0
    }

    /// The last error the log met while it ran (see [`LastError`]), if any.
    fn last_error(&self) -> Option<String> {
        None
    }

    /// Whether the log keeps consumer groups (then the hub records their changes).
    fn keeps_groups(&self) -> bool {
        false
    }

    /// Records changes to consumer groups. A failure is the log's to report: the changes are
    /// in effect either way, and at worst events are delivered again after a restart.
    fn record_groups(&mut self, _changes: &[GroupChange]) {}

    /// The groups the log kept from before, by name, handed over once.
    fn take_saved_groups(&mut self) -> Vec<(String, SavedGroup)> {
        Vec::new()
    }

    /// Whether the group changes recorded last may be missing from the saved groups after a
    /// crash, in any order (a log that writes them in the background): then every event a
    /// restored group is owed up to its handed-out mark goes out again marked, not only the
    /// first of each key.
    fn may_lose_recent_group_changes(&self) -> bool {
        false
    }

    /// When this log's epoch continues `epoch` (a recovery kept that epoch's events up to a
    /// point, under the same sequences): the last event kept of it.
    fn continued(&self, _epoch: u64) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod test;

#[cfg(test)]
mod compact_test;
