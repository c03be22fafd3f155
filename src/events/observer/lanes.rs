//! Keyed lanes: the events of one stream handled in parallel across keys and one after another
//! within a key, up to a number of handlers at once; and the cursor, which stays at the last
//! event before which every event was handled.
//!
//! [`Lanes`] is plain bookkeeping: the stream starts what [`Lanes::arrive`] and
//! [`Lanes::finished`] hand back, and reports each handling's end. [`LaneSet`] runs what it
//! starts, one task per handling, and hands back each one's end as [`Finished`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};

use super::control::Instance;
use super::event::Event;
use super::handling::{Abandoned, Handler, Handling};
use super::membership::Membership;
use super::metrics::LagSample;
use super::progress::Progress;
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
        let cursor = self.pass_handled();
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

    /// An event handled before (by an earlier stream) arrived again: it counts as handled, so
    /// that the cursor moves over it. Returns the new cursor if it moved.
    pub(crate) fn handled_before(&mut self, cursor: Cursor) -> Option<Cursor> {
        self.order.push_back((cursor, true));
        self.pass_handled()
    }

    /// Moves the cursor over the handled events at the front; returns it if it moved.
    fn pass_handled(&mut self) -> Option<Cursor> {
        let mut cursor = None;
        while let Some(&(handled, true)) = self.order.front() {
            self.order.pop_front();
            self.first += 1;
            cursor = Some(handled);
        }
        cursor
    }

    /// Forgets the events waiting (the observer stops): they come again when it resumes.
    pub(crate) fn drop_waiting(&mut self) {
        self.ready.clear();
        self.keys.retain(|_, lane| {
            lane.waiting.clear();
            lane.running
        });
    }
}

/// A stream's keyed lanes and the handlings they run.
pub(crate) struct LaneSet<T> {
    pub(crate) lanes: Lanes<Event<T>>,
    pub(crate) running: JoinSet<Finished>,
    /// The most events held (being handled, waiting, or handled after one that is not):
    /// past it, the stream is not read.
    most_held: usize,
}

impl<T> LaneSet<T> {
    /// Lanes for up to `limit` handlers at once.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            lanes: Lanes::new(limit),
            running: JoinSet::new(),
            most_held: (limit * 16).max(256),
        }
    }

    pub(crate) fn has_room(&self) -> bool {
        self.lanes.held() < self.most_held
    }
}

impl<T: Send + Sync + 'static> LaneSet<T> {
    /// An event arrived: handed to its key's lane, and started if it may start now. One that
    /// an earlier stream handled already only lets the cursor move over it.
    pub(crate) fn arrive<H: Handler<T>>(
        &mut self,
        handling: &Arc<Handling<T, H>>,
        progress: &mut Progress,
        event: Event<T>,
    ) {
        let cursor = event.cursor();
        if progress.handled_ahead(cursor) {
            if let Some(moved) = self.lanes.handled_before(cursor) {
                progress.moved(moved);
            }
            return;
        }
        let key = crate::keys::hash(event.key());
        if let Some((position, event)) = self.lanes.arrive(key, cursor, event) {
            self.start(handling, key, position, event);
        }
    }

    /// A handling ended: the cursor moves past what was handled before it, the group (or the
    /// progress past the cursor) is told, and the events it held up start.
    pub(crate) fn finished<H: Handler<T>>(
        &mut self,
        handling: &Arc<Handling<T, H>>,
        finished: Result<Finished, JoinError>,
        progress: &mut Progress,
        membership: Option<&Membership>,
        lag: &mut LagSample,
    ) -> Result<(), Abandoned> {
        let finished = match finished {
            Ok(finished) => finished,
            // As an inline handler's panic would.
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => return Err(Abandoned),
        };
        finished.outcome?;
        lag.handled(finished.published_at, &handling.metrics.lag);
        let (moved, start) = self.lanes.finished(finished.key, finished.position);
        if let Some(cursor) = moved {
            progress.moved(cursor);
        }
        match membership {
            Some(membership) => membership.handled_alone(finished.cursor),
            None => progress.finished_ahead(finished.cursor),
        }
        for (key, position, event) in start {
            self.start(handling, key, position, event);
        }
        Ok(())
    }

    /// The stream is over: lets the handlings end (one retrying stops when the observer
    /// does), so that what they handled is acknowledged and the cursor is past it. With
    /// `handle_waiting`, the events waiting are handled too, unless the observer stops
    /// meanwhile; otherwise they are dropped, to come again when the observer resumes.
    pub(crate) async fn finish<H: Handler<T>>(
        &mut self,
        handling: &Arc<Handling<T, H>>,
        mut handle_waiting: bool,
        progress: &mut Progress,
        membership: Option<&Membership>,
        lag: &mut LagSample,
        mut control: watch::Receiver<Instance>,
    ) {
        loop {
            if !handle_waiting {
                self.lanes.drop_waiting();
            }
            let finished = if handle_waiting {
                tokio::select! {
                    finished = self.running.join_next() => finished,
                    _ = control.wait_for(|state| *state == Instance::Stopped) => {
                        handle_waiting = false;
                        continue;
                    }
                }
            } else {
                self.running.join_next().await
            };
            let Some(finished) = finished else {
                return;
            };
            if self
                .finished(handling, finished, progress, membership, lag)
                .is_err()
            {
                handle_waiting = false;
            }
        }
    }

    fn start<H: Handler<T>>(
        &mut self,
        handling: &Arc<Handling<T, H>>,
        key: u64,
        position: Position,
        event: Event<T>,
    ) {
        let handling = handling.clone();
        self.running.spawn(async move {
            let cursor = event.cursor();
            let published_at = event.metadata().published_at_unix_micros;
            let outcome = handling.handle(event).await;
            Finished {
                key,
                position,
                cursor,
                published_at,
                outcome,
            }
        });
    }
}

/// One lane's handling of one event, ended.
pub(crate) struct Finished {
    pub(crate) key: u64,
    pub(crate) position: Position,
    pub(crate) cursor: Cursor,
    pub(crate) published_at: i64,
    pub(crate) outcome: Result<(), Abandoned>,
}

#[cfg(test)]
mod test;
