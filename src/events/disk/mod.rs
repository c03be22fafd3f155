//! [`DiskLog`]: the event log of one event RPC kept in files, so that the events a producer
//! published survive its crash and its restart.
//!
//! - Events are appended to segment files (`<first sequence>.log` in the event RPC's
//!   directory), one checksummed record each (see `record`). `append` returns once the record
//!   is written to the file (the operating system has it): a crash of the process loses no
//!   event whose `publish` returned. [`Syncer`] makes events durable against a crash of the
//!   machine too, for publishers that wait for it.
//! - The last `retain` events are also kept in memory ([`MemoryLog`]), which every read is
//!   served from; segments wholly older than them are removed.
//! - With compaction by key, the latest event of every key that left the memory window is
//!   kept too (see `kept`): written to a file of its own before the segments holding it go.
//! - On open ([`open`]), the segments are read back and checked, and what the last run left
//!   decides the epoch: see `open`.

mod crc;
mod epoch;
mod groups;
mod kept;
mod lock;
mod open;
mod record;
mod recover;
mod run;
mod sync;
mod write;

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::log::{EventLog, GroupChange, Limits, MemoryLog, Read, SavedGroup, Storage, Stored};
pub(crate) use open::{open, Opened, Rpc};
pub(crate) use record::MAX_EVENT;
#[cfg(test)]
use recover::recover;
use recover::Recovered;
pub(crate) use sync::Syncer;

/// A segment is closed (and a new one begun) past this size, or past a quarter of `retain`
/// events, so that what is removed from the head follows retention closely.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// The event log of one event RPC, in files.
#[derive(Debug)]
pub(crate) struct DiskLog {
    memory: MemoryLog,
    dir: PathBuf,
    /// Segments by first sequence, oldest first; the last is written to.
    segments: VecDeque<(u64, PathBuf)>,
    current: Arc<File>,
    current_bytes: u64,
    current_events: u64,
    roll_after_events: u64,
    syncer: Syncer,
    scratch: Vec<u8>,
    /// A partial record past `current_bytes` that a failed write left and its undo could not
    /// remove: cut off before the next record is written.
    partial: Option<std::io::Error>,
    journal: groups::Journal,
    /// The groups read back, until the hub takes them.
    saved_groups: Vec<(String, SavedGroup)>,
    /// The epochs this log continues, each with the last event kept of it (see `epoch`).
    lineage: Vec<(u64, u64)>,
    /// The publisher's run on the directory (its lock), shared by its event RPCs' logs.
    run: Arc<run::Run>,
    /// With compaction by key: the records of the file of kept events, once the sync thread
    /// made the writes handed to it.
    kept_records: u64,
}

impl DiskLog {
    /// Opens a recovered (and repaired) log for appending under `epoch`, `name` being its
    /// event RPC (for the sync thread), `lineage` the epochs it continues.
    fn open(
        recovered: Recovered,
        name: &str,
        limits: Limits,
        run: Arc<run::Run>,
        (epoch, lineage): (u64, Vec<(u64, u64)>),
    ) -> std::io::Result<Self> {
        let Recovered {
            dir,
            retain,
            mut segments,
            events,
            kept,
            next,
            damage,
            groups,
            ..
        } = recovered;
        debug_assert!(damage.is_none(), "a log is repaired before it is opened");
        // A new segment for this run (replacing an empty one the last run began).
        if segments.last().is_some_and(|(first, _)| *first == next) {
            segments.pop();
        }
        segments.push((next, dir.join(segment_name(next))));
        let current = create_segment(&dir, &segments[segments.len() - 1].1)?;
        let current = Arc::new(current);
        let mut memory = MemoryLog::with_limits(retain, limits);
        for event in kept {
            memory.restore_kept(recover::restamp(event, epoch));
        }
        for event in events {
            memory.restore(recover::restamp(event, epoch));
        }
        memory.set_next(next);
        // A durable publish syncs only the segment being written: the earlier run's segments,
        // whose tail it may not have synced, are synced now.
        for (_, path) in &segments[..segments.len() - 1] {
            File::open(path)?.sync_all()?;
        }
        let syncer = Syncer::start(name, dir.clone(), current.clone(), next - 1)?;
        let journal =
            groups::Journal::open(&dir, groups, (memory.oldest(), next - 1), syncer.clone())?;
        let saved_groups = journal.groups();
        let mut log = Self {
            memory,
            dir,
            segments: segments.into(),
            current,
            current_bytes: 0,
            current_events: 0,
            roll_after_events: (retain as u64 / 4).max(1),
            syncer,
            scratch: Vec::new(),
            partial: None,
            journal,
            saved_groups,
            lineage,
            run,
            kept_records: 0,
        };
        let old = log.old_segments();
        // A clean file of the kept events (whatever a crash left in it), before any segment
        // goes.
        if let Some(compaction) = log.memory.compaction() {
            let kept: Vec<Stored> = compaction.kept().cloned().collect();
            kept::store(&log.dir, &kept)?;
            log.kept_records = kept.len() as u64;
        }
        for path in old {
            std::fs::remove_file(path)?;
        }
        Ok(log)
    }

    /// The handle durable publishes wait on.
    pub(crate) fn syncer(&self) -> Syncer {
        self.syncer.clone()
    }
}

impl Drop for DiskLog {
    /// A log closed in order (its publisher dropped after a shutdown) is on stable storage;
    /// the run ends cleanly if every log of it was synced.
    fn drop(&mut self) {
        let cut = self.cut_partial();
        // The thread syncs what it was handed and the current segment, then ends.
        self.syncer.close();
        if let Err(error) = cut.and_then(|()| self.journal.sync()) {
            tracing::warn!(dir = %self.dir.display(), %error, "syncing the event log on close failed");
            self.run.spoil();
        }
        if self.syncer.has_failed() {
            self.run.spoil();
        }
    }
}

impl EventLog for DiskLog {
    fn next_sequence(&self) -> u64 {
        self.memory.next_sequence()
    }

    fn oldest(&self) -> u64 {
        self.memory.oldest()
    }

    fn append(&mut self, event: Stored) -> std::io::Result<()> {
        self.append_all(std::slice::from_ref(&event))
    }

    fn append_all(&mut self, events: &[Stored]) -> std::io::Result<()> {
        let written = self.write(events);
        if let Err(error) = &written {
            self.syncer.report("writing an event", error);
        }
        written
    }

    fn read(&self, from: u64, max: usize, out: &mut VecDeque<Stored>) -> Read {
        self.memory.read(from, max, out)
    }

    fn since(&self, time: u64) -> (u64, bool) {
        self.memory.since(time)
    }

    fn latest_per_key(&self) -> Vec<Stored> {
        self.memory.latest_per_key()
    }

    fn compacts(&self) -> bool {
        self.memory.compacts()
    }

    fn dropped_past_bound(&self) -> u64 {
        self.memory.dropped_past_bound()
    }

    fn storage(&self) -> Storage<'_> {
        Storage::Files(&self.dir)
    }

    fn compacted_keys(&self) -> u64 {
        self.memory.compacted_keys()
    }

    fn last_error(&self) -> Option<String> {
        self.syncer.last_error()
    }

    fn expire(&mut self, now: u64) {
        self.memory.expire(now);
    }

    fn keeps_groups(&self) -> bool {
        true
    }

    fn record_groups(&mut self, changes: &[GroupChange]) {
        if let Err(error) = self.journal.record(changes, self.memory.oldest()) {
            tracing::error!(dir = %self.dir.display(), %error, "recording consumer group progress failed; after a restart, their events may be delivered again");
            self.syncer
                .report("recording consumer group progress", &error);
        }
    }

    fn take_saved_groups(&mut self) -> Vec<(String, SavedGroup)> {
        std::mem::take(&mut self.saved_groups)
    }

    fn continued(&self, epoch: u64) -> Option<u64> {
        self.lineage
            .iter()
            .find(|(ancestor, _)| *ancestor == epoch)
            .map(|(_, through)| *through)
    }
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.log")
}

/// Creates (or empties) a segment, open for appending: every write lands at the end of the
/// file, so that a record after a cut-back partial one follows the last whole record.
fn create_segment(dir: &Path, path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    file.set_len(0)?;
    epoch::sync_dir(dir)?;
    Ok(file)
}

#[cfg(test)]
mod test;
