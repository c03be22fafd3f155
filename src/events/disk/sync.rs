//! [`Syncer`]: the log's work beside the publish path, on one thread per log.
//!
//! - Group commit: publishers that must know their event is on stable storage ask for a sync
//!   and wait; one `fdatasync` covers every event written before it started, however many
//!   waited.
//! - Segment rolls: the next segment is created ahead (a spare), so that a roll under the
//!   publisher's lock is a rename; the segment rolled away from is synced here, the directory
//!   too, and segments older than retention are removed here.
//! - Chores the journal of consumer groups hands over (its compaction).

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::watch;

use super::epoch;
use crate::events::log::LastError;

/// The name of the segment created ahead, in the log's folder.
pub(super) const SPARE: &str = "next.spare";

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

/// Work for the thread.
pub(super) type Chore = Box<dyn FnOnce() + Send>;

struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
    wake: Condvar,
    synced: watch::Sender<Synced>,
    /// Syncs run so far, for tests and metrics.
    syncs: AtomicU64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Writing the events kept by compaction failed: no segment is removed until the next open.
    kept_failed: std::sync::atomic::AtomicBool,
    /// The log's last error, from this thread or the publish path.
    errors: LastError,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// The segment being written.
    file: Option<Arc<File>>,
    /// The latest sequence written.
    written: u64,
    /// A durable publish waits.
    requested: bool,
    /// Segments rolled away from and not synced yet, each with its last event.
    rolled: Vec<(Arc<File>, u64)>,
    /// The directory's entries changed (a segment renamed into place) since its last sync.
    renamed: bool,
    /// Segments older than retention, to remove.
    old: Vec<PathBuf>,
    /// With compaction by key: the changes to the file of kept events, made before any of
    /// `old` is removed (see `kept`).
    kept: Vec<super::kept::Write>,
    /// The next segment, created ahead.
    spare: Option<File>,
    /// A spare is to be made (the last was taken, or a roll found none).
    spare_wanted: bool,
    chores: Vec<Chore>,
    closed: bool,
}

impl State {
    fn has_work(&self) -> bool {
        self.requested
            || !self.rolled.is_empty()
            || !self.old.is_empty()
            || !self.kept.is_empty()
            || !self.chores.is_empty()
            || (self.spare_wanted && self.spare.is_none())
    }
}

impl Syncer {
    /// Starts the thread of the log of `name` in `dir`, whose events up to `synced` are on
    /// stable storage and whose current segment is `file`.
    pub(crate) fn start(
        name: &str,
        dir: PathBuf,
        file: Arc<File>,
        synced: u64,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            dir,
            state: Mutex::new(State {
                file: Some(file),
                written: synced,
                spare_wanted: true,
                ..State::default()
            }),
            wake: Condvar::new(),
            synced: watch::Sender::new(Synced {
                sequence: synced,
                error: None,
            }),
            syncs: AtomicU64::new(0),
            thread: Mutex::new(None),
            kept_failed: std::sync::atomic::AtomicBool::new(false),
            errors: LastError::default(),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("meshless-sync {name}"))
            .spawn(move || run(&thread_shared))?;
        *shared.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
        Ok(Self { shared })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.shared)
    }

    /// Event `sequence` was written to the current segment.
    pub(crate) fn written(&self, sequence: u64) {
        self.lock().written = sequence;
    }

    /// The segment created ahead, if it is ready, for a roll.
    /// (With none ready, the thread is asked for one: it creates the next only once the one
    /// taken was renamed into place, see `rolled`, or given back.)
    pub(super) fn take_spare(&self) -> Option<File> {
        let mut state = self.lock();
        let spare = state.spare.take();
        if spare.is_none() {
            state.spare_wanted = true;
            drop(state);
            self.shared.wake.notify_one();
        }
        spare
    }

    /// Gives back a spare a roll could not rename into place.
    pub(super) fn give_back_spare(&self, spare: File) {
        self.lock().spare = Some(spare);
    }

    /// The log moved on to segment `file` (the spare, renamed into place); `old` (whose last
    /// event is `last`) is to be synced, and `remove` removed, once the events kept past them
    /// (with compaction by key) are written.
    pub(super) fn rolled(
        &self,
        file: Arc<File>,
        old: Arc<File>,
        last: u64,
        (remove, kept): (Vec<PathBuf>, Option<super::kept::Write>),
    ) {
        let mut state = self.lock();
        state.file = Some(file);
        state.rolled.push((old, last));
        state.renamed = true;
        state.spare_wanted = true;
        state.old.extend(remove);
        state.kept.extend(kept);
        drop(state);
        self.shared.wake.notify_one();
    }

    /// Runs `chore` on the thread.
    pub(super) fn chore(&self, chore: Chore) {
        self.lock().chores.push(chore);
        self.shared.wake.notify_one();
    }

    /// Keeps `error` as the log's last error (see [`LastError`]): `what` failed.
    pub(super) fn report(&self, what: &str, error: &dyn std::fmt::Display) {
        self.shared.errors.set(what, error);
    }

    /// The log's last error, if any.
    pub(super) fn last_error(&self) -> Option<String> {
        self.shared.errors.get()
    }

    /// The record of the log's last error, for work that does not hold the syncer.
    pub(super) fn errors(&self) -> LastError {
        self.shared.errors.clone()
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
        self.lock().requested = true;
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

    /// Ends the thread once the work handed to it is done (the segments rolled away from
    /// synced, old ones removed, chores run), and waits for it.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.shared.wake.notify_one();
        let thread = self
            .shared
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = thread {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, State> {
    // Every update of the state is complete before it can panic: poisoning is harmless.
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

fn fail(shared: &Shared, error: &std::io::Error) {
    tracing::error!(dir = %shared.dir.display(), %error, "syncing the event log failed; durable publishes fail from now on");
    shared.errors.set("syncing the event log", error);
    shared.synced.send_modify(|synced| {
        synced.error = Some(format!("syncing the event log: {error}").into());
    });
}

fn run(shared: &Shared) {
    loop {
        let (taken, needs_spare) = {
            let mut state = lock(shared);
            while !state.has_work() && !state.closed {
                state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            let needs_spare = !state.closed && state.spare_wanted && state.spare.is_none();
            // Asked again by the next roll that finds none, if this attempt fails.
            state.spare_wanted = false;
            let taken = State {
                file: state.file.clone(),
                written: state.written,
                requested: std::mem::take(&mut state.requested),
                rolled: std::mem::take(&mut state.rolled),
                renamed: std::mem::take(&mut state.renamed),
                old: std::mem::take(&mut state.old),
                kept: std::mem::take(&mut state.kept),
                spare: None,
                spare_wanted: false,
                chores: std::mem::take(&mut state.chores),
                closed: state.closed,
            };
            (taken, needs_spare)
        };
        let closing = taken.closed;
        let chores = work(shared, taken);
        if needs_spare {
            match make_spare(&shared.dir) {
                Ok(spare) => lock(shared).spare = Some(spare),
                Err(error) => {
                    tracing::warn!(dir = %shared.dir.display(), %error, "creating the next segment of the event log failed; tried again at the next roll");
                    shared.errors.set("creating the next segment", &error);
                }
            }
        }
        for chore in chores {
            chore();
        }
        if closing {
            return;
        }
    }
}

/// Syncs what was rolled away from (and the current segment if a publisher waits), then
/// the directory, and then removes old segments; returns the chores to run.
fn work(shared: &Shared, state: State) -> Vec<Chore> {
    let mut reached = 0;
    let mut result = Ok(());
    for (file, last) in &state.rolled {
        result = result.and_then(|()| sync_data(file));
        reached = *last;
    }
    if state.requested || state.closed {
        if let Some(file) = &state.file {
            result = result.and_then(|()| sync_data(file));
            reached = state.written;
        }
    }
    if state.renamed {
        result = result.and_then(|()| epoch::sync_dir(&shared.dir));
    }
    if !state.rolled.is_empty() || state.requested || state.closed {
        shared.syncs.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => shared
                .synced
                .send_modify(|synced| synced.sequence = synced.sequence.max(reached)),
            Err(error) => fail(shared, &error),
        }
    }
    if shared.kept_failed.load(Ordering::Relaxed) {
        return state.chores;
    }
    if let Err(error) = super::kept::apply(&shared.dir, &state.kept) {
        shared.kept_failed.store(true, Ordering::Relaxed);
        tracing::warn!(dir = %shared.dir.display(), %error, "writing the events kept by compaction failed; no segment is removed until the log is opened again");
        shared
            .errors
            .set("writing the events kept by compaction", &error);
        return state.chores;
    }
    if !state.old.is_empty() {
        for path in &state.old {
            if let Err(error) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), %error, "removing an old segment of the event log failed; it is removed at the next open");
                shared.errors.set("removing an old segment", &error);
            }
        }
        let _ = epoch::sync_dir(&shared.dir);
    }
    state.chores
}

/// Creates the next segment ahead, empty, and makes its entry durable.
fn make_spare(dir: &std::path::Path) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(SPARE))?;
    file.set_len(0)?;
    epoch::sync_dir(dir)?;
    Ok(file)
}

/// `fdatasync`, counted.
pub(super) fn sync_data(file: &File) -> std::io::Result<()> {
    counted();
    file.sync_data()
}

/// Counts a sync (of a file or a directory) per thread in tests, to show what the publish
/// path syncs.
pub(super) fn counted() {
    #[cfg(test)]
    SYNCS_ON_THIS_THREAD.with(|syncs| syncs.set(syncs.get() + 1));
}

#[cfg(test)]
thread_local! {
    /// The syncs run on this thread.
    pub(super) static SYNCS_ON_THIS_THREAD: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}
