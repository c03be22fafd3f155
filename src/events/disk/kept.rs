//! The events an event RPC with compaction by key keeps past its retained ones, in the file
//! `compacted.kept` of its folder: the same records as a segment's, in sequence order.
//!
//! Before segments are removed, the events of theirs that are kept are appended to the file
//! and synced; once more of its records are superseded than kept, the file is replaced whole
//! instead (written aside, synced, renamed, the folder synced), so that writing it costs a
//! constant per kept event over time. A crash at any point leaves the segments whose kept
//! events may not be in the file: the kept events are read back from the file, then from the
//! segments, and each event supersedes the earlier ones of its key. A failed append is cut
//! off again; after a failure nothing more is written to the file, and no segment removed,
//! until the log is opened again, which replaces the file.

use std::io::Write as _;
use std::path::Path;

use bytes::Bytes;

use super::epoch;
use super::record::{self, Scanned};
use crate::events::log::Stored;
use crate::events::wire;

/// The file's name in the event RPC's folder.
pub(super) const FILE: &str = "compacted.kept";

/// A change to the file, for the sync thread to make before it removes segments.
#[derive(Debug)]
pub(crate) enum Write {
    /// The kept events of the segments removed.
    Append(Vec<Stored>),
    /// Every kept event.
    Replace(Vec<Stored>),
}

/// Makes `writes`, in order, to the file of `dir`.
pub(super) fn apply(dir: &Path, writes: &[Write]) -> std::io::Result<()> {
    for write in writes {
        match write {
            Write::Replace(events) => store(dir, events)?,
            Write::Append(events) => append(dir, events)?,
        }
    }
    Ok(())
}

/// Appends `events` to the file of `dir` and syncs it; on failure, cuts the file back.
fn append(dir: &Path, events: &[Stored]) -> std::io::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let path = dir.join(FILE);
    let existed = path.exists();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let length = file.metadata()?.len();
    let mut data = Vec::new();
    for event in events {
        record::encode(event.sequence, event.published_at, &event.bytes, &mut data);
    }
    if let Err(error) = (&file).write_all(&data).and_then(|()| file.sync_data()) {
        let _ = file.set_len(length);
        return Err(error);
    }
    if !existed {
        epoch::sync_dir(dir)?;
    }
    Ok(())
}

/// Replaces the file of `dir` with `events`.
pub(super) fn store(dir: &Path, events: &[Stored]) -> std::io::Result<()> {
    let mut data = Vec::with_capacity(events.iter().map(|e| e.bytes.len() + 24).sum());
    for event in events {
        record::encode(event.sequence, event.published_at, &event.bytes, &mut data);
    }
    epoch::replace(dir, FILE, &data)
}

/// The events the file of `dir` keeps from before sequence `before` (where the segments
/// start), oldest first; none when there is no file. A record that is not valid ends what is
/// read (the file was synced before it was renamed into place: a disk fault), with a warning.
pub(super) fn read(dir: &Path, before: u64) -> std::io::Result<Vec<Stored>> {
    let data = match std::fs::read(dir.join(FILE)) {
        Ok(data) => Bytes::from(data),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut events = Vec::new();
    let mut at = 0;
    loop {
        match record::scan(&data, at) {
            Scanned::Record {
                sequence,
                published_at,
                event,
                end,
                ..
            } => {
                if sequence < before {
                    events.push(Stored {
                        sequence,
                        published_at,
                        key: wire::key_hash_of(&event),
                        bytes: event,
                    });
                }
                at = end;
            }
            Scanned::End => return Ok(events),
            Scanned::Cut | Scanned::Corrupt => {
                tracing::warn!(path = %dir.join(FILE).display(), at, "the events kept by compaction hold a record that is not valid; the events after it are lost");
                return Ok(events);
            }
        }
    }
}
