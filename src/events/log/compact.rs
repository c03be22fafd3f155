//! [`Compaction`]: the latest event of every key, kept after it leaves a log's retained window
//! (an event RPC with `compact_by_key`), within a bound on how many are kept.
//!
//! An event that leaves the window is kept when it is still the latest of its key; a kept
//! event goes when a later event of its key is published (it is superseded, not lost). Past
//! the bound, the kept event published first goes: it is lost, and its sequence is listed so
//! that a reader from before it is told of it as missed.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::Stored;

/// The key compaction files an event under: its key's hash; an event without one (an empty
/// string or bytes key) has the empty key.
pub(crate) fn key_of(event: &Stored) -> u64 {
    event.key.unwrap_or_else(|| crate::keys::hash(&[]))
}

/// The latest event of every key, past the window.
#[derive(Debug, Clone)]
pub(crate) struct Compaction {
    /// At most this many events are kept past the window.
    max_kept: usize,
    /// The sequence of the latest event of every key whose latest event is in the window or
    /// kept.
    latest: HashMap<u64, u64>,
    /// The events kept past the window, by sequence.
    kept: BTreeMap<u64, Stored>,
    /// The size of the kept events.
    kept_bytes: u64,
    /// The sequences of events dropped past the bound, oldest first (at most `max_kept`).
    dropped: VecDeque<u64>,
    /// Events dropped past the bound that are no longer listed, and the last of them.
    unlisted: (u64, u64),
}

impl Compaction {
    pub(crate) fn new(max_kept: usize) -> Self {
        Self {
            max_kept,
            latest: HashMap::new(),
            kept: BTreeMap::new(),
            kept_bytes: 0,
            dropped: VecDeque::new(),
            unlisted: (0, 0),
        }
    }

    /// An event enters the window: the kept event of its key, if any, is superseded.
    pub(crate) fn entered(&mut self, event: &Stored) {
        if let Some(before) = self.latest.insert(key_of(event), event.sequence) {
            if let Some(gone) = self.kept.remove(&before) {
                self.kept_bytes -= gone.bytes.len() as u64;
            }
        }
    }

    /// An event left the window: kept if it is still the latest of its key. Returns how many
    /// kept events were dropped past the bound to make room (0 or 1).
    pub(crate) fn left(&mut self, event: Stored) -> u64 {
        if self.latest.get(&key_of(&event)) != Some(&event.sequence) {
            return 0;
        }
        self.kept_bytes += event.bytes.len() as u64;
        self.kept.insert(event.sequence, event);
        let mut dropped = 0;
        while self.kept.len() > self.max_kept {
            let Some((sequence, event)) = self.kept.pop_first() else {
                break;
            };
            self.kept_bytes -= event.bytes.len() as u64;
            self.latest.remove(&key_of(&event));
            if self.dropped.len() >= self.max_kept.max(1) {
                if let Some(unlisted) = self.dropped.pop_front() {
                    self.unlisted = (self.unlisted.0 + 1, unlisted);
                }
            }
            self.dropped.push_back(sequence);
            dropped += 1;
        }
        dropped
    }

    /// Puts back an event kept before a restart, the oldest first, before the window's events
    /// (one it supersedes goes). Returns how many were dropped past the bound.
    pub(crate) fn restore(&mut self, event: Stored) -> u64 {
        self.entered(&event);
        self.left(event)
    }

    /// The sequences of the kept events, oldest first.
    #[cfg(feature = "postgres")]
    pub(crate) fn kept_sequences(&self) -> Vec<u64> {
        self.kept.keys().copied().collect()
    }

    /// How many events from `from` up to (not including) `before` were dropped past the
    /// bound. Counts every unlisted one when `from` is at or before the last of them.
    pub(crate) fn missed(&self, from: u64, before: u64) -> u64 {
        let listed = self.dropped.partition_point(|&s| s < from)
            ..self.dropped.partition_point(|&s| s < before);
        let unlisted = if from <= self.unlisted.1 {
            self.unlisted.0
        } else {
            0
        };
        listed.len() as u64 + unlisted
    }

    /// Appends to `out` up to `max` kept events from sequence `from` on; returns the sequence
    /// after the last one appended (`from` if none was).
    pub(crate) fn read(&self, from: u64, max: usize, out: &mut VecDeque<Stored>) -> u64 {
        let mut next = from;
        for (sequence, event) in self.kept.range(from..).take(max) {
            out.push_back(event.clone());
            next = sequence + 1;
        }
        next
    }

    /// Whether `event` (in the window) is the latest of its key.
    pub(crate) fn is_latest(&self, event: &Stored) -> bool {
        self.latest.get(&key_of(event)) == Some(&event.sequence)
    }

    /// The kept events, oldest first.
    pub(crate) fn kept(&self) -> impl Iterator<Item = &Stored> {
        self.kept.values()
    }

    /// The kept events of sequences in `range`, oldest first.
    pub(crate) fn kept_in(&self, range: std::ops::Range<u64>) -> impl Iterator<Item = &Stored> {
        self.kept.range(range).map(|(_, event)| event)
    }

    /// How many events are kept.
    pub(crate) fn len(&self) -> usize {
        self.kept.len()
    }
}
