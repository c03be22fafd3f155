//! [`PgCursors`]: a plain observer's cursors in the service's own Postgres, with the record of
//! each event its handler handled written in the handler's own transaction, so that a
//! handler's effects and that record commit together, or neither does.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sqlx::{PgPool, Postgres, Transaction};

use super::cursor_rows::Position;
use super::cursor_state::{Producer, Shared, MOST_AHEAD};
use super::{cursor_rows, schema};
use crate::events::{CursorStore, Event};
use crate::v1::Cursor;
use crate::Error;

/// A plain observer's cursors in Postgres, for handlers whose effects are in the same
/// database: each handler runs its writes in a transaction from [`begin`](Self::begin), which
/// records the event as handled in that transaction. Effects and record commit together, or
/// neither does, so each event has its effects exactly once, across retries, restarts and
/// crashes, keyed lanes or not.
///
/// Give one clone to the observer ([`ObserverOptions::cursor_store`]) and one to the handler
/// (see the README's Postgres section). How it stays exact, and bounded:
///
/// - The observer's cursor (every event up to it handled) is written by a task of the store,
///   at most every 100 ms while it moves and when the observer stops, in a short transaction
///   that also deletes the records the cursor passed: the table of records holds the events
///   handled since the last write, and those handled ahead of the cursor by keyed lanes.
///   [`save`](Self::save) writes at once.
/// - A restarted observer resumes after the stored cursor and skips the events recorded past
///   it. An event given to the handler again anyway (a retry after a commit whose answer was
///   lost) finds its record, or the cursor past it: `begin` returns `None`.
///
/// The name is the observer's, not the process's: an observer restarted anywhere with the same
/// name resumes where it stopped. Give each observer its own name, and run one observer of a
/// name at a time. The store keeps the 4,096 producers of which an event was handled last;
/// older ones are forgotten, and logged.
///
/// [`ObserverOptions::cursor_store`]: crate::events::ObserverOptions::cursor_store
#[derive(Clone)]
pub struct PgCursors {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for PgCursors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCursors")
            .field("observer", &self.handle.shared.observer)
            .finish_non_exhaustive()
    }
}

/// Dropped with the last clone: the writer writes what is left, and ends.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.urgent.notify_one();
    }
}

impl PgCursors {
    /// The cursors of the observer named `observer` in the pool's database: migrates the
    /// `meshless` schema, reads what was stored, and starts the task that writes the cursors.
    /// Must run within a Tokio runtime.
    pub async fn open(pool: &PgPool, observer: &str) -> Result<Self, Error> {
        if observer.is_empty() {
            return Err(Error::invalid_input("an observer's cursors need a name"));
        }
        let opening = format!("the cursors of observer {observer:?}");
        schema::migrate(pool)
            .await
            .map_err(|error| error.into_error(&opening))?;
        let (cursors, handled) = cursor_rows::load(pool, observer)
            .await
            .map_err(|error| Error::database(format!("reading {opening}"), error))?;
        let producers = known(cursors, handled);
        let shared = Arc::new(Shared::new(pool, observer, producers));
        tokio::spawn(shared.clone().write_behind());
        Ok(Self {
            handle: Arc::new(Handle { shared }),
        })
    }

    /// The observer's name.
    pub fn observer(&self) -> &str {
        &self.handle.shared.observer
    }

    /// Begins the transaction in which to handle `event`, with the event recorded in it as
    /// handled; `None` when it was handled before (its transaction committed), and has nothing
    /// more to do. Write the handler's effects in the transaction and commit it: a plain
    /// `tx.commit()`, or a Postgres publisher's `commit(tx)` for events published in it. A
    /// transaction dropped or rolled back records nothing: the event is handled again.
    ///
    /// A second transaction for the same event waits for the first to end. An error (the
    /// database's, through `?` a [`HandlerError`](crate::events::HandlerError)) has the
    /// observer retry the event.
    pub async fn begin<T>(
        &self,
        event: &Event<T>,
    ) -> Result<Option<Transaction<'static, Postgres>>, Error> {
        let shared = &self.handle.shared;
        shared.warn_if_unloaded();
        let Cursor { epoch, sequence } = event.cursor();
        let rpc = event.rpc();
        let failed = |error| {
            Error::database(
                format!(
                    "recording event {sequence} of epoch {epoch:#x} of {rpc} as handled by \
                     observer {:?}",
                    shared.observer
                ),
                error,
            )
        };
        let mut tx = shared.pool.begin().await.map_err(failed)?;
        let recorded = cursor_rows::record(&mut tx, &shared.observer, (rpc, epoch, sequence))
            .await
            .map_err(failed)?;
        if recorded {
            return Ok(Some(tx));
        }
        // Nothing was written; a failed rollback changes nothing.
        let _ = tx.rollback().await;
        Ok(None)
    }

    /// Writes the cursors moved since the last write, and deletes the records they passed;
    /// returns once written. The store does it by itself shortly after the cursors move, and
    /// when the observer stops, without waiting: this is for a process about to exit.
    pub async fn save(&self) -> Result<(), Error> {
        let shared = &self.handle.shared;
        shared.write().await.map_err(|error| {
            Error::database(
                format!("writing the cursors of observer {:?}", shared.observer),
                error,
            )
        })
    }
}

/// What is known of each producer from its stored cursor and its records: the records behind
/// the cursor are dropped.
fn known(cursors: Vec<Position>, handled: Vec<Position>) -> BTreeMap<(String, u64), Producer> {
    let mut producers: BTreeMap<(String, u64), Producer> = BTreeMap::new();
    for (rpc, epoch, sequence) in handled {
        producers
            .entry((rpc, epoch))
            .or_default()
            .ahead
            .insert(sequence);
    }
    for (rpc, epoch, sequence) in cursors {
        producers.entry((rpc, epoch)).or_default().passed(sequence);
    }
    producers
}

impl CursorStore for PgCursors {
    fn load(&self) -> Result<Vec<(String, Cursor)>, Error> {
        let shared = &self.handle.shared;
        shared.loaded.store(true, Ordering::Relaxed);
        Ok(shared
            .lock()
            .producers
            .iter()
            .filter_map(|((rpc, epoch), producer)| {
                let sequence = producer.cursor?;
                Some((
                    rpc.clone(),
                    Cursor {
                        epoch: *epoch,
                        sequence,
                    },
                ))
            })
            .collect())
    }

    /// Kept in memory and written by the store's task: the cursor's row is not in any
    /// handler's transaction, so that handlers never wait on one another for it.
    fn handled(&self, rpc: &str, cursor: Cursor) {
        let shared = &self.handle.shared;
        let mut state = shared.lock();
        let producer = (rpc.to_owned(), cursor.epoch);
        state
            .producers
            .entry(producer.clone())
            .or_default()
            .passed(cursor.sequence);
        let moved = state.moved.entry(producer).or_default();
        *moved = (*moved).max(cursor.sequence);
        drop(state);
        shared.moved.notify_one();
    }

    /// Kept in memory only: what a handler handled through [`PgCursors::begin`] is recorded
    /// already, in its own transaction.
    fn handled_ahead(&self, rpc: &str, cursor: Cursor) {
        let mut state = self.handle.shared.lock();
        let producer = state
            .producers
            .entry((rpc.to_owned(), cursor.epoch))
            .or_default();
        if producer.cursor.is_some_and(|at| at >= cursor.sequence) {
            return;
        }
        if producer.ahead.len() < MOST_AHEAD {
            producer.ahead.insert(cursor.sequence);
        }
    }

    fn load_ahead(&self) -> Result<Vec<(String, Cursor)>, Error> {
        Ok(self
            .handle
            .shared
            .lock()
            .producers
            .iter()
            .flat_map(|((rpc, epoch), producer)| {
                producer.ahead.iter().map(|&sequence| {
                    (
                        rpc.clone(),
                        Cursor {
                            epoch: *epoch,
                            sequence,
                        },
                    )
                })
            })
            .collect())
    }

    /// Has the store's task write now, without waiting for it: the observer stops on the
    /// runtime. [`PgCursors::save`] waits.
    fn flush(&self) {
        self.handle.shared.urgent.notify_one();
    }
}

#[cfg(test)]
mod test;
