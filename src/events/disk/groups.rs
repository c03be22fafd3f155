//! The consumer groups of one event RPC on disk: a journal (`groups.journal`) of the changes
//! the hub reports (a group formed, events acknowledged, a group forgotten), each a
//! checksummed record, replayed on open into what each group is still owed, and rewritten
//! compact from time to time. Deliveries are not journaled: after a crash, events delivered
//! and not acknowledged are delivered again, marked as redeliveries.
//!
//! A write cut short is cut back off the file, so that the next record follows the last whole
//! one; and reading skips a record that is not valid (a partial one a crash left in the
//! middle) to the next valid one, so that it hides nothing after it.

mod codec;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::epoch;
use super::record::{self, Scanned};
use crate::events::log::{GroupChange, SavedGroup};
use codec::{decode, encode};

const FILE: &str = "groups.journal";

/// The most sequences one record of acknowledgements holds: more are split over several, so
/// that no record comes near the size limit of a record.
const ACKED_PER_RECORD: usize = 64 * 1024;

/// The groups as the journal has them, kept up to date as changes are recorded.
#[derive(Debug)]
pub(super) struct Journal {
    dir: PathBuf,
    file: File,
    /// The length of the whole records in the file.
    bytes: u64,
    /// A write failed part way and cutting it back failed too: tried again before the next.
    partial: bool,
    groups: BTreeMap<String, SavedGroup>,
    /// Records written since the journal was last rewritten.
    records: u64,
    scratch: Vec<u8>,
}

/// Reads the journal in `dir` back: the groups it describes. A record that is not valid is
/// skipped (what it held is lost: acknowledgements, so their events are delivered again).
pub(super) fn read(dir: &Path) -> std::io::Result<BTreeMap<String, SavedGroup>> {
    let data = match std::fs::read(dir.join(FILE)) {
        Ok(data) => Bytes::from(data),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Bytes::new(),
        Err(error) => return Err(error),
    };
    let mut groups = BTreeMap::new();
    let mut at = 0;
    while at < data.len() {
        if let Some((change, end)) = change_at(&data, at) {
            apply(&mut groups, change);
            at = end;
            continue;
        }
        let skipped = (at + 1..data.len()).find(|&next| change_at(&data, next).is_some());
        tracing::warn!(dir = %dir.display(), at, "the consumer group journal holds a record that is not whole; it is skipped (acknowledgements in it are lost, their events delivered again)");
        match skipped {
            Some(next) => at = next,
            None => break,
        }
    }
    Ok(groups)
}

/// The change recorded at `at` of `data`, and where the next record starts, if a valid record
/// is there (every journal record has sequence and time 0).
fn change_at(data: &Bytes, at: usize) -> Option<(GroupChange, usize)> {
    match record::scan(data, at) {
        Scanned::Record {
            sequence: 0,
            published_at: 0,
            event,
            end,
        } => Some((decode(&event)?, end)),
        _ => None,
    }
}

impl Journal {
    /// Starts the journal anew from `groups`, pruned against the oldest event retained, and
    /// without anything past `latest`, the latest event the log holds: after a recovery that
    /// kept only a prefix of the log, acknowledgements and hand-outs of events past it are of
    /// events that are gone, whose sequences new events take.
    pub(super) fn open(
        dir: &Path,
        mut groups: BTreeMap<String, SavedGroup>,
        oldest: u64,
        latest: u64,
    ) -> std::io::Result<Self> {
        for group in groups.values_mut() {
            group.acked.retain(|sequence| *sequence <= latest);
            group.handed_out = group.handed_out.min(latest);
            group.start = group.start.min(latest + 1);
            prune(group, oldest);
        }
        let (file, bytes) = rewrite(dir, &groups)?;
        Ok(Self {
            dir: dir.to_owned(),
            file,
            bytes,
            partial: false,
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
            encode_into(change, &mut self.scratch);
            apply(&mut self.groups, change.clone());
        }
        self.records += changes.len() as u64;
        if self.records > 4096 + 16 * self.groups.len() as u64 {
            for group in self.groups.values_mut() {
                prune(group, oldest);
            }
            (self.file, self.bytes) = rewrite(&self.dir, &self.groups)?;
            self.partial = false;
            self.records = 0;
            return Ok(());
        }
        self.cut_partial()?;
        if let Err(error) = self.file.write_all(&self.scratch) {
            self.partial = true;
            let _ = self.cut_partial();
            return Err(error);
        }
        self.bytes += self.scratch.len() as u64;
        if self.scratch.capacity() > 1024 * 1024 {
            self.scratch = Vec::new();
        }
        Ok(())
    }

    /// Cuts a record a failed write left part way back off the file (open for appending, so
    /// the next record then follows the last whole one).
    fn cut_partial(&mut self) -> std::io::Result<()> {
        if self.partial {
            self.file.set_len(self.bytes)?;
            self.partial = false;
        }
        Ok(())
    }

    /// Puts the journal on stable storage (when the publisher closes).
    pub(super) fn sync(&mut self) -> std::io::Result<()> {
        self.cut_partial()?;
        self.file.sync_data()
    }
}

/// Appends the records of `change` to `out`.
fn encode_into(change: &GroupChange, out: &mut Vec<u8>) {
    match change {
        GroupChange::Acked { group, sequences } if sequences.len() > ACKED_PER_RECORD => {
            for chunk in sequences.chunks(ACKED_PER_RECORD) {
                let part = GroupChange::Acked {
                    group: group.clone(),
                    sequences: chunk.to_vec(),
                };
                record::encode(0, 0, &encode(&part), out);
            }
        }
        change => record::encode(0, 0, &encode(change), out),
    }
}

/// Writes `groups` as a fresh journal (aside and synced, then renamed over the old one, and
/// the directory synced, so that a crash leaves one or the other whole) and returns it open
/// for appending, with its length.
fn rewrite(dir: &Path, groups: &BTreeMap<String, SavedGroup>) -> std::io::Result<(File, u64)> {
    let mut data = Vec::new();
    for (name, group) in groups {
        let group_name = || name.clone();
        let created = GroupChange::Created {
            group: group_name(),
            start: group.start,
        };
        encode_into(&created, &mut data);
        if group.handed_out > 0 {
            let through = group.handed_out;
            encode_into(
                &GroupChange::HandedOut {
                    group: group_name(),
                    through,
                },
                &mut data,
            );
        }
        if group.missed > 0 {
            let events = group.missed;
            encode_into(
                &GroupChange::Missed {
                    group: group_name(),
                    events,
                },
                &mut data,
            );
        }
        if !group.acked.is_empty() {
            let sequences = group.acked.iter().copied().collect();
            encode_into(
                &GroupChange::Acked {
                    group: group_name(),
                    sequences,
                },
                &mut data,
            );
        }
    }
    epoch::replace(dir, FILE, &data)?;
    let file = OpenOptions::new().append(true).open(dir.join(FILE))?;
    Ok((file, data.len() as u64))
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

#[cfg(test)]
mod test;
