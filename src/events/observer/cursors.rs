//! [`CursorStore`]: where a plain observer keeps the last event it handled of each producer,
//! and the events it handled past it, so that an observer process that restarts resumes where
//! it stopped; and [`FileCursors`], the file-backed one.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::v1::Cursor;
use crate::Error;

/// Where a plain observer (one without a consumer group) keeps its cursors: per event RPC and
/// producer epoch, the event before which every event was handled, and the events handled
/// past it (see [`handled_ahead`](Self::handled_ahead)). An observer given one
/// ([`ObserverOptions::cursor_store`](super::ObserverOptions::cursor_store)) starts from the
/// stored cursors, so that after a restart it resumes right after the last event it handled
/// of each producer (whose epoch must have survived too: a producer opened on a directory).
///
/// Implement it to keep cursors where the handler keeps its own data: a handler that writes
/// its effects and its cursor in one database transaction handles each event exactly once,
/// even across crashes; `handled` can then do nothing, and `load` read the cursors back. With
/// the feature `postgres`, `meshless::events::postgres::PgCursors` is such a store.
/// Consumer group members do not use it: their group's position is kept by the producer.
pub trait CursorStore: Send + Sync + 'static {
    /// The cursors stored, by event RPC path (`/package.Service/Method`).
    fn load(&self) -> Result<Vec<(String, Cursor)>, Error>;

    /// Every event of event RPC `rpc` up to `cursor` was handled (of the producer whose epoch
    /// it names). Called as it moves, in order for each producer; it must not block for long.
    fn handled(&self, rpc: &str, cursor: Cursor);

    /// Event `cursor` of event RPC `rpc` was handled while an event before it was not: keyed
    /// lanes (`ObserverOptions::max_concurrent_handlers` above 1) handle the events of
    /// different keys out of order. Keep it until [`handled`](Self::handled) moves past it,
    /// and give it back with [`load_ahead`](Self::load_ahead), so that a restarted observer
    /// does not handle it again. There are at most as many as one stream holds (16 × the
    /// handler limit, at least 256) per producer. It must not block for long.
    ///
    /// The default keeps nothing: a restarted observer handles those events again.
    fn handled_ahead(&self, rpc: &str, cursor: Cursor) {
        let _ = (rpc, cursor);
    }

    /// The events stored by [`handled_ahead`](Self::handled_ahead) and not yet passed by the
    /// cursor, by event RPC path. The default: none.
    fn load_ahead(&self) -> Result<Vec<(String, Cursor)>, Error> {
        Ok(Vec::new())
    }

    /// The observer is stopping: make what was handled durable.
    fn flush(&self) {}
}

/// Cursors in a file. It keeps the events handled ahead of each cursor too, so a stopped
/// observer resumes exactly, keyed lanes or not; one that crashed handles again the events of
/// its last 50 ms at most.
///
/// The file is written (aside, synced, then renamed over the old one) by a thread of its own,
/// at most every 50 ms while events are handled, and when the observer stops
/// ([`flush`](CursorStore::flush)): recording an event costs the handler a map update, never
/// a write.
///
/// It is bounded: it keeps the 4,096 producers of which an event was handled last. A producer
/// forgotten so (an old epoch: most often a producer that restarted in memory, long ago) is
/// logged, never dropped silently; should it come back, the observer starts it at its start
/// position. A producer that publishes nothing is never forgotten for that alone: only 4,096
/// others handled since push it out.
///
/// One line per producer, `rpc epoch sequence seen` (`seen` in seconds since the Unix epoch;
/// lines without it are taken as seen when the file is opened), and one per event handled
/// ahead of its cursor, `rpc epoch +sequence`.
#[derive(Debug)]
pub struct FileCursors {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    state: Mutex<State>,
    /// Wakes the writer thread.
    changed: Condvar,
    /// Held while the file is written, so that two writes never interleave.
    writing: Mutex<()>,
}

#[derive(Debug)]
struct State {
    cursors: BTreeMap<(String, u64), Stored>,
    dirty: bool,
    /// The store is dropped: the writer thread ends.
    closed: bool,
}

/// What is stored of one producer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Stored {
    /// Every event up to it handled.
    cursor: Option<u64>,
    /// Events handled past the cursor.
    ahead: BTreeSet<u64>,
    /// When an event of it was last handled, in seconds since the Unix epoch.
    seen: u64,
}

impl Stored {
    fn passed(&mut self, sequence: u64) {
        self.cursor = self.cursor.max(Some(sequence));
        while self.ahead.first().is_some_and(|&ahead| ahead <= sequence) {
            self.ahead.pop_first();
        }
    }
}

/// The most events kept ahead of one producer's cursor: more than a stream holds (16 per
/// handler, for up to 1,024 handlers).
const MOST_AHEAD: usize = 16 * 1024;

/// The most producers kept; the ones seen longest ago are forgotten beyond.
const MAX_PRODUCERS: usize = 4096;

/// How often the file is written while events are handled.
const WRITE_EVERY: Duration = Duration::from_millis(50);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

impl FileCursors {
    /// The cursors in `path`, which is created on the first write if it does not exist.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_owned();
        let cursors = match std::fs::read_to_string(&path) {
            Ok(text) => parse(&text, now()).ok_or_else(|| {
                Error::invalid_input(format!(
                    "{} is not a cursor file (lines of `rpc epoch sequence`)",
                    path.display()
                ))
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => return Err(Error::io(format!("reading {}", path.display()), error)),
        };
        let shared = Arc::new(Shared {
            path,
            state: Mutex::new(State {
                cursors,
                dirty: false,
                closed: false,
            }),
            changed: Condvar::new(),
            writing: Mutex::new(()),
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("meshless-cursors".into())
            .spawn(move || writer.write_behind())
            .map_err(|error| Error::io("starting the cursor file's writer", error))?;
        Ok(Self { shared })
    }

    fn changed(&self, state: std::sync::MutexGuard<'_, State>) {
        let mut state = state;
        state.dirty = true;
        drop(state);
        self.shared.changed.notify_one();
    }
}

impl Drop for FileCursors {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_one();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer thread: writes whenever something changed, at most every [`WRITE_EVERY`];
    /// ends once the store is dropped (what is left is written then).
    fn write_behind(&self) {
        loop {
            let mut state = self.lock();
            while !state.dirty && !state.closed {
                state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            let closed = state.closed;
            drop(state);
            self.write_if_changed();
            if closed {
                return;
            }
            std::thread::sleep(WRITE_EVERY);
        }
    }

    fn write_if_changed(&self) {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = self.lock();
        if !state.dirty {
            return;
        }
        state.forget();
        state.dirty = false;
        let text = state.render();
        drop(state);
        let aside = self.path.with_extension("new");
        let written = std::fs::File::create(&aside)
            .and_then(|mut file| {
                file.write_all(text.as_bytes())?;
                file.sync_data()
            })
            .and_then(|()| std::fs::rename(&aside, &self.path));
        if let Err(error) = written {
            self.lock().dirty = true;
            tracing::warn!(path = %self.path.display(), %error, "writing the cursor file failed; a restarted observer may handle events again");
        }
    }
}

impl State {
    /// Forgets the producers seen longest ago beyond [`MAX_PRODUCERS`]; each is logged.
    fn forget(&mut self) {
        if self.cursors.len() <= MAX_PRODUCERS {
            return;
        }
        let mut seen: Vec<u64> = self.cursors.values().map(|stored| stored.seen).collect();
        seen.sort_unstable();
        let mut over = self.cursors.len() - MAX_PRODUCERS;
        let threshold = seen[over - 1];
        self.cursors.retain(|(rpc, epoch), stored| {
            if over == 0 || stored.seen > threshold {
                return true;
            }
            over -= 1;
            tracing::warn!(rpc, epoch, cursor = ?stored.cursor, "forgetting the cursor of a producer seen longest ago: the cursor file keeps 4096");
            false
        });
    }

    fn render(&self) -> String {
        let mut text = String::new();
        for ((rpc, epoch), stored) in &self.cursors {
            if let Some(sequence) = stored.cursor {
                text.push_str(&format!("{rpc} {epoch:#x} {sequence} {}\n", stored.seen));
            }
            for sequence in &stored.ahead {
                text.push_str(&format!("{rpc} {epoch:#x} +{sequence}\n"));
            }
        }
        text
    }
}

impl CursorStore for FileCursors {
    fn load(&self) -> Result<Vec<(String, Cursor)>, Error> {
        Ok(self
            .shared
            .lock()
            .cursors
            .iter()
            .filter_map(|((rpc, epoch), stored)| {
                let sequence = stored.cursor?;
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

    fn handled(&self, rpc: &str, cursor: Cursor) {
        let mut state = self.shared.lock();
        let stored = state
            .cursors
            .entry((rpc.to_owned(), cursor.epoch))
            .or_default();
        stored.passed(cursor.sequence);
        stored.seen = now();
        self.changed(state);
    }

    fn handled_ahead(&self, rpc: &str, cursor: Cursor) {
        let mut state = self.shared.lock();
        let stored = state
            .cursors
            .entry((rpc.to_owned(), cursor.epoch))
            .or_default();
        stored.seen = now();
        if stored
            .cursor
            .is_some_and(|passed| passed >= cursor.sequence)
        {
            return;
        }
        if stored.ahead.len() >= MOST_AHEAD {
            tracing::warn!(rpc, epoch = cursor.epoch, sequence = cursor.sequence, "too many events handled ahead of the cursor to keep; after a restart, this one is handled again");
            return;
        }
        stored.ahead.insert(cursor.sequence);
        self.changed(state);
    }

    fn load_ahead(&self) -> Result<Vec<(String, Cursor)>, Error> {
        Ok(self
            .shared
            .lock()
            .cursors
            .iter()
            .flat_map(|((rpc, epoch), stored)| {
                stored.ahead.iter().map(|&sequence| {
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

    /// Writes what changed, on the caller's thread.
    fn flush(&self) {
        self.shared.write_if_changed();
    }
}

/// The cursors in `text`; `now` is when lines without a time were seen.
fn parse(text: &str, now: u64) -> Option<BTreeMap<(String, u64), Stored>> {
    let mut cursors: BTreeMap<(String, u64), Stored> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split_whitespace();
        let rpc = fields.next()?.to_owned();
        let epoch = u64::from_str_radix(fields.next()?.strip_prefix("0x")?, 16).ok()?;
        let sequence = fields.next()?;
        let seen = fields.next().map(str::parse).transpose().ok()?;
        if fields.next().is_some() {
            return None;
        }
        let stored = cursors.entry((rpc, epoch)).or_insert_with(|| Stored {
            seen: now,
            ..Stored::default()
        });
        match sequence.strip_prefix('+') {
            Some(_) if seen.is_some() => return None,
            Some(ahead) => {
                stored.ahead.insert(ahead.parse().ok()?);
            }
            None => {
                stored.cursor = stored.cursor.max(Some(sequence.parse().ok()?));
                stored.seen = seen.unwrap_or(now);
            }
        }
    }
    for stored in cursors.values_mut() {
        if let Some(cursor) = stored.cursor {
            stored.passed(cursor);
        }
    }
    Some(cursors)
}

#[cfg(test)]
mod test;
