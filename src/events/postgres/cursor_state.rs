//! The state shared by the clones of a `PgCursors`: the cursors and events handled known in
//! memory, and the task that writes the cursors moved, deleting the records they pass.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;

use super::cursor_rows;

/// What the clones of a `PgCursors` share with its writer task.
pub(super) struct Shared {
    pub(super) pool: PgPool,
    pub(super) observer: String,
    pub(super) state: Mutex<State>,
    /// A cursor moved: wakes the writer.
    pub(super) moved: Notify,
    /// Write now (the observer stops, or the store is dropped): ends the writer's pause.
    pub(super) urgent: Notify,
    /// Held while writing, so that `PgCursors::save` returns after a write in progress.
    pub(super) writing: tokio::sync::Mutex<()>,
    /// An observer loaded the store: it is given the cursors as they move.
    pub(super) loaded: AtomicBool,
    pub(super) warned_unloaded: AtomicBool,
}

/// What is known in memory, and what is left to write.
#[derive(Default)]
pub(super) struct State {
    pub(super) producers: BTreeMap<(String, u64), Producer>,
    /// The cursors moved since the last write.
    pub(super) moved: BTreeMap<(String, u64), u64>,
    pub(super) closed: bool,
}

/// What is known of one producer (event RPC and epoch).
#[derive(Default)]
pub(super) struct Producer {
    /// Every event up to it handled.
    pub(super) cursor: Option<u64>,
    /// Events handled past the cursor.
    pub(super) ahead: BTreeSet<u64>,
}

impl Producer {
    pub(super) fn passed(&mut self, sequence: u64) {
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
pub(super) const MOST_AHEAD: usize = 16 * 1024;

impl Shared {
    pub(super) fn new(
        pool: &PgPool,
        observer: &str,
        producers: BTreeMap<(String, u64), Producer>,
    ) -> Self {
        Self {
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
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn warn_if_unloaded(&self) {
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

    /// The writer: writes when a cursor moved, at most every [`WRITE_EVERY`] (less often
    /// while writes fail) unless asked to write now; ends once the store is dropped, having
    /// tried to write what was left.
    pub(super) async fn write_behind(self: Arc<Self>) {
        let mut failures = 0u32;
        loop {
            let (closed, pending) = {
                let state = self.lock();
                (state.closed, !state.moved.is_empty())
            };
            if pending {
                match self.write().await {
                    Ok(()) => failures = 0,
                    Err(error) => {
                        failures += 1;
                        tracing::warn!(observer = %self.observer, %error, failures, "writing the observer's cursors failed; retrying (the records of handled events are kept meanwhile)");
                    }
                }
            }
            if closed {
                return;
            }
            if pending {
                // Doubling while the database fails, up to 6.4 s.
                let pause = WRITE_EVERY * 2u32.pow(failures.min(6));
                let _ = tokio::time::timeout(pause, self.urgent.notified()).await;
            } else {
                tokio::select! {
                    () = self.moved.notified() => {}
                    () = self.urgent.notified() => {}
                }
            }
        }
    }

    pub(super) async fn write(&self) -> Result<(), sqlx::Error> {
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
