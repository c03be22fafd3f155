//! The consumer groups of one event RPC on disk: a journal of the changes the hub reports (a
//! group formed, events acknowledged, a group forgotten), each a checksummed record,
//! replayed on open into what each group is still owed. Deliveries are not journaled: after
//! a crash, events delivered and not acknowledged are delivered again, marked as
//! redeliveries.
//!
//! Files: a base, `groups-<g>.base`, the groups as they stood when tail `g` ended, and tails,
//! `groups-<n>.tail`, the changes since, replayed after the base for `n > g`. (`groups.journal`,
//! of earlier versions, is a base for `g = 0`.) Changes are appended to the latest tail. To
//! compact, the publish path only renames a tail created ahead (`groups.spare`) into place
//! and hands a copy of the groups to the log's sync thread, which writes it as the next base
//! (synced, then renamed, then the directory synced) and removes what it replaces.
//!
//! A write cut short is cut back off the file, so that the next record follows the last whole
//! one; and reading skips a record that is not valid (a partial one a crash left in the
//! middle) to the next valid one, so that it hides nothing after it.

mod codec;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::epoch;
use super::record::{self, Scanned};
use super::sync::Syncer;
use crate::events::log::{GroupChange, SavedGroup};
use codec::{as_changes, decode, encode_into};

/// The base of earlier versions.
const LEGACY: &str = "groups.journal";
const SPARE: &str = "groups.spare";

/// The most sequences one record of acknowledgements holds: more are split over several, so
/// that no record comes near the size limit of a record.
const ACKED_PER_RECORD: usize = 64 * 1024;

fn base_name(generation: u64) -> String {
    format!("groups-{generation:020}.base")
}

fn tail_name(generation: u64) -> String {
    format!("groups-{generation:020}.tail")
}

/// Files by generation, lowest first.
type ByGeneration = Vec<(u64, PathBuf)>;

/// The bases and tails in `dir`.
fn files(dir: &Path) -> std::io::Result<(ByGeneration, ByGeneration)> {
    let (mut bases, mut tails) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name == LEGACY {
            bases.push((0, path));
        } else if let Some(rest) = name.strip_prefix("groups-") {
            let parse = |n: &str| n.parse::<u64>().ok();
            if let Some(g) = rest.strip_suffix(".base").and_then(parse) {
                bases.push((g, path));
            } else if let Some(n) = rest.strip_suffix(".tail").and_then(parse) {
                tails.push((n, path));
            }
        }
    }
    bases.sort();
    tails.sort();
    Ok((bases, tails))
}

/// The groups as the journal has them, kept up to date as changes are recorded.
#[derive(Debug)]
pub(super) struct Journal {
    dir: PathBuf,
    /// The latest tail, appended to.
    file: File,
    generation: u64,
    /// The length of the whole records in the tail.
    bytes: u64,
    /// A write failed part way and cutting it back failed too: tried again before the next.
    partial: bool,
    groups: BTreeMap<String, SavedGroup>,
    /// Records written since the last compaction.
    records: u64,
    scratch: Vec<u8>,
    /// A compaction is under way on the sync thread.
    compacting: Arc<AtomicBool>,
    /// The next tail, created ahead.
    spare: Arc<Mutex<Option<File>>>,
    syncer: Syncer,
}

/// The groups a journal describes, and the latest generation of its files.
#[derive(Debug, Default)]
pub(super) struct Saved {
    pub(super) groups: BTreeMap<String, SavedGroup>,
    generation: u64,
}

/// Reads the journal in `dir` back. A record that is not valid is skipped (what it held is
/// lost: acknowledgements, so their events are delivered again).
pub(super) fn read(dir: &Path) -> std::io::Result<Saved> {
    let (bases, tails) = files(dir)?;
    let mut groups = BTreeMap::new();
    let base = bases.last().map_or(0, |(g, _)| *g);
    for (_, path) in bases
        .last()
        .into_iter()
        .chain(tails.iter().filter(|(n, _)| *n > base))
    {
        replay(path, &mut groups)?;
    }
    let generation = tails.last().map_or(base, |(n, _)| *n).max(base);
    Ok(Saved { groups, generation })
}

fn replay(path: &Path, groups: &mut BTreeMap<String, SavedGroup>) -> std::io::Result<()> {
    let data = Bytes::from(std::fs::read(path)?);
    let mut at = 0;
    while at < data.len() {
        if let Some((change, end)) = change_at(&data, at) {
            change.apply_to(groups);
            at = end;
            continue;
        }
        let skipped = (at + 1..data.len()).find(|&next| change_at(&data, next).is_some());
        tracing::warn!(path = %path.display(), at, "the consumer group journal holds a record that is not whole; it is skipped (acknowledgements in it are lost, their events delivered again)");
        match skipped {
            Some(next) => at = next,
            None => break,
        }
    }
    Ok(())
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
            ..
        } => Some((decode(&event)?, end)),
        _ => None,
    }
}

impl Journal {
    /// Starts the journal anew from `saved`, pruned against the oldest event retained, and
    /// without anything past `latest`, the latest event the log holds: after a recovery that
    /// kept only a prefix of the log, acknowledgements and hand-outs of events past it are of
    /// events that are gone, whose sequences new events take.
    pub(super) fn open(
        dir: &Path,
        saved: Saved,
        (oldest, latest): (u64, u64),
        syncer: Syncer,
    ) -> std::io::Result<Self> {
        let Saved {
            mut groups,
            generation,
        } = saved;
        for group in groups.values_mut() {
            group.acked.retain(|sequence| *sequence <= latest);
            group.handed_out = group.handed_out.min(latest);
            group.start = group.start.min(latest + 1);
            group.prune(oldest);
        }
        write_base(dir, &groups, generation)?;
        let tail = generation + 1;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(tail_name(tail)))?;
        file.set_len(0)?;
        let spare = make_spare(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            file,
            generation: tail,
            bytes: 0,
            partial: false,
            groups,
            records: 0,
            scratch: Vec::new(),
            compacting: Arc::new(AtomicBool::new(false)),
            spare: Arc::new(Mutex::new(Some(spare))),
            syncer,
        })
    }

    /// The groups, as the hub restores them.
    pub(super) fn groups(&self) -> Vec<(String, SavedGroup)> {
        self.groups
            .iter()
            .map(|(name, group)| (name.clone(), group.clone()))
            .collect()
    }

    /// Appends `changes`; past a bound, starts a compaction, `oldest` being the oldest event
    /// retained.
    pub(super) fn record(&mut self, changes: &[GroupChange], oldest: u64) -> std::io::Result<()> {
        self.scratch.clear();
        for change in changes {
            encode_into(change, &mut self.scratch);
            change.clone().apply_to(&mut self.groups);
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
        self.records += changes.len() as u64;
        if self.records > 4096 + 16 * self.groups.len() as u64 {
            self.compact(oldest);
        }
        Ok(())
    }

    /// Moves on to a new tail and has the sync thread write the groups as they stand as the
    /// base that replaces the tails so far. Nothing happens while the last compaction is
    /// under way or no tail is ready: it is tried again at a later record.
    fn compact(&mut self, oldest: u64) {
        if self.compacting.load(Ordering::Acquire) {
            return;
        }
        let Some(spare) = self.spare.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let covered = self.generation;
        if let Err(error) =
            std::fs::rename(self.dir.join(SPARE), self.dir.join(tail_name(covered + 1)))
        {
            tracing::warn!(dir = %self.dir.display(), %error, "starting a new consumer group journal failed; tried again later");
            self.syncer
                .report("starting a new consumer group journal", &error);
            *self.spare.lock().unwrap_or_else(|e| e.into_inner()) = Some(spare);
            return;
        }
        (self.file, self.generation, self.bytes, self.partial) = (spare, covered + 1, 0, false);
        self.records = 0;
        for group in self.groups.values_mut() {
            group.prune(oldest);
        }
        let groups = self.groups.clone();
        let (dir, compacting, spare, errors) = (
            self.dir.clone(),
            self.compacting.clone(),
            self.spare.clone(),
            self.syncer.errors(),
        );
        compacting.store(true, Ordering::Release);
        self.syncer.chore(Box::new(move || {
            if let Err(error) = write_base(&dir, &groups, covered) {
                tracing::warn!(dir = %dir.display(), %error, "compacting the consumer group journal failed; tried again later");
                errors.set("compacting the consumer group journal", &error);
            }
            match make_spare(&dir) {
                Ok(file) => *spare.lock().unwrap_or_else(|e| e.into_inner()) = Some(file),
                Err(error) => {
                    tracing::warn!(dir = %dir.display(), %error, "creating the next consumer group journal failed; tried again later");
                    errors.set("creating the next consumer group journal", &error);
                }
            }
            compacting.store(false, Ordering::Release);
        }));
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
        super::sync::sync_data(&self.file)
    }
}

/// Writes `groups` as the base of generation `covered` (aside and synced, then renamed, then
/// the directory synced, so that a crash leaves it whole or not at all), then removes the
/// files it replaces.
fn write_base(
    dir: &Path,
    groups: &BTreeMap<String, SavedGroup>,
    covered: u64,
) -> std::io::Result<()> {
    let mut data = Vec::new();
    for (name, group) in groups {
        for change in as_changes(name, group) {
            encode_into(&change, &mut data);
        }
    }
    let name = base_name(covered);
    epoch::replace(dir, &name, &data)?;
    let (bases, tails) = files(dir)?;
    for (g, path) in bases.iter().chain(&tails) {
        if *g <= covered && path.file_name().is_some_and(|n| n != name.as_str()) {
            std::fs::remove_file(path)?;
        }
    }
    epoch::sync_dir(dir)
}

/// Creates the next tail ahead, empty, and makes its entry durable.
fn make_spare(dir: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(SPARE))?;
    file.set_len(0)?;
    epoch::sync_dir(dir)?;
    Ok(file)
}

#[cfg(test)]
mod test;
