//! [`CursorStore`]: where a plain observer keeps the last event it handled of each producer,
//! and the events it handled past it, so that an observer process that restarts resumes where
//! it stopped; and [`FileCursors`], the file-backed one.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
/// even across crashes; `handled` can then do nothing, and `load` read the cursors back.
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

/// Cursors in a file: written (aside, then renamed over the old one) at most every 50 ms while
/// events are handled, and when the observer stops. It keeps the events handled ahead of each
/// cursor too, so a stopped observer resumes exactly, keyed lanes or not; one that crashed
/// handles again the events of its last 50 ms at most.
///
/// One line per producer, `rpc epoch sequence`, and one per event handled ahead of its
/// cursor, `rpc epoch +sequence`.
#[derive(Debug)]
pub struct FileCursors {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    cursors: BTreeMap<(String, u64), Stored>,
    written: Instant,
    dirty: bool,
}

/// What is stored of one producer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Stored {
    /// Every event up to it handled.
    cursor: Option<u64>,
    /// Events handled past the cursor.
    ahead: BTreeSet<u64>,
}

impl Stored {
    fn passed(&mut self, sequence: u64) {
        self.cursor = self.cursor.max(Some(sequence));
        while self.ahead.first().is_some_and(|&ahead| ahead <= sequence) {
            self.ahead.pop_first();
        }
    }
}

/// The most events kept ahead of one producer's cursor: far more than a stream holds.
const MOST_AHEAD: usize = 1 << 16;

/// How often the file is written while events are handled.
const WRITE_EVERY: Duration = Duration::from_millis(50);

impl FileCursors {
    /// The cursors in `path`, which is created on the first write if it does not exist.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_owned();
        let cursors = match std::fs::read_to_string(&path) {
            Ok(text) => parse(&text).ok_or_else(|| {
                Error::invalid_input(format!(
                    "{} is not a cursor file (lines of `rpc epoch sequence`)",
                    path.display()
                ))
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => return Err(Error::io(format!("reading {}", path.display()), error)),
        };
        Ok(Self {
            path,
            state: Mutex::new(State {
                cursors,
                written: Instant::now(),
                dirty: false,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Something changed: written if the last write is old enough.
    fn changed(&self, state: &mut State) {
        state.dirty = true;
        if state.written.elapsed() >= WRITE_EVERY {
            self.write(state);
        }
    }

    fn write(&self, state: &mut State) {
        let mut text = String::new();
        for ((rpc, epoch), stored) in &state.cursors {
            if let Some(sequence) = stored.cursor {
                text.push_str(&format!("{rpc} {epoch:#x} {sequence}\n"));
            }
            for sequence in &stored.ahead {
                text.push_str(&format!("{rpc} {epoch:#x} +{sequence}\n"));
            }
        }
        let aside = self.path.with_extension("new");
        let written = std::fs::File::create(&aside)
            .and_then(|mut file| {
                file.write_all(text.as_bytes())?;
                file.sync_data()
            })
            .and_then(|()| std::fs::rename(&aside, &self.path));
        match written {
            Ok(()) => state.dirty = false,
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "writing the cursor file failed; a restarted observer may handle events again");
            }
        }
        state.written = Instant::now();
    }
}

impl CursorStore for FileCursors {
    fn load(&self) -> Result<Vec<(String, Cursor)>, Error> {
        Ok(self
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
        let mut state = self.lock();
        state
            .cursors
            .entry((rpc.to_owned(), cursor.epoch))
            .or_default()
            .passed(cursor.sequence);
        self.changed(&mut state);
    }

    fn handled_ahead(&self, rpc: &str, cursor: Cursor) {
        let mut state = self.lock();
        let stored = state
            .cursors
            .entry((rpc.to_owned(), cursor.epoch))
            .or_default();
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
        self.changed(&mut state);
    }

    fn load_ahead(&self) -> Result<Vec<(String, Cursor)>, Error> {
        Ok(self
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

    fn flush(&self) {
        let mut state = self.lock();
        if state.dirty {
            self.write(&mut state);
        }
    }
}

fn parse(text: &str) -> Option<BTreeMap<(String, u64), Stored>> {
    let mut cursors: BTreeMap<(String, u64), Stored> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split_whitespace();
        let rpc = fields.next()?.to_owned();
        let epoch = u64::from_str_radix(fields.next()?.strip_prefix("0x")?, 16).ok()?;
        let sequence = fields.next()?;
        if fields.next().is_some() {
            return None;
        }
        let stored = cursors.entry((rpc, epoch)).or_default();
        match sequence.strip_prefix('+') {
            Some(ahead) => {
                stored.ahead.insert(ahead.parse().ok()?);
            }
            None => stored.cursor = stored.cursor.max(Some(sequence.parse().ok()?)),
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
