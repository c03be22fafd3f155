//! The events an event RPC with compaction by key keeps past its retained ones, in the file
//! `compacted.kept` of its folder: the same records as a segment's, oldest first.
//!
//! The file is replaced whole (written aside, synced, renamed, the folder synced) before the
//! segments that held its events are removed, so that a crash at any point leaves either the
//! old file with those segments or the new one: the kept events are read back from the file,
//! then from the segments, which supersede what they must.

use std::path::Path;

use bytes::Bytes;

use super::epoch;
use super::record::{self, Scanned};
use crate::events::log::Stored;
use crate::events::wire;

/// The file's name in the event RPC's folder.
pub(super) const FILE: &str = "compacted.kept";

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
