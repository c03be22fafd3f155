//! Keyed lanes: the events of one stream handled in parallel across keys and one after another
//! within a key, up to a number of handlers at once; and the cursor, which stays at the last
//! event before which every event was handled.
//!
//! Plain bookkeeping: the stream starts what [`Lanes::arrive`] and [`Lanes::finished`] hand
//! back, and reports each handling's end.

use std::collections::{HashMap, VecDeque};

use crate::v1::Cursor;

/// One event's place in the stream: its arrival number.
pub(crate) type Position = u64;

#[derive(Debug)]
pub(crate) struct Lanes<E> {
    /// The most handlers at once.
    limit: usize,
    running: usize,
    /// Keys with an event being handled or waiting, and their waiting events in order.
    keys: HashMap<u64, Lane<E>>,
    /// Keys with events waiting and none being handled: they wait for a free handler, the
    /// longest waiting first.
    ready: VecDeque<u64>,
    /// Every event not yet behind the cursor, in arrival order, and whether it was handled.
    order: VecDeque<(Cursor, bool)>,
    /// The position of `order`'s first event.
    first: Position,
}

#[derive(Debug)]
struct Lane<E> {
    running: bool,
    waiting: VecDeque<(Position, E)>,
}

impl<E> Lanes<E> {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            running: 0,
            keys: HashMap::new(),
            ready: VecDeque::new(),
            order: VecDeque::new(),
            first: 0,
        }
    }

    /// Events arrived and not yet handled (being handled or waiting).
    #[cfg(test)]
    pub(crate) fn unfinished(&self) -> usize {
        self.order.iter().filter(|(_, done)| !done).count()
    }

    /// Events not yet behind the cursor: what the stream holds on to.
    pub(crate) fn held(&self) -> usize {
        self.order.len()
    }

    /// Whether a handler is running.
    #[cfg(test)]
    pub(crate) fn is_running(&self) -> bool {
        self.running > 0
    }

    /// An event of `key` arrived: returned with its position when it may be handled now,
    /// kept to be handed back by [`finished`](Self::finished) otherwise.
    pub(crate) fn arrive(&mut self, key: u64, cursor: Cursor, event: E) -> Option<(Position, E)> {
        let position = self.first + self.order.len() as u64;
        self.order.push_back((cursor, false));
        let free = self.running < self.limit;
        let lane = self.keys.entry(key).or_insert_with(|| Lane {
            running: false,
            waiting: VecDeque::new(),
        });
        if !lane.running && lane.waiting.is_empty() && free {
            lane.running = true;
            self.running += 1;
            return Some((position, event));
        }
        lane.waiting.push_back((position, event));
        if !lane.running && lane.waiting.len() == 1 {
            self.ready.push_back(key);
        }
        None
    }

    /// The handling of the event at `position`, of `key`, ended. Returns the new cursor if it
    /// moved, and the events to start now, with their keys.
    pub(crate) fn finished(
        &mut self,
        key: u64,
        position: Position,
    ) -> (Option<Cursor>, Vec<(u64, Position, E)>) {
        if let Some(at) = position
            .checked_sub(self.first)
            .and_then(|at| usize::try_from(at).ok())
        {
            if let Some(entry) = self.order.get_mut(at) {
                entry.1 = true;
            }
        }
        let mut cursor = None;
        while let Some(&(handled, true)) = self.order.front() {
            self.order.pop_front();
            self.first += 1;
            cursor = Some(handled);
        }
        self.running -= 1;
        if let Some(lane) = self.keys.get_mut(&key) {
            lane.running = false;
            if lane.waiting.is_empty() {
                self.keys.remove(&key);
            } else {
                self.ready.push_back(key);
            }
        }
        let mut start = Vec::new();
        while self.running < self.limit {
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            let Some(lane) = self.keys.get_mut(&key) else {
                continue;
            };
            if let Some((position, event)) = lane.waiting.pop_front() {
                lane.running = true;
                self.running += 1;
                start.push((key, position, event));
            }
        }
        (cursor, start)
    }

    /// Forgets the events waiting (the stream ended): they come again on the next stream.
    pub(crate) fn drop_waiting(&mut self) {
        self.ready.clear();
        self.keys.retain(|_, lane| {
            lane.waiting.clear();
            lane.running
        });
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn cursor(sequence: u64) -> Cursor {
        Cursor { epoch: 1, sequence }
    }

    #[test]
    fn keys_run_in_parallel_up_to_the_limit_and_in_order_within_a_key() {
        let mut lanes = Lanes::new(2);
        assert_eq!(lanes.arrive(1, cursor(1), "a1"), Some((0, "a1")));
        assert_eq!(lanes.arrive(1, cursor(2), "a2"), None, "behind a1");
        assert_eq!(lanes.arrive(2, cursor(3), "b1"), Some((2, "b1")));
        assert_eq!(lanes.arrive(3, cursor(4), "c1"), None, "no free handler");

        // b1 ends first: the cursor stays before a1; c1 starts (a2 still waits for a1).
        let (moved, start) = lanes.finished(2, 2);
        assert_eq!(moved, None);
        assert_eq!(start, [(3, 3, "c1")]);

        // a1 ends: the cursor passes a1 only (a2 is not handled); a2 starts.
        let (moved, start) = lanes.finished(1, 0);
        assert_eq!(moved, Some(cursor(1)));
        assert_eq!(start, [(1, 1, "a2")]);

        let (moved, start) = lanes.finished(1, 1);
        assert_eq!(moved, Some(cursor(3)), "a2 and b1 are behind it now");
        assert!(start.is_empty());
        let (moved, _) = lanes.finished(3, 3);
        assert_eq!(moved, Some(cursor(4)));
        assert_eq!(lanes.held(), 0);
        assert!(!lanes.is_running());
    }

    #[test]
    fn waiting_events_are_dropped_when_the_stream_ends_and_running_ones_still_count() {
        let mut lanes = Lanes::new(1);
        assert!(lanes.arrive(1, cursor(1), ()).is_some());
        assert!(lanes.arrive(2, cursor(2), ()).is_none());
        lanes.drop_waiting();
        assert_eq!(lanes.unfinished(), 2);
        let (moved, start) = lanes.finished(1, 0);
        assert_eq!(moved, Some(cursor(1)));
        assert!(start.is_empty(), "the dropped event is not started");
    }
}
