//! [`Syncer`]: group commit. Publishers that must know their event is on stable storage ask
//! for a sync and wait; one thread per log runs `fdatasync`, and one sync covers every event
//! written before it started, however many waited.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::watch;

/// How far the log is known to be on stable storage.
#[derive(Debug, Clone, Default)]
pub(crate) struct Synced {
    /// Every event up to this sequence is synced.
    pub(crate) sequence: u64,
    /// Why syncing failed: after a failed `fdatasync` nothing written since the last good
    /// one can be trusted to be on disk, so the failure stays.
    pub(crate) error: Option<Arc<str>>,
}

/// The handle publishers wait on.
#[derive(Debug, Clone)]
pub(crate) struct Syncer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    synced: watch::Sender<Synced>,
    /// Syncs run so far, for tests and metrics.
    syncs: AtomicU64,
}

#[derive(Debug)]
struct State {
    /// The segment being written.
    file: Arc<File>,
    /// The latest sequence written to it (or to a segment before it, synced when it rolled).
    written: u64,
    requested: bool,
    closed: bool,
}

impl Syncer {
    /// Starts the sync thread for the log of `name`, whose events up to `synced` are on
    /// stable storage and whose current segment is `file`.
    pub(crate) fn start(name: &str, file: Arc<File>, synced: u64) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                file,
                written: synced,
                requested: false,
                closed: false,
            }),
            wake: Condvar::new(),
            synced: watch::Sender::new(Synced {
                sequence: synced,
                error: None,
            }),
            syncs: AtomicU64::new(0),
        });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("meshless-sync {name}"))
            .spawn(move || run(&thread_shared))?;
        Ok(Self { shared })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.shared)
    }

    /// Event `sequence` was written to the current segment.
    pub(crate) fn written(&self, sequence: u64) {
        self.lock().written = sequence;
    }

    /// The log moved on to a new segment; everything before it is synced already.
    pub(crate) fn rolled(&self, file: Arc<File>, synced_through: u64) {
        self.lock().file = file;
        self.shared.synced.send_modify(|synced| {
            synced.sequence = synced.sequence.max(synced_through);
        });
    }

    /// A sync outside the thread failed (a segment's at a roll): as after any failed sync,
    /// durable publishes fail from now on.
    pub(crate) fn failed(&self, error: &std::io::Error) {
        tracing::error!(%error, "syncing the event log failed; durable publishes fail from now on");
        self.shared.synced.send_modify(|synced| {
            synced.error = Some(format!("syncing the event log: {error}").into());
        });
    }

    /// Whether a sync failed.
    pub(crate) fn has_failed(&self) -> bool {
        self.shared.synced.borrow().error.is_some()
    }

    /// Waits until event `sequence` is on stable storage.
    pub(crate) async fn wait(&self, sequence: u64) -> Result<(), Arc<str>> {
        let mut synced = self.shared.synced.subscribe();
        {
            let now = synced.borrow();
            if let Some(error) = &now.error {
                return Err(error.clone());
            }
            if now.sequence >= sequence {
                return Ok(());
            }
        }
        {
            let mut state = self.lock();
            state.requested = true;
        }
        self.shared.wake.notify_one();
        let reached = synced
            .wait_for(|s| s.sequence >= sequence || s.error.is_some())
            .await;
        match reached {
            Ok(now) => match &now.error {
                Some(error) if now.sequence < sequence => Err(error.clone()),
                _ => Ok(()),
            },
            Err(_) => Err("the event log was closed before the event was synced".into()),
        }
    }

    /// How many syncs have run.
    pub(crate) fn syncs(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    /// Ends the sync thread once the syncs asked for are done.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, State> {
    // Every update of the state is a single assignment: poisoning is harmless.
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

fn run(shared: &Shared) {
    loop {
        let (file, target) = {
            let mut state = lock(shared);
            while !state.requested && !state.closed {
                state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if !state.requested {
                return;
            }
            state.requested = false;
            (state.file.clone(), state.written)
        };
        let result = file.sync_data();
        shared.syncs.fetch_add(1, Ordering::Relaxed);
        shared.synced.send_modify(|synced| match result {
            Ok(()) => synced.sequence = synced.sequence.max(target),
            Err(error) => {
                tracing::error!(%error, "syncing the event log failed; durable publishes fail from now on");
                synced.error = Some(format!("syncing the event log: {error}").into());
            }
        });
    }
}
