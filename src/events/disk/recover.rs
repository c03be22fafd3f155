//! Reading an event RPC's log back from its segments: every record up to the first invalid
//! one is kept (the valid prefix); what follows is reported, and cut away by [`Recovered::repair`].

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::record::{self, Scanned};
use super::{epoch, groups};
use crate::events::log::Stored;
use crate::events::wire;
use crate::v1::EventMetadata;

/// What reading a log's directory back found.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(super) dir: PathBuf,
    pub(super) retain: usize,
    /// Segments by first sequence, oldest first: those holding the valid prefix.
    pub(super) segments: Vec<(u64, PathBuf)>,
    /// The last `retain` events; every event of the segments with compaction by key.
    pub(super) events: Vec<Stored>,
    /// With compaction by key: the events kept past the segments' (from their file).
    pub(super) kept: Vec<Stored>,
    /// The sequence the next event gets.
    pub(super) next: u64,
    /// Where the records stopped being valid, if they did.
    pub(crate) damage: Option<Damage>,
    /// Segments after the valid prefix, to remove.
    beyond: Vec<PathBuf>,
    /// The consumer groups, from their journal.
    pub(super) groups: groups::Saved,
}

/// Records that are not valid, after the valid prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damage {
    /// What was found, for the log.
    pub(crate) what: String,
    /// The last record of the last segment is cut short and nothing follows: what a process
    /// killed in the middle of a write leaves (or a crash of the machine).
    pub(crate) cut_tail: bool,
    /// The length of the last segment kept, to cut it back to.
    valid_bytes: u64,
}

/// Reads the log in `dir` back (creating the directory if need be), checking every record.
/// With `compact`, every event of the segments is read back (compaction picks what it keeps
/// of those past `retain`), and the events kept past them.
pub(crate) fn recover(dir: &Path, retain: usize, compact: bool) -> std::io::Result<Recovered> {
    std::fs::create_dir_all(dir)?;
    let mut segments: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            let first = name.to_str()?.strip_suffix(".log")?.parse::<u64>().ok()?;
            Some((first, entry.path()))
        })
        .collect();
    segments.sort();
    let mut events: VecDeque<Stored> = VecDeque::new();
    let mut next = segments.first().map_or(1, |(first, _)| *first);
    let mut damage = None;
    let mut kept = 0;
    let count = segments.len();
    for (index, (first, path)) in segments.iter().enumerate() {
        if *first != next {
            // The segment before ends early (lost at a crash), or this one is out of place.
            damage = Some(Damage {
                what: format!(
                    "{} should start at event {next}, not {first}",
                    path.display()
                ),
                cut_tail: false,
                valid_bytes: if index == 0 { 0 } else { u64::MAX },
            });
            break;
        }
        let data = Bytes::from(std::fs::read(path)?);
        let mut at = 0;
        kept = index + 1;
        // The records of a batch read so far, kept once its last one is whole, and where the
        // batch starts.
        let mut batch: Vec<Stored> = Vec::new();
        let mut batch_at = 0;
        let invalid = loop {
            match record::scan(&data, at) {
                Scanned::Record {
                    sequence,
                    published_at,
                    event,
                    end,
                    more,
                } if sequence == next => {
                    if batch.is_empty() {
                        batch_at = at;
                    }
                    batch.push(Stored {
                        sequence,
                        published_at,
                        key: wire::key_hash_of(&event),
                        bytes: event,
                    });
                    next += 1;
                    at = end;
                    if more {
                        continue;
                    }
                    for stored in batch.drain(..) {
                        if retain > 0 || compact {
                            if events.len() == retain && !compact {
                                events.pop_front();
                            }
                            events.push_back(stored);
                        }
                    }
                }
                Scanned::End if batch.is_empty() => break None,
                // A batch whose last record was never written: none of it was published.
                Scanned::End => break Some(("ends inside a batch".to_owned(), index + 1 == count)),
                Scanned::Record { sequence, .. } => {
                    break Some((
                        format!("holds event {sequence} where event {next} belongs"),
                        false,
                    ));
                }
                Scanned::Cut => {
                    break Some(("ends inside a record".to_owned(), index + 1 == count))
                }
                Scanned::Corrupt => break Some(("has a corrupt record".to_owned(), false)),
            }
        };
        if let Some((what, cut_tail)) = invalid {
            // What is valid ends before the batch left unfinished, if any.
            let what = if batch.is_empty() {
                format!("{what} at byte {at}")
            } else {
                next -= batch.len() as u64;
                at = batch_at;
                format!("{what}, inside a batch from event {next} at byte {at}")
            };
            damage = Some(Damage {
                what: format!("{} {what} of {}", path.display(), data.len()),
                cut_tail,
                valid_bytes: at as u64,
            });
            break;
        }
    }
    let beyond = segments
        .split_off(kept)
        .into_iter()
        .map(|(_, path)| path)
        .collect();
    let groups = groups::read(dir)?;
    let kept = if compact {
        super::kept::read(dir, segments.first().map_or(next, |(first, _)| *first))?
    } else {
        Vec::new()
    };
    Ok(Recovered {
        dir: dir.to_owned(),
        retain,
        segments,
        events: events.into(),
        kept,
        next,
        damage,
        beyond,
        groups,
    })
}

impl Recovered {
    /// Cuts what follows the valid prefix away: the last segment kept back to its last valid
    /// record, and the segments after it removed.
    pub(crate) fn repair(&mut self) -> std::io::Result<()> {
        let Some(damage) = self.damage.take() else {
            return Ok(());
        };
        if let (Some((_, last)), true) = (self.segments.last(), damage.valid_bytes != u64::MAX) {
            let file = std::fs::OpenOptions::new().write(true).open(last)?;
            file.set_len(damage.valid_bytes)?;
            file.sync_all()?;
        }
        for path in self.beyond.drain(..) {
            std::fs::remove_file(path)?;
        }
        epoch::sync_dir(&self.dir)
    }

    /// Forgets every event and segment: the log starts over (under a new epoch).
    pub(crate) fn discard(&mut self) -> std::io::Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| {
                ["log", "journal", "base", "tail", "kept"]
                    .iter()
                    .any(|x| e == *x)
            }) {
                std::fs::remove_file(path)?;
            }
        }
        epoch::sync_dir(&self.dir)?;
        self.segments.clear();
        self.beyond.clear();
        self.events.clear();
        self.kept.clear();
        self.next = 1;
        self.damage = None;
        self.groups = groups::Saved::default();
        Ok(())
    }

    /// Whether the log holds any event.
    pub(crate) fn is_empty(&self) -> bool {
        self.next == 1
    }

    /// The latest event kept; 0 for none.
    pub(crate) fn latest(&self) -> u64 {
        self.next - 1
    }
}

/// The event as `epoch` serves it: events kept from an epoch it continues carry that epoch
/// in their stored metadata, so a second occurrence of the metadata field (which merges)
/// names the epoch that serves them now.
pub(super) fn restamp(mut event: Stored, epoch: u64) -> Stored {
    let stored = metadata_of(&event.bytes).epoch;
    if stored != 0 && stored != epoch {
        let field = wire::encode_metadata_field(&EventMetadata {
            epoch,
            ..EventMetadata::default()
        });
        let mut bytes = Vec::with_capacity(event.bytes.len() + field.len());
        bytes.extend_from_slice(&event.bytes);
        bytes.extend_from_slice(&field);
        event.bytes = Bytes::from(bytes);
    }
    event
}

/// The metadata of a stored event (empty if it is unreadable, which its checksum rules out).
fn metadata_of(event: &[u8]) -> EventMetadata {
    use prost::Message;
    wire::Envelope::<()>::decode(event)
        .ok()
        .and_then(|envelope| envelope.into_parts())
        .map(|(_, metadata)| metadata)
        .unwrap_or_default()
}
