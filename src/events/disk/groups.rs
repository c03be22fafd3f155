//! The consumer groups of one event RPC on disk: a journal (`groups.journal`) of the changes
//! the hub reports (a group formed, events acknowledged, a group forgotten), each a
//! checksummed record, replayed on open into what each group is still owed, and rewritten
//! compact from time to time. Deliveries are not journaled: after a crash, events delivered
//! and not acknowledged are delivered again, marked as redeliveries.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::record::{self, Scanned};
use crate::events::log::{GroupChange, SavedGroup};

const FILE: &str = "groups.journal";

/// The groups as the journal has them, kept up to date as changes are recorded.
#[derive(Debug)]
pub(super) struct Journal {
    path: PathBuf,
    file: File,
    groups: BTreeMap<String, SavedGroup>,
    /// Records written since the journal was last rewritten.
    records: u64,
    scratch: Vec<u8>,
}

/// Reads the journal in `dir` back: the groups it describes. A torn tail is where it ends
/// (what it held was acknowledgements, so their events are delivered again).
pub(super) fn read(dir: &Path) -> std::io::Result<BTreeMap<String, SavedGroup>> {
    let data = match std::fs::read(dir.join(FILE)) {
        Ok(data) => Bytes::from(data),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Bytes::new(),
        Err(error) => return Err(error),
    };
    let mut groups = BTreeMap::new();
    let mut at = 0;
    loop {
        match record::scan(&data, at) {
            Scanned::Record { event, end, .. } => {
                match decode(&event) {
                    Some(change) => apply(&mut groups, change),
                    None => {
                        tracing::warn!(dir = %dir.display(), "an unreadable consumer group record; the journal is read up to it");
                        break;
                    }
                }
                at = end;
            }
            Scanned::End => break,
            Scanned::Torn => {
                tracing::warn!(dir = %dir.display(), at, "the consumer group journal ends with a torn record; acknowledgements in it are lost, their events delivered again");
                break;
            }
        }
    }
    Ok(groups)
}

impl Journal {
    /// Starts the journal anew from `groups` (pruned against the oldest event retained).
    pub(super) fn open(
        dir: &Path,
        mut groups: BTreeMap<String, SavedGroup>,
        oldest: u64,
    ) -> std::io::Result<Self> {
        for group in groups.values_mut() {
            prune(group, oldest);
        }
        let path = dir.join(FILE);
        let file = rewrite(&path, &groups)?;
        Ok(Self {
            path,
            file,
            groups,
            records: 0,
            scratch: Vec::new(),
        })
    }

    /// The groups, as the hub restores them.
    pub(super) fn groups(&self) -> Vec<(String, SavedGroup)> {
        self.groups
            .iter()
            .map(|(name, group)| (name.clone(), group.clone()))
            .collect()
    }

    /// Appends `changes`; past a bound, rewrites the journal compact, `oldest` being the
    /// oldest event retained.
    pub(super) fn record(&mut self, changes: &[GroupChange], oldest: u64) -> std::io::Result<()> {
        self.scratch.clear();
        for change in changes {
            record::encode(0, 0, &encode(change), &mut self.scratch);
            apply(&mut self.groups, change.clone());
        }
        self.file.write_all(&self.scratch)?;
        self.records += changes.len() as u64;
        if self.records > 4096 + 16 * self.groups.len() as u64 {
            for group in self.groups.values_mut() {
                prune(group, oldest);
            }
            self.file = rewrite(&self.path, &self.groups)?;
            self.records = 0;
        }
        Ok(())
    }
}

/// Writes `groups` as a fresh journal (aside, then renamed over the old one) and returns it
/// open for appending.
fn rewrite(path: &Path, groups: &BTreeMap<String, SavedGroup>) -> std::io::Result<File> {
    let mut data = Vec::new();
    for (name, group) in groups {
        let created = GroupChange::Created {
            group: name.clone(),
            start: group.start,
        };
        record::encode(0, 0, &encode(&created), &mut data);
        if group.handed_out > 0 {
            let handed_out = GroupChange::HandedOut {
                group: name.clone(),
                through: group.handed_out,
            };
            record::encode(0, 0, &encode(&handed_out), &mut data);
        }
        if group.missed > 0 {
            let missed = GroupChange::Missed {
                group: name.clone(),
                events: group.missed,
            };
            record::encode(0, 0, &encode(&missed), &mut data);
        }
        if !group.acked.is_empty() {
            let acked = GroupChange::Acked {
                group: name.clone(),
                sequences: group.acked.iter().copied().collect(),
            };
            record::encode(0, 0, &encode(&acked), &mut data);
        }
    }
    let aside = path.with_extension("journal.new");
    std::fs::write(&aside, &data)?;
    std::fs::rename(&aside, path)?;
    OpenOptions::new().append(true).open(path)
}

fn apply(groups: &mut BTreeMap<String, SavedGroup>, change: GroupChange) {
    match change {
        GroupChange::Created { group, start } => {
            groups.insert(
                group,
                SavedGroup {
                    start,
                    ..SavedGroup::default()
                },
            );
        }
        GroupChange::Acked { group, sequences } => {
            if let Some(saved) = groups.get_mut(&group) {
                saved.acked.extend(sequences);
            }
        }
        GroupChange::Missed { group, events } => {
            if let Some(saved) = groups.get_mut(&group) {
                saved.missed += events;
            }
        }
        GroupChange::HandedOut { group, through } => {
            if let Some(saved) = groups.get_mut(&group) {
                saved.handed_out = saved.handed_out.max(through);
            }
        }
        GroupChange::Forgotten { group } => {
            groups.remove(&group);
        }
    }
}

/// Keeps a group's record small: the events acknowledged from its start on move the start;
/// what it was owed that is no longer retained becomes a count of missed events.
fn prune(group: &mut SavedGroup, oldest: u64) {
    while group.acked.remove(&group.start) {
        group.start += 1;
    }
    if group.start < oldest {
        let acked_gone = group.acked.range(..oldest).count() as u64;
        group.missed += oldest - group.start - acked_gone;
        group.acked = group.acked.split_off(&oldest);
        group.start = oldest;
        while group.acked.remove(&group.start) {
            group.start += 1;
        }
    }
}

const CREATED: u8 = 1;
const ACKED: u8 = 2;
const FORGOTTEN: u8 = 3;
const MISSED: u8 = 4;
const HANDED_OUT: u8 = 5;

fn encode(change: &GroupChange) -> Vec<u8> {
    let mut out = Vec::new();
    let name = |tag: u8, group: &str, out: &mut Vec<u8>| {
        out.push(tag);
        let bytes = group.as_bytes();
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    };
    match change {
        GroupChange::Created { group, start } => {
            name(CREATED, group, &mut out);
            out.extend_from_slice(&start.to_le_bytes());
        }
        GroupChange::Acked { group, sequences } => {
            name(ACKED, group, &mut out);
            out.extend_from_slice(&(sequences.len() as u32).to_le_bytes());
            for sequence in sequences {
                out.extend_from_slice(&sequence.to_le_bytes());
            }
        }
        GroupChange::Missed { group, events } => {
            name(MISSED, group, &mut out);
            out.extend_from_slice(&events.to_le_bytes());
        }
        GroupChange::HandedOut { group, through } => {
            name(HANDED_OUT, group, &mut out);
            out.extend_from_slice(&through.to_le_bytes());
        }
        GroupChange::Forgotten { group } => name(FORGOTTEN, group, &mut out),
    }
    out
}

fn decode(data: &[u8]) -> Option<GroupChange> {
    let (&tag, rest) = data.split_first()?;
    let length = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let group = String::from_utf8(rest.get(4..4 + length)?.to_vec()).ok()?;
    let rest = rest.get(4 + length..)?;
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(rest.get(at..at + 8)?.try_into().ok()?))
    };
    Some(match tag {
        CREATED => GroupChange::Created {
            group,
            start: u64_at(0)?,
        },
        MISSED => GroupChange::Missed {
            group,
            events: u64_at(0)?,
        },
        HANDED_OUT => GroupChange::HandedOut {
            group,
            through: u64_at(0)?,
        },
        FORGOTTEN => GroupChange::Forgotten { group },
        ACKED => {
            let count = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let rest = rest.get(4..)?;
            if rest.len() != count.checked_mul(8)? {
                return None;
            }
            GroupChange::Acked {
                group,
                sequences: rest
                    .chunks_exact(8)
                    .map(|chunk| u64::from_le_bytes(chunk.try_into().unwrap_or_default()))
                    .collect(),
            }
        }
        _ => return None,
    })
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn changes_read_back_as_they_were_recorded() {
        for change in [
            GroupChange::Created {
                group: "mailers".into(),
                start: 7,
            },
            GroupChange::Acked {
                group: "mailers".into(),
                sequences: vec![7, 9, 12],
            },
            GroupChange::Missed {
                group: "g".into(),
                events: 3,
            },
            GroupChange::HandedOut {
                group: "g".into(),
                through: 99,
            },
            GroupChange::Forgotten { group: "g".into() },
        ] {
            assert_eq!(decode(&encode(&change)), Some(change));
        }
        assert_eq!(decode(&[ACKED, 1, 0, 0, 0, b'g', 2, 0, 0, 0]), None);
    }

    #[test]
    fn pruning_moves_the_start_past_what_was_acknowledged_and_counts_what_is_gone() {
        let mut group = SavedGroup {
            start: 1,
            acked: [1, 2, 3, 5, 8].into(),
            ..SavedGroup::default()
        };
        prune(&mut group, 1);
        assert_eq!((group.start, group.acked.len()), (4, 2));
        // Events 4..7 left the log: 4, 6 and 7 were owed and are lost; 5 was handled.
        prune(&mut group, 8);
        assert_eq!(group.missed, 3);
        assert_eq!(group.start, 9);
        assert!(group.acked.is_empty());
    }
}
