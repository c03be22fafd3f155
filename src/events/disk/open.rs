//! [`open`]: a publisher's event directory opened, its logs recovered, and its epoch decided.
//!
//! - The last run ended in order, or only its process died (the same boot of the machine):
//!   every record it wrote is there, but for a record cut mid-write by the process's death,
//!   which no observer saw (events are served once written whole). The cut is removed and
//!   the epoch kept: nothing lost, nothing reused.
//! - The machine stopped under the last run (another boot and no clean close), or a record is
//!   corrupt or missing (a disk fault): events observers may have seen may be gone. The valid
//!   prefix of every event RPC's log is kept (no synced event is dropped), and a new epoch
//!   starts that continues the old one: its events up to the prefix's end are the old
//!   epoch's, under the same sequences, and its next event follows them. An observer whose
//!   cursor is within the prefix resumes exactly; one past it is told of a gap (the events
//!   it saw past the prefix are lost), then gets every new event.
//! - Events without their epoch file (which is written before any event) are dropped, under
//!   a new epoch.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::epoch::{self, Kept};
use super::lock::DirectoryLock;
use super::recover::{recover, Recovered};
use super::run::{self, Run};
use super::DiskLog;
use crate::events::log::Limits;

/// One event RPC of the publisher.
#[derive(Debug, Clone)]
pub(crate) struct Rpc {
    /// Its folder in the directory: its name in the proto.
    pub(crate) folder: &'static str,
    /// `package.Service/Method`, for the sync thread's name.
    pub(crate) method: String,
    pub(crate) retain: usize,
    /// Its retention, compaction included.
    pub(crate) limits: Limits,
}

/// The directory opened: the epoch, and a log per event RPC, in the order given.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) epoch: u64,
    pub(crate) logs: Vec<DiskLog>,
}

/// What failed, and the error.
pub(crate) type Failed = (&'static str, std::io::Error);

/// Opens `dir` for a publisher of `rpcs` (see the module's docs), `new_epoch` drawing a new
/// epoch when one is needed.
pub(crate) fn open(
    dir: &Path,
    rpcs: &[Rpc],
    new_epoch: impl Fn() -> u64,
) -> Result<Opened, Failed> {
    std::fs::create_dir_all(dir).map_err(|e| ("creating the event directory", e))?;
    // Before anything is read: another publisher may be writing.
    let lock = DirectoryLock::take(dir).map_err(|e| ("locking the event directory", e))?;
    let kept = epoch::load(dir).map_err(|e| ("reading the epoch", e))?;
    let last_run = run::last_run(dir).map_err(|e| ("reading how the last run ended", e))?;
    let mut logs = Vec::with_capacity(rpcs.len());
    for rpc in rpcs {
        let recovered = recover(
            &dir.join(rpc.folder),
            rpc.retain,
            rpc.limits.compact.is_some(),
        )
        .map_err(|e| ("reading the event log back", e))?;
        logs.push(recovered);
    }
    let process_died = !last_run.closed_cleanly && last_run.same_boot;
    let damage: Vec<String> = logs
        .iter()
        .filter_map(|log| log.damage.as_ref())
        .filter(|damage| !(damage.cut_tail && process_died))
        .map(|damage| damage.what.clone())
        .collect();
    let unchanged = kept.clone();
    let kept = match kept {
        Some(kept) if damage.is_empty() && !last_run.may_have_lost_writes() => kept,
        Some(old) => {
            let through: BTreeMap<String, u64> = rpcs
                .iter()
                .zip(&logs)
                .map(|(rpc, log)| (rpc.folder.to_owned(), log.latest()))
                .collect();
            let kept = old.clone().continued_by(new_epoch(), &through);
            if damage.is_empty() {
                tracing::warn!(dir = %dir.display(), old = %format_args!("{:#x}", old.epoch), new = %format_args!("{:#x}", kept.epoch), ?through, "the machine stopped while the publisher ran: events not yet synced may be lost; a new epoch continues the events kept, and observers past them are told of a gap");
            } else {
                tracing::error!(dir = %dir.display(), ?damage, old = %format_args!("{:#x}", old.epoch), new = %format_args!("{:#x}", kept.epoch), ?through, "the event log is torn or corrupt (a crash of the machine, or a disk fault); the events before the damage are kept, a new epoch continues them, and observers past them are told of a gap");
            }
            kept
        }
        None => {
            if logs.iter().any(|log| !log.is_empty()) {
                tracing::error!(dir = %dir.display(), "events without their epoch file; they are dropped and a new epoch starts, which observers see as a gap");
            }
            for log in &mut logs {
                log.discard().map_err(|e| ("discarding the event log", e))?;
            }
            Kept::new(new_epoch())
        }
    };
    // The epoch first: a crash during the repair must not leave a shortened log under the
    // old epoch.
    if unchanged.as_ref() != Some(&kept) {
        epoch::store(dir, &kept).map_err(|e| ("writing the epoch", e))?;
    }
    for log in &mut logs {
        if let Some(damage) = &log.damage {
            tracing::warn!(what = %damage.what, "cutting the event log back to its last valid record");
        }
        log.repair()
            .map_err(|e| ("cutting the event log back", e))?;
    }
    let run =
        Arc::new(Run::start(dir, lock).map_err(|e| ("starting a run on the event directory", e))?);
    let logs = rpcs
        .iter()
        .zip(logs)
        .map(|(rpc, recovered): (&Rpc, Recovered)| {
            let lineage = kept.lineage_of(rpc.folder);
            DiskLog::open(
                recovered,
                &rpc.method,
                rpc.limits,
                run.clone(),
                (kept.epoch, lineage),
            )
        })
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| ("opening the event log", e))?;
    Ok(Opened {
        epoch: kept.epoch,
        logs,
    })
}
