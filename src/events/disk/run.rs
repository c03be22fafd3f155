//! [`Run`]: one publisher's run on an event directory, and what the next open learns of it.
//!
//! A run writes the machine's boot id beside the log when it starts (synced) and removes the
//! clean-close marker; when it ends in order (every log synced) it writes the marker again.
//! At the next open:
//!
//! - marker present: the last run ended in order, everything it wrote is on stable storage;
//! - no marker, same boot: the process died (SIGKILL, OOM, a panic that aborted), but what it
//!   wrote is in the machine's page cache: nothing is lost but a record cut mid-write, which
//!   no observer saw (events are served only once written whole);
//! - no marker, another boot (or no boot id to compare): the machine went down with the
//!   publisher, so records observers may have seen may be gone, whole or torn.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use super::epoch;
use super::lock::DirectoryLock;

const BOOT_FILE: &str = "boot";
const CLEAN_FILE: &str = "closed-cleanly";

/// The id of this boot of the machine; `None` where the system has none to give.
fn boot_id() -> Option<&'static str> {
    static BOOT: OnceLock<Option<String>> = OnceLock::new();
    BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|id| id.trim().to_owned())
            .filter(|id| !id.is_empty())
    })
    .as_deref()
}

/// What the last run on a directory left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LastRun {
    /// It ended in order: everything it wrote was synced.
    pub(crate) closed_cleanly: bool,
    /// It ran since the machine last started (as far as can be known).
    pub(crate) same_boot: bool,
}

impl LastRun {
    /// Whether records the last run wrote, and observers may have seen, may be gone: the
    /// machine stopped under it.
    pub(crate) fn may_have_lost_writes(self) -> bool {
        !self.closed_cleanly && !self.same_boot
    }
}

/// Reads what the last run on `dir` left.
pub(crate) fn last_run(dir: &Path) -> std::io::Result<LastRun> {
    let closed_cleanly = match std::fs::metadata(dir.join(CLEAN_FILE)) {
        Ok(_) => true,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
        Err(error) => return Err(error),
    };
    let stored = match std::fs::read_to_string(dir.join(BOOT_FILE)) {
        Ok(stored) => Some(stored),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(error),
    };
    let same_boot = matches!((stored.as_deref(), boot_id()), (Some(a), Some(b)) if a.trim() == b);
    Ok(LastRun {
        closed_cleanly,
        same_boot,
    })
}

/// A publisher's run on its directory: holds the directory's lock, and marks the directory
/// closed cleanly when the last log of the run is dropped in order.
#[derive(Debug)]
pub(crate) struct Run {
    dir: PathBuf,
    /// A log failed to sync: the run does not end cleanly.
    spoiled: AtomicBool,
    _lock: DirectoryLock,
}

impl Run {
    /// Starts a run on `dir`: keeps this boot's id and removes the clean-close marker, both
    /// durably, before anything is written.
    pub(crate) fn start(dir: &Path, lock: DirectoryLock) -> std::io::Result<Self> {
        let boot = boot_id().unwrap_or("");
        let stored = std::fs::read_to_string(dir.join(BOOT_FILE)).unwrap_or_default();
        if stored.trim() != boot {
            epoch::replace(dir, BOOT_FILE, boot.as_bytes())?;
        }
        match std::fs::remove_file(dir.join(CLEAN_FILE)) {
            Ok(()) => epoch::sync_dir(dir)?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        Ok(Self {
            dir: dir.to_owned(),
            spoiled: AtomicBool::new(false),
            _lock: lock,
        })
    }

    /// Something the run wrote may not be on stable storage: it does not end cleanly.
    pub(crate) fn spoil(&self) {
        self.spoiled.store(true, Ordering::Relaxed);
    }
}

impl Drop for Run {
    /// Runs when every log of the run was dropped (each synced on the way): the marker says
    /// so, unless a sync failed. The lock is released after.
    fn drop(&mut self) {
        if self.spoiled.load(Ordering::Relaxed) {
            return;
        }
        let marked = std::fs::File::create(self.dir.join(CLEAN_FILE))
            .and_then(|file| file.sync_all())
            .and_then(|()| epoch::sync_dir(&self.dir));
        if let Err(error) = marked {
            tracing::warn!(dir = %self.dir.display(), %error, "marking the event directory closed cleanly failed; the next open takes the last run for a crash");
        }
    }
}

/// For tests: makes the last run on `dir` look like one the machine stopped under (another
/// boot, no clean close).
#[cfg(test)]
pub(crate) fn forget_clean_close(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(CLEAN_FILE));
    let _ = std::fs::write(dir.join(BOOT_FILE), "another boot");
}
