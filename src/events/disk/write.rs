//! Writing the file log: appending records (one event, or a batch in one write) to the
//! current segment, cutting back a partial record a failed write left, and rolling to a new
//! segment, with what compaction keeps of the segments that go.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use super::{kept, record, segment_name, sync, DiskLog, MAX_EVENT, SEGMENT_BYTES};
use crate::events::log::{EventLog, Stored};

impl DiskLog {
    /// Moves on to a new segment starting at event `next`: the one the sync thread created
    /// ahead, renamed into place; the thread syncs the segment left and removes old ones. A
    /// failure (no segment ready yet, or the rename failing) changes nothing: the log goes on
    /// in the current segment, and rolls at a later append.
    fn roll(&mut self, next: u64) -> std::io::Result<()> {
        let Some(spare) = self.syncer.take_spare() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "the next segment is not ready yet",
            ));
        };
        let path = self.dir.join(segment_name(next));
        if let Err(error) = std::fs::rename(self.dir.join(sync::SPARE), &path) {
            self.syncer.give_back_spare(spare);
            return Err(error);
        }
        let file = Arc::new(spare);
        let left = std::mem::replace(&mut self.current, file.clone());
        self.current_bytes = 0;
        self.current_events = 0;
        self.segments.push_back((next, path));
        let from = self.segments.front().map_or(next, |(first, _)| *first);
        let old = self.old_segments();
        let to = self.segments.front().map_or(next, |(first, _)| *first);
        // Their kept events are written before the segments are removed.
        let kept = self.kept_write(from..to);
        self.syncer.rolled(file, left, next - 1, (old, kept));
        Ok(())
    }

    /// With compaction by key: what to write of the kept events before the segments holding
    /// `removed` go: those of theirs, or every kept event once the file holds more superseded
    /// records than kept ones.
    fn kept_write(&mut self, removed: std::ops::Range<u64>) -> Option<kept::Write> {
        let compaction = self.memory.compaction()?;
        if removed.is_empty() {
            return None;
        }
        let new: Vec<Stored> = compaction.kept_in(removed).cloned().collect();
        let live = compaction.len() as u64;
        if self.kept_records + new.len() as u64 > 2 * live + 1024 {
            self.kept_records = live;
            Some(kept::Write::Replace(compaction.kept().cloned().collect()))
        } else {
            self.kept_records += new.len() as u64;
            Some(kept::Write::Append(new))
        }
    }

    /// Takes the segments whose events are all older than the oldest retained off the list:
    /// the files to remove.
    pub(super) fn old_segments(&mut self) -> Vec<PathBuf> {
        let oldest = self.memory.oldest();
        let mut old = Vec::new();
        while self.segments.len() > 1 && self.segments[1].0 <= oldest {
            if let Some((_, path)) = self.segments.pop_front() {
                old.push(path);
            }
        }
        old
    }

    /// Appends `events` to the current segment in one write (records marked as one batch), and
    /// to the memory window, then rolls to a new segment when this one is full. A batch is
    /// never split across segments: a failed write keeps none of it, and recovery after a
    /// write interrupted inside it (a crash) neither.
    pub(super) fn write(&mut self, events: &[Stored]) -> std::io::Result<()> {
        if let Some(event) = events.iter().find(|event| event.bytes.len() > MAX_EVENT) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "the event is {} bytes encoded; a record of the event log holds at most {MAX_EVENT}",
                    event.bytes.len()
                ),
            ));
        }
        let Some(last) = events.last().map(|event| event.sequence) else {
            return Ok(());
        };
        self.cut_partial()?;
        self.scratch.clear();
        self.scratch.reserve(
            events
                .iter()
                .map(|event| record::HEADER + record::SEQUENCE + event.bytes.len())
                .sum(),
        );
        for (index, event) in events.iter().enumerate() {
            // Recovery keeps a batch only with its last record: all of it, or none.
            let more = index + 1 < events.len();
            record::encode_in_batch(
                event.sequence,
                event.published_at,
                &event.bytes,
                more,
                &mut self.scratch,
            );
        }
        if let Err(error) = (&*self.current).write_all(&self.scratch) {
            // Cut a partly written record off, so that the next one follows a whole record.
            let untouched = self
                .current
                .metadata()
                .is_ok_and(|file| file.len() == self.current_bytes);
            if untouched {
                return Err(error);
            }
            // The segment is open for appending: once cut back, the next record follows the
            // last whole one. If the cut fails, it is tried again before the next record.
            self.partial = Some(std::io::Error::new(error.kind(), error.to_string()));
            let _ = self.cut_partial();
            return Err(error);
        }
        self.current_bytes += self.scratch.len() as u64;
        self.current_events += events.len() as u64;
        self.syncer.written(last);
        for event in events {
            self.memory.append(event.clone())?;
        }
        if self.current_events >= self.roll_after_events || self.current_bytes >= SEGMENT_BYTES {
            // The events are written; a failure to roll is tried again at the next append.
            match self.roll(last + 1) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) => {
                    tracing::warn!(dir = %self.dir.display(), %error, "starting a new segment of the event log failed; the current one goes on");
                    self.syncer.report("starting a new segment", &error);
                }
            }
        }
        if self.scratch.capacity() > 1024 * 1024 {
            self.scratch = Vec::new();
        }
        Ok(())
    }

    /// Cuts off a partial record a failed write left, if any is left.
    pub(super) fn cut_partial(&mut self) -> std::io::Result<()> {
        if let Some(error) = &self.partial {
            self.current.set_len(self.current_bytes).map_err(|undo| {
                std::io::Error::new(
                    undo.kind(),
                    format!("writing the event log failed ({error}) and the partial record cannot be removed ({undo})"),
                )
            })?;
            self.partial = None;
        }
        Ok(())
    }
}
