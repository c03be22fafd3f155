//! Plain subscribers (without a group): where a subscription starts, reading the log by
//! cursor, being woken for the next event, and which are open (with their address and how
//! far each got, for the admin status).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Waker;

use bytes::Bytes;

use super::{Hub, READ_BATCH};
use crate::events::log::{EventLog, Read, Stored};
use crate::events::protocol::{self, Refusal, Start, Subscription};
use crate::events::wire;

/// Where a plain subscription starts.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Position {
    /// Sent first, for a start at the latest event of every key: the latest event of each.
    pub(crate) snapshot: Snapshot,
    /// The first sequence to send (after the snapshot).
    pub(crate) next: u64,
    /// Events of this epoch the subscriber missed before `next`.
    pub(crate) missed: u64,
    /// The epoch of the subscriber's cursor when it was another one: whatever that epoch
    /// published after the cursor is lost, count unknown. 0 otherwise.
    pub(crate) previous_epoch: u64,
}

/// The events a subscription that starts at the latest event of every key gets first, in
/// sequence order, taken under the hub's lock with the position after them.
#[derive(Debug, Default)]
pub(crate) struct Snapshot(pub(crate) Vec<Stored>);

impl Snapshot {
    fn sequences(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().map(|event| event.sequence)
    }
}

impl PartialEq for Snapshot {
    fn eq(&self, other: &Self) -> bool {
        self.sequences().eq(other.sequences())
    }
}

impl Eq for Snapshot {}

/// A plain subscriber admitted: where it starts, and its entry in the hub's list of those
/// open.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub(crate) position: Position,
    /// The latest sequence when it subscribed: its buffer's floor.
    pub(crate) floor: u64,
    /// Its stream's number, to be woken by and to leave the list with.
    pub(crate) id: u64,
    pub(crate) progress: Arc<Progress>,
}

/// How far a plain subscriber got, shared by its stream (which writes it) and the hub's list
/// of open streams (which the admin status reads).
#[derive(Debug)]
pub(crate) struct Progress {
    /// The subscriber's address, when its request carried it.
    pub(crate) peer: Option<SocketAddr>,
    /// The last sequence sent to it or passed over by its filter; before any, the one it was
    /// told it starts after (0 when it was told none: it starts with a gap or a snapshot).
    /// Stored relaxed by its stream as it goes: the one cost per event of the admin status.
    pub(crate) cursor: AtomicU64,
}

/// What a plain stream found when it asked for more.
#[derive(Debug)]
pub(crate) enum Fetched {
    /// Events were added to the batch (`missed` of them were no longer retained).
    Events { missed: u64 },
    /// Nothing new; the stream is woken when there is.
    Waiting,
    /// Nothing new and nothing more to come: the drain ends the stream.
    End,
    /// Further behind than the buffer allows.
    CutOff,
}

impl Hub {
    /// Where a subscription starts, from its cursor (if any) and start position.
    pub(super) fn position(
        &self,
        log: &dyn EventLog,
        subscription: &Subscription,
    ) -> Result<Position, Refusal> {
        let latest = log.latest();
        let oldest = log.oldest();
        let live = latest + 1;
        let at = |next, missed, previous_epoch| Position {
            snapshot: Snapshot::default(),
            next,
            missed,
            previous_epoch,
        };
        // Without keys, every event is its own key.
        let wanted = match subscription.start {
            Start::LatestPerKey if self.key.is_none() => Start::Oldest,
            wanted => wanted,
        };
        // A plain reader from a cursor before the window of a log that compacts reads the
        // events kept past it; a group stands at the window.
        let reads_kept = log.compacts() && subscription.membership.is_none();
        let start = |missed_before_oldest: u64, previous_epoch: u64| match wanted {
            // What is not in the snapshot was superseded (or is gone from a log that does not
            // compact, which counts as missed from the cursor's point of view).
            Start::LatestPerKey => Position {
                snapshot: Snapshot(log.latest_per_key()),
                ..at(
                    live,
                    if reads_kept { 0 } else { missed_before_oldest },
                    previous_epoch,
                )
            },
            Start::Live => at(live, missed_before_oldest + (live - oldest), previous_epoch),
            Start::Oldest => at(oldest, missed_before_oldest, previous_epoch),
            // From the cursor's point of view, as for a live start: what is not delivered
            // after it is missed.
            Start::Time(time) => {
                let (first, _) = log.since(time);
                at(
                    first,
                    missed_before_oldest + (first - oldest),
                    previous_epoch,
                )
            }
        };
        // A cursor of an epoch this one continues (a log kept through a crash) reads on here.
        let (after, lost_epoch) =
            super::super::log::continued_cursor(log, self.epoch, subscription.after);
        let position = match after {
            Some(cursor) if cursor.epoch == self.epoch => {
                let after = cursor.sequence;
                if after > latest {
                    return Err(Refusal::CursorAhead { cursor, latest });
                }
                // Before the window of a log that compacts: the kept events after the cursor,
                // then the window (the log's reads tell of events dropped past its bound).
                if after + 1 >= oldest || reads_kept {
                    at(after + 1, 0, 0)
                } else {
                    start(oldest - after - 1, 0)
                }
            }
            // Another epoch: the publisher restarted. What the old process published after the
            // cursor is gone with it (how much is unknown); of this epoch, the events no longer
            // retained are missed.
            Some(cursor) => start(oldest - 1, cursor.epoch),
            None => match wanted {
                Start::LatestPerKey => start(0, 0),
                Start::Live => at(live, 0, 0),
                Start::Oldest => at(oldest, 0, 0),
                // Retained events from before the time are skipped, not missed. Events gone
                // that may be from after it are missed: all of them, since when each was
                // published is gone with it.
                Start::Time(time) => {
                    let (first, lost) = log.since(time);
                    at(first, if lost { oldest - 1 } else { 0 }, 0)
                }
            },
        };
        Ok(match lost_epoch {
            0 => position,
            lost_epoch => Position {
                previous_epoch: lost_epoch,
                ..position
            },
        })
    }

    /// Where a plain subscription starts.
    pub(crate) fn start(&self, subscription: &Subscription) -> Result<Position, Refusal> {
        let mut state = self.lock();
        if state.closed {
            return Err(Refusal::ShuttingDown);
        }
        state
            .log
            .expire(u64::try_from(wire::now_unix_micros()).unwrap_or(0));
        self.position(state.log.as_ref(), subscription)
    }

    /// Reads what a plain stream has not sent yet into `batch`, from `next` on, or registers
    /// the stream (number `stream`) to be woken by the next event. `floor` is the latest
    /// sequence when the stream subscribed: only events published since count against its
    /// buffer. `registered` is the round the stream is registered in, if any.
    pub(crate) fn fetch(
        &self,
        next: &mut u64,
        floor: u64,
        batch: &mut VecDeque<Stored>,
        (stream, registered): (u64, &mut Option<u64>),
        waker: &Waker,
    ) -> Fetched {
        let mut state = self.lock();
        state
            .log
            .expire(u64::try_from(wire::now_unix_micros()).unwrap_or(0));
        let latest = state.log.latest();
        if *next > latest {
            if !state.live {
                return Fetched::End;
            }
            state.waiters.register(stream, registered, waker);
            return Fetched::Waiting;
        }
        let behind = latest - (*next - 1).max(floor);
        if behind > self.buffer as u64 && !state.draining {
            return Fetched::CutOff;
        }
        let Read {
            missed,
            next: after,
        } = state.log.read(*next, READ_BATCH, batch);
        *next = after;
        Fetched::Events { missed }
    }

    /// Admits a plain subscriber (counted and listed until
    /// [`plain_stream_ended`](Self::plain_stream_ended)): where it starts, the latest
    /// sequence now (its buffer's floor), and its entry in the list of open streams.
    pub(crate) fn admit_plain(
        &self,
        subscription: &Subscription,
    ) -> Result<Admitted, tonic::Status> {
        static STREAMS: AtomicU64 = AtomicU64::new(1);
        let open = self.plain_streams.fetch_add(1, Ordering::AcqRel);
        self.metrics.subscribers.set((open + 1) as f64);
        let refusal = if open >= self.max_subscribers {
            Refusal::TooManySubscribers(self.max_subscribers)
        } else {
            match self.start(subscription) {
                Ok(position) => {
                    let told = position.snapshot.0.is_empty()
                        && position.missed == 0
                        && position.previous_epoch == 0;
                    let progress = Arc::new(Progress {
                        peer: subscription.peer,
                        cursor: AtomicU64::new(if told { position.next - 1 } else { 0 }),
                    });
                    let id = STREAMS.fetch_add(1, Ordering::Relaxed);
                    self.plain_list().insert(id, progress.clone());
                    return Ok(Admitted {
                        position,
                        floor: self.latest(),
                        id,
                        progress,
                    });
                }
                Err(refusal) => refusal,
            }
        };
        self.plain_stream_counted_out();
        Err(protocol::refused(&self.method, &refusal, None))
    }

    fn plain_list(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, Arc<Progress>>> {
        // Inserts and removes are whole before they can panic: poisoning is harmless.
        self.plain
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The plain subscribers open now, in the order they subscribed: address and cursor.
    pub(super) fn plain_progress(&self) -> Vec<(Option<SocketAddr>, u64)> {
        self.plain_list()
            .values()
            .map(|progress| (progress.peer, progress.cursor.load(Ordering::Relaxed)))
            .collect()
    }

    /// A plain stream that ends takes its waker out of the list it was registered in, unless
    /// that list was woken since.
    pub(crate) fn unregister(&self, stream: u64, round: u64) {
        self.lock().waiters.unregister(stream, round);
    }

    /// How many plain subscribers have a stream open.
    pub(crate) fn plain_subscribers(&self) -> usize {
        self.plain_streams.load(Ordering::Acquire)
    }

    /// The plain subscriber's stream `id` ended.
    pub(crate) fn plain_stream_ended(&self, id: u64) {
        self.plain_list().remove(&id);
        self.plain_stream_counted_out();
    }

    fn plain_stream_counted_out(&self) {
        let open = self.plain_streams.fetch_sub(1, Ordering::AcqRel) - 1;
        self.metrics.subscribers.set(open as f64);
        self.changed.notify_waiters();
    }

    /// The metadata field of a heartbeat (and of a pending gap report), carrying `sequence`,
    /// or by default the latest sequence published.
    pub(crate) fn heartbeat_bytes(
        &self,
        sequence: Option<u64>,
        missed: u64,
        previous_epoch: u64,
    ) -> Bytes {
        let sequence = sequence.unwrap_or_else(|| self.latest());
        wire::heartbeat_field(self.epoch, sequence, missed, previous_epoch)
    }
}
