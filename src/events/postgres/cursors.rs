//! [`PgCursors`]: a plain observer's cursors in the service's own Postgres, with the record of
//! each event its handler handled written in the handler's own transaction, so that a
//! handler's effects and that record commit together, or neither does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::Notify;

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
/// Give one clone to the observer ([`ObserverOptions::cursor_store`]) and one to the handler:
///
/// - The observer's cursor (every event up to it handled) is written by a task of the store,
///   at most every 100 ms while it moves and when the observer stops, in a short transaction
///   that also deletes the records the cursor passed: the table of records holds the events
///   handled since the last write, and those handled ahead of the cursor by keyed lanes.
///   [`save`](Self::save) writes at once.
/// - A restarted observer resumes after the stored cursor and skips the events recorded past
///   it. An event it handles again anyway (one the handler did not handle through `begin`,
///   after a crash) finds its record: `begin` says so.
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

struct Shared {
    pool: PgPool,
    observer: String,
    state: Mutex<State>,
    /// A cursor moved: wakes the writer.
    moved: Notify,
    /// Write now (the observer stops, or the store is dropped): ends the writer's pause.
    urgent: Notify,
    /// Held while writing, so that [`PgCursors::save`] returns after a write in progress.
    writing: tokio::sync::Mutex<()>,
    /// An observer loaded the store: it is given the cursors as they move.
    loaded: AtomicBool,
    warned_unloaded: AtomicBool,
}

#[derive(Default)]
struct State {
    producers: BTreeMap<(String, u64), Producer>,
    /// The cursors moved since the last write.
    moved: BTreeMap<(String, u64), u64>,
    closed: bool,
}

/// What is known of one producer (event RPC and epoch).
#[derive(Default)]
struct Producer {
    /// Every event up to it handled.
    cursor: Option<u64>,
    /// Events handled past the cursor.
    ahead: BTreeSet<u64>,
}

impl Producer {
    fn passed(&mut self, sequence: u64) {
        self.cursor = self.cursor.max(Some(sequence));
        while self.ahead.first().is_some_and(|&ahead| ahead <= sequence) {
            self.ahead.pop_first();
        }
    }
}

/// How often the cursors are written while they move.
const WRITE_EVERY: Duration = Duration::from_millis(100);

/// The most producers kept per observer; the ones updated longest ago are forgotten beyond.
const MAX_PRODUCERS: usize = 4096;

/// The most events kept in memory ahead of one producer's cursor: more than a stream holds.
const MOST_AHEAD: usize = 16 * 1024;

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
        let shared = Arc::new(Shared {
            pool: pool.clone(),
            observer: observer.to_owned(),
            state: Mutex::new(State {
                producers,
                ..State::default()
            }),
            moved: Notify::new(),
            urgent: Notify::new(),
            writing: tokio::sync::Mutex::new(()),
            loaded: AtomicBool::new(false),
            warned_unloaded: AtomicBool::new(false),
        });
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

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn warn_if_unloaded(&self) {
        if !self.loaded.load(Ordering::Relaxed)
            && !self.warned_unloaded.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                observer = %self.observer,
                "PgCursors used by a handler but not given to its observer \
                 (ObserverOptions::cursor_store): its records are never pruned, and a restart \
                 does not resume from its cursor"
            );
        }
    }

    /// The writer: writes when a cursor moved, at most every [`WRITE_EVERY`] unless asked to
    /// write now; ends once the store is dropped, having written what was left.
    async fn write_behind(self: Arc<Self>) {
        loop {
            let (closed, pending) = {
                let state = self.lock();
                (state.closed, !state.moved.is_empty())
            };
            if pending {
                if let Err(error) = self.write().await {
                    tracing::warn!(observer = %self.observer, %error, "writing the observer's cursors failed; retrying (the records of handled events are kept meanwhile)");
                }
            }
            if closed {
                return;
            }
            if pending {
                let _ = tokio::time::timeout(WRITE_EVERY, self.urgent.notified()).await;
            } else {
                tokio::select! {
                    () = self.moved.notified() => {}
                    () = self.urgent.notified() => {}
                }
            }
        }
    }

    async fn write(&self) -> Result<(), sqlx::Error> {
        let _writing = self.writing.lock().await;
        let moved = std::mem::take(&mut self.lock().moved);
        if moved.is_empty() {
            return Ok(());
        }
        if let Err(error) = cursor_rows::write(&self.pool, &self.observer, &moved).await {
            let mut state = self.lock();
            for (producer, sequence) in moved {
                let again = state.moved.entry(producer).or_default();
                *again = (*again).max(sequence);
            }
            return Err(error);
        }
        if self.lock().producers.len() > MAX_PRODUCERS {
            self.forget().await?;
        }
        Ok(())
    }

    /// Forgets the producers updated longest ago beyond [`MAX_PRODUCERS`]; each is logged.
    async fn forget(&self) -> Result<(), sqlx::Error> {
        let forgotten = cursor_rows::forget(&self.pool, &self.observer, MAX_PRODUCERS).await?;
        let mut state = self.lock();
        for (rpc, epoch, sequence) in forgotten {
            tracing::warn!(observer = %self.observer, rpc, epoch, sequence, "forgetting the cursor of a producer updated longest ago: an observer's cursors keep 4096");
            state.producers.remove(&(rpc, epoch));
        }
        Ok(())
    }
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
