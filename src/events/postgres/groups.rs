//! Consumer groups kept in Postgres: their progress (where each starts, the events
//! acknowledged, how far events may have been handed out, how many were missed) lives in
//! `meshless.groups`, one row per group, so that a group outlives its producer's machine.
//!
//! [`PgLog`] is the event log of one event RPC of a publisher on Postgres: the retained events
//! in memory, as [`MemoryLog`] keeps them, and the groups' changes handed to an [`Outbox`].
//! The hub records those changes under its lock, where nothing may wait for a database: the
//! stream's tailer takes them from the outbox and writes them (see [`Written`]) on the
//! connection that holds the stream's name, in one transaction per batch, so that only the
//! name's owner ever writes its groups, and a batch is written whole or not at all.
//!
//! The changes of the last moments before a crash may not have been written. A group formed
//! again from the table therefore goes out marked as a possible redelivery for every event it
//! is owed that was published before (see [`load`]), not only those the table says were
//! handed out.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;

use sqlx::{Connection as _, PgConnection, Row as _};

use crate::events::log::{
    EventLog, GroupChange, LastError, MemoryLog, Read, SavedGroup, Storage, Stored,
};

/// Group changes recorded by the hubs and not yet taken by the tailer, with the event RPC
/// (its index in the stream) each is of.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    changes: Mutex<Vec<(usize, GroupChange)>>,
    pub(crate) changed: tokio::sync::Notify,
}

impl Outbox {
    fn push(&self, rpc: usize, changes: &[GroupChange]) {
        self.changes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend(changes.iter().map(|change| (rpc, change.clone())));
        self.changed.notify_one();
    }

    fn take(&self) -> Vec<(usize, GroupChange)> {
        std::mem::take(
            &mut *self
                .changes
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

/// The log of one event RPC of a publisher on Postgres.
pub(crate) struct PgLog {
    pub(crate) memory: MemoryLog,
    pub(crate) rpc: usize,
    pub(crate) saved: Vec<(String, SavedGroup)>,
    pub(crate) outbox: std::sync::Arc<Outbox>,
    /// The stream's last error, which its tailer keeps.
    pub(crate) errors: LastError,
}

impl EventLog for PgLog {
    fn next_sequence(&self) -> u64 {
        self.memory.next_sequence()
    }

    fn oldest(&self) -> u64 {
        self.memory.oldest()
    }

    fn append(&mut self, event: Stored) -> std::io::Result<()> {
        self.memory.append(event)
    }

    fn expire(&mut self, now: u64) {
        self.memory.expire(now);
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

    fn kept_sequences(&self) -> Option<Vec<u64>> {
        self.memory.kept_sequences()
    }

    fn storage(&self) -> Storage<'_> {
        Storage::Postgres
    }

    fn compacted_keys(&self) -> u64 {
        self.memory.compacted_keys()
    }

    fn last_error(&self) -> Option<String> {
        self.errors.get()
    }

    fn keeps_groups(&self) -> bool {
        true
    }

    fn record_groups(&mut self, changes: &[GroupChange]) {
        self.outbox.push(self.rpc, changes);
    }

    fn take_saved_groups(&mut self) -> Vec<(String, SavedGroup)> {
        std::mem::take(&mut self.saved)
    }

    fn may_lose_recent_group_changes(&self) -> bool {
        true
    }
}

/// The groups of `rpc` in `stream` as the table keeps them, for a log whose latest event is
/// `latest`. Every event up to `latest` counts as possibly handed out (see the module's
/// doc).
pub(crate) async fn load(
    conn: &mut PgConnection,
    stream: &str,
    rpc: &str,
    latest: u64,
) -> Result<Vec<(String, SavedGroup)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT name, start, missed, acked FROM meshless.groups
         WHERE stream = $1 AND rpc = $2 ORDER BY name",
    )
    .bind(stream)
    .bind(rpc)
    .fetch_all(conn)
    .await?;
    let unsigned = |value: i64| u64::try_from(value).unwrap_or(0);
    rows.iter()
        .map(|row| {
            let acked: Vec<i64> = row.try_get("acked")?;
            let saved = SavedGroup {
                start: unsigned(row.try_get("start")?).min(latest + 1),
                acked: acked
                    .into_iter()
                    .map(unsigned)
                    .filter(|sequence| *sequence <= latest)
                    .collect(),
                missed: unsigned(row.try_get("missed")?),
                handed_out: latest,
            };
            Ok((row.try_get("name")?, saved))
        })
        .collect()
}

/// The groups as the tailer has written them, and those changed since.
#[derive(Debug)]
pub(crate) struct Written {
    /// By event RPC (its index in the stream), by name.
    groups: Vec<BTreeMap<String, SavedGroup>>,
    changed: BTreeSet<(usize, String)>,
}

impl Written {
    /// What was loaded at open, by event RPC.
    pub(crate) fn new(loaded: Vec<BTreeMap<String, SavedGroup>>) -> Self {
        Self {
            groups: loaded,
            changed: BTreeSet::new(),
        }
    }

    /// Takes the changes the hubs recorded; returns whether there are some to write.
    pub(crate) fn take(&mut self, outbox: &Outbox) -> bool {
        for (rpc, change) in outbox.take() {
            self.changed.insert((rpc, change.group().to_owned()));
            change.apply_to(&mut self.groups[rpc]);
        }
        !self.changed.is_empty()
    }

    /// Writes the groups changed since the last write in one transaction; `oldest` gives the
    /// oldest retained sequence of an event RPC. What failed is written again next time.
    pub(crate) async fn write(
        &mut self,
        conn: &mut PgConnection,
        stream: &str,
        rpcs: &[String],
        oldest: impl Fn(usize) -> u64,
    ) -> Result<(), sqlx::Error> {
        if self.changed.is_empty() {
            return Ok(());
        }
        let mut tx = conn.begin().await?;
        for (rpc, name) in &self.changed {
            let Some(group) = self.groups[*rpc].get_mut(name) else {
                sqlx::query(
                    "DELETE FROM meshless.groups WHERE stream = $1 AND rpc = $2 AND name = $3",
                )
                .bind(stream)
                .bind(&rpcs[*rpc])
                .bind(name)
                .execute(&mut *tx)
                .await?;
                continue;
            };
            group.prune(oldest(*rpc));
            let signed = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
            let acked: Vec<i64> = group.acked.iter().copied().map(signed).collect();
            sqlx::query(
                "INSERT INTO meshless.groups (stream, rpc, name, start, missed, handed_out, acked)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (stream, rpc, name) DO UPDATE SET
                     start = excluded.start, missed = excluded.missed,
                     handed_out = excluded.handed_out, acked = excluded.acked,
                     updated_at = now()",
            )
            .bind(stream)
            .bind(&rpcs[*rpc])
            .bind(name)
            .bind(signed(group.start))
            .bind(signed(group.missed))
            .bind(signed(group.handed_out))
            .bind(acked)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.changed.clear();
        Ok(())
    }
}
