//! Where an observer stands with each producer: per (event RPC, producer epoch) the event
//! before which every event was handled and the events handled past it (keyed lanes), the
//! epoch last met at each address, and which stream reads each producer.
//!
//! A cursor belongs to the producer (its epoch), not to a connection or an address: a
//! producer that leaves discovery and comes back, or comes back at another address, is resumed
//! right after the last event handled; a producer reachable at several addresses is read by
//! one stream at a time, the others waiting until it lets go. Consumer group members keep
//! their position on the producer instead, and do not use the book.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::v1::Cursor;

/// How many producers the book remembers per observer; the least recently used is forgotten
/// beyond it (a producer that restarted that often has long lost its old epochs' events).
const MAX_PRODUCERS: usize = 4096;

/// The book of one observer, shared by its streams.
#[derive(Debug, Default)]
pub(crate) struct Book {
    inner: Mutex<Inner>,
    /// Woken when a stream lets go of a producer.
    released: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    producers: HashMap<(&'static str, u64), Producer>,
    epochs_at: HashMap<(&'static str, Arc<str>), u64>,
    tick: u64,
}

#[derive(Debug, Default)]
struct Producer {
    /// The last event before which every event was handled (or the position a stream started
    /// at).
    after: Option<u64>,
    /// Events past `after` handled already (keyed lanes finish events out of order).
    ahead: BTreeSet<u64>,
    /// The stream reading this producer now.
    reader: Option<u64>,
    used: u64,
}

/// What a stream that reached a producer may do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Read it, skipping events up to `after` and those in `ahead`.
    Read {
        after: Option<Cursor>,
        ahead: BTreeSet<u64>,
    },
    /// Another stream reads it; wait until it lets go.
    Duplicate,
    /// The stream asked from a cursor of another epoch while the book knows where this one
    /// stands: subscribe again, with [`Book::resume_after`].
    Resubscribe,
}

impl Book {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers that events of producer `cursor.epoch` up to `cursor.sequence` were handled
    /// (by this observer before it restarted): a stream that reaches that producer resumes
    /// after it. Every stored cursor is kept, however many (the store bounds them).
    pub(crate) fn preload(&self, rpc: &'static str, cursor: Cursor) {
        let mut inner = self.lock();
        let producer = inner.producers.entry((rpc, cursor.epoch)).or_default();
        producer.after = producer.after.max(Some(cursor.sequence));
        producer.pass_ahead();
    }

    /// Remembers that event `cursor` was handled past its producer's cursor (by this observer
    /// before it restarted): it is not handled again.
    pub(crate) fn preload_ahead(&self, rpc: &'static str, cursor: Cursor) {
        let mut inner = self.lock();
        let producer = inner.producers.entry((rpc, cursor.epoch)).or_default();
        if producer.after.is_none_or(|after| after < cursor.sequence) {
            producer.ahead.insert(cursor.sequence);
        }
    }

    /// Where to resume at `address`: after the last event handled of the producer last met
    /// there.
    pub(crate) fn resume_after(&self, rpc: &'static str, address: &Arc<str>) -> Option<Cursor> {
        let inner = self.lock();
        let epoch = *inner.epochs_at.get(&(rpc, address.clone()))?;
        let producer = inner.producers.get(&(rpc, epoch))?;
        producer.after.map(|sequence| Cursor { epoch, sequence })
    }

    /// Whether the producer last met at `address` is being read by another stream than
    /// `stream`: then subscribing there would only read it twice.
    pub(crate) fn read_elsewhere(
        &self,
        rpc: &'static str,
        address: &Arc<str>,
        stream: u64,
    ) -> bool {
        let inner = self.lock();
        inner
            .epochs_at
            .get(&(rpc, address.clone()))
            .and_then(|epoch| inner.producers.get(&(rpc, *epoch)))
            .and_then(|producer| producer.reader)
            .is_some_and(|reader| reader != stream)
    }

    /// `stream` reached producer `epoch` at `address`, having asked from `sent`; the producer
    /// said it starts right after `start_after` (when it said so and reported no gap).
    pub(crate) fn claim(
        &self,
        rpc: &'static str,
        address: &Arc<str>,
        epoch: u64,
        stream: u64,
        sent: Option<Cursor>,
        start_after: Option<u64>,
    ) -> Claim {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        inner.epochs_at.insert((rpc, address.clone()), epoch);
        if !inner.producers.contains_key(&(rpc, epoch)) && inner.producers.len() >= MAX_PRODUCERS {
            inner.forget_least_used();
        }
        let producer = inner.producers.entry((rpc, epoch)).or_default();
        producer.used = tick;
        if producer.reader.is_some_and(|reader| reader != stream) {
            return Claim::Duplicate;
        }
        let sent_here = sent.is_some_and(|cursor| cursor.epoch == epoch);
        if !sent_here && producer.after.is_some() {
            return Claim::Resubscribe;
        }
        producer.reader = Some(stream);
        if let Some(start) = start_after {
            producer.after = producer.after.max(Some(start));
            producer.pass_ahead();
        }
        Claim::Read {
            after: producer.after.map(|sequence| Cursor { epoch, sequence }),
            ahead: producer.ahead.clone(),
        }
    }

    /// `stream` stopped reading producer `epoch`, having handled up to `handled`, and `ahead`
    /// past it.
    pub(crate) fn release(
        &self,
        rpc: &'static str,
        epoch: u64,
        stream: u64,
        handled: Option<Cursor>,
        ahead: BTreeSet<u64>,
    ) {
        let mut inner = self.lock();
        if let Some(producer) = inner.producers.get_mut(&(rpc, epoch)) {
            if producer.reader == Some(stream) {
                producer.reader = None;
            }
            if let Some(cursor) = handled.filter(|c| c.epoch == epoch) {
                producer.after = producer.after.max(Some(cursor.sequence));
            }
            producer.ahead.extend(ahead);
            producer.pass_ahead();
        }
        drop(inner);
        self.released.notify_waiters();
    }

    /// Records where a stream that could not claim (its producer said no epoch) stands.
    pub(crate) fn record(&self, rpc: &'static str, address: &Arc<str>, handled: Cursor) {
        let mut inner = self.lock();
        inner
            .epochs_at
            .insert((rpc, address.clone()), handled.epoch);
        let producer = inner.producers.entry((rpc, handled.epoch)).or_default();
        producer.after = producer.after.max(Some(handled.sequence));
    }

    /// Waits until some stream lets go of a producer.
    pub(crate) async fn released(&self) {
        self.released.notified().await;
    }
}

impl Producer {
    /// Forgets the events handled ahead that the cursor has passed.
    fn pass_ahead(&mut self) {
        let Some(after) = self.after else {
            return;
        };
        while self.ahead.first().is_some_and(|&ahead| ahead <= after) {
            self.ahead.pop_first();
        }
    }
}

impl Inner {
    fn forget_least_used(&mut self) {
        let Some(oldest) = self
            .producers
            .iter()
            .filter(|(_, p)| p.reader.is_none())
            .min_by_key(|(_, p)| p.used)
            .map(|(key, _)| *key)
        else {
            return;
        };
        self.producers.remove(&oldest);
        self.epochs_at
            .retain(|(rpc, _), epoch| !(*rpc == oldest.0 && *epoch == oldest.1));
    }
}

#[cfg(test)]
mod test;
