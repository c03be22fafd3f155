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
//! - On open, the segments are read back and checked: a torn or corrupt record (which only a
//!   crash of the machine or a disk fault leaves) is reported, and the publisher starts a new
//!   epoch, so that observers are told of the loss (a gap) rather than served other events
//!   under sequences they have seen.

mod crc;
pub(crate) mod epoch;
mod groups;
pub(crate) mod lock;
mod record;
mod sync;

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use std::collections::BTreeMap;

use super::log::{EventLog, GroupChange, Limits, MemoryLog, Read, SavedGroup, Stored};
use record::Scanned;
pub(crate) use sync::Syncer;

/// A segment is closed (and a new one begun) past this size, or past a quarter of `retain`
/// events, so that what is removed from the head follows retention closely.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// What reading a log's directory back found.
#[derive(Debug)]
pub(crate) struct Recovered {
    dir: PathBuf,
    retain: usize,
    /// Segments by first sequence, oldest first, each with its length once checked.
    segments: Vec<(u64, PathBuf)>,
    /// The last `retain` events.
    events: Vec<Stored>,
    /// The sequence the next event gets.
    next: u64,
    /// Where records stopped being valid, if they did.
    pub(crate) torn: Option<String>,
    /// The consumer groups, from their journal.
    groups: BTreeMap<String, SavedGroup>,
}

/// Reads the log in `dir` back (creating the directory if need be), checking every record.
pub(crate) fn recover(dir: &Path, retain: usize) -> std::io::Result<Recovered> {
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
    let mut torn = None;
    let mut kept = 0;
    for (index, (first, path)) in segments.iter().enumerate() {
        if *first != next {
            torn = Some(format!(
                "{} should start at event {next}, not {first}",
                path.display()
            ));
            break;
        }
        let data = Bytes::from(std::fs::read(path)?);
        let mut at = 0;
        loop {
            match record::scan(&data, at) {
                Scanned::Record {
                    sequence,
                    published_at,
                    event,
                    end,
                } if sequence == next => {
                    if retain > 0 {
                        if events.len() == retain {
                            events.pop_front();
                        }
                        events.push_back(Stored {
                            sequence,
                            published_at,
                            key: crate::events::wire::key_hash_of(&event),
                            bytes: event,
                        });
                    }
                    next += 1;
                    at = end;
                }
                Scanned::End => break,
                Scanned::Record { sequence, .. } => {
                    torn = Some(format!(
                        "{} holds event {sequence} where event {next} belongs",
                        path.display()
                    ));
                    break;
                }
                Scanned::Torn => {
                    torn = Some(format!(
                        "{} has a torn or corrupt record at byte {at} of {}",
                        path.display(),
                        data.len()
                    ));
                    break;
                }
            }
        }
        kept = index + 1;
        if torn.is_some() {
            break;
        }
    }
    segments.truncate(kept);
    let groups = groups::read(dir)?;
    Ok(Recovered {
        dir: dir.to_owned(),
        retain,
        segments,
        events: events.into(),
        next,
        torn,
        groups,
    })
}

impl Recovered {
    /// Forgets every event and segment: the log starts over (under a new epoch).
    pub(crate) fn discard(&mut self) -> std::io::Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path
                .extension()
                .is_some_and(|e| e == "log" || e == "journal")
            {
                std::fs::remove_file(path)?;
            }
        }
        epoch::sync_dir(&self.dir)?;
        self.segments.clear();
        self.events.clear();
        self.next = 1;
        self.torn = None;
        self.groups.clear();
        Ok(())
    }

    /// Whether the log holds any event.
    pub(crate) fn is_empty(&self) -> bool {
        self.next == 1
    }
}

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
    /// Why appending is impossible: a failed write that could not be undone.
    broken: Option<String>,
    journal: groups::Journal,
    /// The groups read back, until the hub takes them.
    saved_groups: Vec<(String, SavedGroup)>,
    /// The publisher's hold on the directory, shared by its event RPCs' logs.
    _lock: Arc<lock::DirectoryLock>,
}

impl DiskLog {
    /// Opens a recovered log for appending, `name` being its event RPC (for the sync thread).
    pub(crate) fn open(
        recovered: Recovered,
        name: &str,
        limits: Limits,
        lock: Arc<lock::DirectoryLock>,
    ) -> std::io::Result<Self> {
        let Recovered {
            dir,
            retain,
            mut segments,
            events,
            next,
            torn,
            groups,
        } = recovered;
        debug_assert!(
            torn.is_none(),
            "a torn log is discarded before it is opened"
        );
        // A new segment for this run (replacing an empty one the last run began).
        if segments.last().is_some_and(|(first, _)| *first == next) {
            segments.pop();
        }
        segments.push((next, dir.join(segment_name(next))));
        let current = create_segment(&dir, &segments[segments.len() - 1].1)?;
        let current = Arc::new(current);
        let mut memory = MemoryLog::with_limits(retain, limits);
        for event in events {
            memory.restore(event);
        }
        memory.set_next(next);
        // A durable publish syncs only the segment being written: the earlier run's segments,
        // whose tail it may not have synced, are synced now.
        for (_, path) in &segments[..segments.len() - 1] {
            File::open(path)?.sync_all()?;
        }
        let syncer = Syncer::start(name, current.clone(), next - 1)?;
        let journal = groups::Journal::open(&dir, groups, memory.oldest())?;
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
            broken: None,
            journal,
            saved_groups,
            _lock: lock,
        };
        log.remove_old_segments()?;
        Ok(log)
    }

    /// The handle durable publishes wait on.
    pub(crate) fn syncer(&self) -> Syncer {
        self.syncer.clone()
    }

    fn roll(&mut self, next: u64) -> std::io::Result<()> {
        self.current.sync_data()?;
        let path = self.dir.join(segment_name(next));
        let file = Arc::new(create_segment(&self.dir, &path)?);
        self.syncer.rolled(file.clone(), next - 1);
        self.current = file;
        self.current_bytes = 0;
        self.current_events = 0;
        self.segments.push_back((next, path));
        self.remove_old_segments()
    }

    /// Removes the segments whose events are all older than the oldest retained.
    fn remove_old_segments(&mut self) -> std::io::Result<()> {
        let oldest = self.memory.oldest();
        while self.segments.len() > 1 && self.segments[1].0 <= oldest {
            if let Some((_, path)) = self.segments.pop_front() {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }
}

impl Drop for DiskLog {
    /// A log closed in order (its publisher dropped after a shutdown) is on stable storage.
    fn drop(&mut self) {
        if let Err(error) = self.current.sync_data() {
            tracing::warn!(dir = %self.dir.display(), %error, "syncing the event log on close failed");
        }
        self.syncer.close();
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
        if let Some(why) = &self.broken {
            return Err(std::io::Error::other(why.clone()));
        }
        self.scratch.clear();
        record::encode(
            event.sequence,
            event.published_at,
            &event.bytes,
            &mut self.scratch,
        );
        if let Err(error) = (&*self.current).write_all(&self.scratch) {
            // Cut a partly written record off, so that the next one follows a whole record.
            let untouched = self
                .current
                .metadata()
                .is_ok_and(|file| file.len() == self.current_bytes);
            if untouched {
                return Err(error);
            }
            if let Err(undo) = self.current.set_len(self.current_bytes) {
                self.broken = Some(format!(
                    "writing the event log failed ({error}) and the partial record could not \
                     be removed ({undo}); reopen the publisher"
                ));
            }
            return Err(error);
        }
        let sequence = event.sequence;
        self.current_bytes += self.scratch.len() as u64;
        self.current_events += 1;
        self.syncer.written(sequence);
        self.memory.append(event)?;
        if self.current_events >= self.roll_after_events || self.current_bytes >= SEGMENT_BYTES {
            // The event is written; a failure to roll shows at the next append.
            if let Err(error) = self.roll(sequence + 1) {
                self.broken = Some(format!("starting a new segment of the event log: {error}"));
            }
        }
        if self.scratch.capacity() > 1024 * 1024 {
            self.scratch = Vec::new();
        }
        Ok(())
    }

    fn read(&self, from: u64, max: usize, out: &mut VecDeque<Stored>) -> Read {
        self.memory.read(from, max, out)
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
        }
    }

    fn take_saved_groups(&mut self) -> Vec<(String, SavedGroup)> {
        std::mem::take(&mut self.saved_groups)
    }
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.log")
}

fn create_segment(dir: &Path, path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)?;
    epoch::sync_dir(dir)?;
    Ok(file)
}

#[cfg(test)]
#[path = "disk_test.rs"]
mod test;
