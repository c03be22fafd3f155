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

mod compact;
mod continued;
mod failure;
mod groups;

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

/// The last `retain` events, in memory, within the byte and age limits.
#[derive(Debug)]
pub(crate) struct MemoryLog {
    ring: VecDeque<Stored>,
    retain: usize,
    limits: Limits,
    /// The size of the events in the ring.
    bytes: u64,
    next: u64,
    /// The latest publish time of the events dropped from the ring; `None` when this log
    /// dropped none (it may still have been restored without the oldest events).
    dropped_through: Option<u64>,
    /// The latest event of every key past the window, for an event RPC with compaction.
    compaction: Option<Compaction>,
    /// Kept events dropped past the compaction's bound.
    dropped_past_bound: u64,
}

impl MemoryLog {
    #[cfg(test)]
    pub(crate) fn new(retain: usize) -> Self {
        Self::with_limits(retain, Limits::default())
    }

    pub(crate) fn with_limits(retain: usize, limits: Limits) -> Self {
        Self {
            ring: VecDeque::with_capacity(retain.min(4096)),
            retain,
            limits,
            bytes: 0,
            next: 1,
            dropped_through: None,
            compaction: limits.compact.map(Compaction::new),
            dropped_past_bound: 0,
        }
    }

    /// An event leaves the window: remembered as dropped, kept if it is the latest of its key
    /// and the log compacts.
    fn left(&mut self, event: Stored) {
        self.bytes -= event.bytes.len() as u64;
        self.dropped_through = self.dropped_through.max(Some(event.published_at));
        if let Some(compaction) = &mut self.compaction {
            self.dropped_past_bound += compaction.left(event);
        }
    }

    /// The compaction of the log, if it compacts.
    pub(crate) fn compaction(&self) -> Option<&Compaction> {
        self.compaction.as_ref()
    }

    /// Puts back an event kept past the window before a restart, the oldest first, before
    /// any other.
    pub(crate) fn restore_kept(&mut self, event: Stored) {
        if let Some(compaction) = &mut self.compaction {
            self.dropped_past_bound += compaction.restore(event);
        }
    }

    /// Drops the oldest events past the byte limit, and those older than the age limit at
    /// `now` (microseconds since the Unix epoch).
    fn trim(&mut self, now: u64) {
        let too_old = self.limits.max_age.map_or(0, |age| {
            now.saturating_sub(u64::try_from(age.as_micros()).unwrap_or(u64::MAX))
        });
        while let Some(front) = self.ring.front() {
            let over_bytes = self.limits.max_bytes.is_some_and(|max| self.bytes > max);
            if !over_bytes && front.published_at >= too_old {
                break;
            }
            if let Some(front) = self.ring.pop_front() {
                self.left(front);
            }
        }
    }

    /// Puts back an event read from disk, the oldest first, before any append.
    pub(crate) fn restore(&mut self, event: Stored) {
        self.next = event.sequence + 1;
        self.push(event);
    }

    /// The sequence the next event gets, after a restore.
    pub(crate) fn set_next(&mut self, next: u64) {
        self.next = next;
    }

    fn push(&mut self, event: Stored) {
        if let Some(compaction) = &mut self.compaction {
            compaction.entered(&event);
        }
        if self.retain == 0 {
            if let Some(compaction) = &mut self.compaction {
                self.dropped_past_bound += compaction.left(event);
            }
            return;
        }
        if self.ring.len() == self.retain {
            if let Some(dropped) = self.ring.pop_front() {
                self.left(dropped);
            }
        }
        let now = event.published_at;
        self.bytes += event.bytes.len() as u64;
        self.ring.push_back(event);
        if self.limits.max_bytes.is_some() || self.limits.max_age.is_some() {
            self.trim(now);
        }
    }
}

impl EventLog for MemoryLog {
    fn next_sequence(&self) -> u64 {
        self.next
    }

    fn oldest(&self) -> u64 {
        self.ring.front().map_or(self.next, |e| e.sequence)
    }

    fn append(&mut self, event: Stored) -> std::io::Result<()> {
        debug_assert_eq!(event.sequence, self.next);
        self.next = event.sequence + 1;
        self.push(event);
        Ok(())
    }

    fn expire(&mut self, now: u64) {
        if self.limits.max_age.is_some() {
            self.trim(now);
        }
    }

    fn since(&self, time: u64) -> (u64, bool) {
        // Not a binary search: publish times need not follow sequences (publishes at once on
        // several threads, rows of a database numbered in commit order).
        let at = self
            .ring
            .iter()
            .position(|event| event.published_at >= time)
            .unwrap_or(self.ring.len());
        let first = self.ring.get(at).map_or(self.next, |event| event.sequence);
        let lost = match self.dropped_through {
            Some(dropped) => dropped >= time,
            // Restored without its oldest events: they may be from after `time`.
            None => self.oldest() > 1 && at == 0,
        };
        (first, lost)
    }

    fn latest_per_key(&self) -> Vec<Stored> {
        let Some(compaction) = &self.compaction else {
            let mut seen = std::collections::HashSet::new();
            let mut latest: Vec<Stored> = (self.ring.iter().rev())
                .filter(|event| seen.insert(compact::key_of(event)))
                .cloned()
                .collect();
            latest.reverse();
            return latest;
        };
        let in_window = self.ring.iter().filter(|e| compaction.is_latest(e));
        compaction.kept().chain(in_window).cloned().collect()
    }

    fn compacts(&self) -> bool {
        self.compaction.is_some()
    }

    fn dropped_past_bound(&self) -> u64 {
        self.dropped_past_bound
    }

    fn compacted_keys(&self) -> u64 {
        self.compaction.as_ref().map_or(0, |c| c.len() as u64)
    }

    #[cfg(feature = "postgres")]
    fn kept_sequences(&self) -> Option<Vec<u64>> {
        self.compaction.as_ref().map(Compaction::kept_sequences)
    }

    fn read(&self, from: u64, max: usize, out: &mut VecDeque<Stored>) -> Read {
        let oldest = self.oldest();
        let mut from = from;
        let mut max = max;
        let mut missed = 0;
        if let Some(compaction) = self.compaction.as_ref().filter(|_| from < oldest) {
            // Kept events first: what is not kept between them was superseded, not missed,
            // unless dropped past the bound.
            let before = out.len();
            let next = compaction.read(from, max, out);
            let read = out.len() - before;
            if read == max {
                return Read {
                    missed: compaction.missed(from, next),
                    next,
                };
            }
            missed = compaction.missed(from, oldest);
            max -= read;
            from = oldest;
        }
        let first = from.max(oldest).min(self.next);
        let missed = missed + first - from.min(first);
        // Sequences in the ring are consecutive, so the position is arithmetic.
        let skip = usize::try_from(first - oldest).unwrap_or(usize::MAX);
        let taken = self.ring.iter().skip(skip).take(max);
        let before = out.len();
        out.extend(taken.cloned());
        Read {
            missed,
            next: first + (out.len() - before) as u64,
        }
    }
}

#[cfg(test)]
mod test;

#[cfg(test)]
mod compact_test;
