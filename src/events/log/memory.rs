//! [`MemoryLog`]: the last `retain` events of an event RPC in a ring in memory, within the
//! byte and age limits, with the events kept by compaction past it.

use std::collections::VecDeque;

use super::{compact, Compaction, EventLog, Limits, Read, Stored};

/// The last `retain` events, in memory, within the byte and age limits.
#[derive(Debug)]
pub(crate) struct MemoryLog {
    pub(super) ring: VecDeque<Stored>,
    pub(super) retain: usize,
    pub(super) limits: Limits,
    /// The size of the events in the ring.
    pub(super) bytes: u64,
    pub(super) next: u64,
    /// The latest publish time of the events dropped from the ring; `None` when this log
    /// dropped none (it may still have been restored without the oldest events).
    pub(super) dropped_through: Option<u64>,
    /// The latest event of every key past the window, for an event RPC with compaction.
    pub(super) compaction: Option<Compaction>,
    /// Kept events dropped past the compaction's bound.
    pub(super) dropped_past_bound: u64,
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
