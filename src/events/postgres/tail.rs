//! The tailer: the task that numbers a stream's committed rows in order and hands them to the
//! hubs, which serve them as any published event.
//!
//! It runs on the connection that holds the stream's lock, so only the stream's one live
//! publisher numbers its rows. Each round reads the committed rows without a sequence (see
//! `rows`), gives them the next sequences of their event RPCs in one `UPDATE` (committed with
//! `synchronous_commit = on`: what is served is durable), and once that is done appends them
//! to the hubs. A round runs:
//!
//! - at once when [`Publisher::commit`](crate::events::Publisher::commit) committed a
//!   transaction that published;
//! - soon after `publish_*_in`, while that transaction may still be running: after 1 ms, then
//!   at doubling intervals up to the poll interval, until the transaction has ended
//!   (`pg_xact_status`);
//! - every [`POLL_INTERVAL`] otherwise, for rows other processes committed (a publisher of
//!   another instance, a crashed one, plain SQL).
//!
//! The consumer groups' changes are written on the same connection as soon as the hubs
//! record them (see `groups`), and once more before the name is let go.
//!
//! After a round, the rows of events that have left the hubs' retained windows (by count,
//! bytes or age) are deleted, [`rows::BATCH`] at a time, once [`PRUNE_AT`] have gathered or a
//! poll interval has passed.
//!
//! If the connection fails, the tailer connects again, claims the name again and reads back
//! what it numbered (an `UPDATE` whose commit was lost with the connection may have been
//! applied), then goes on. If another publisher claimed the name meanwhile, it stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::PgConnection;
use tokio::sync::Notify;

use super::groups::{Outbox, Written};
use super::{claim, rows};
use crate::events::hub::Hub;
use crate::events::log::LastError;

/// How often the tailer looks for rows nobody told it of.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The first wait after `publish_*_in`, doubled while the transaction runs.
const FIRST_WAIT: Duration = Duration::from_millis(1);

/// How many rows past retention start a deletion before the poll interval has passed, and
/// at most how many batches a round deletes.
const PRUNE_AT: u64 = 256;
pub(super) const PRUNE_BATCHES_PER_ROUND: usize = 4;

/// The longest wait between attempts to connect again.
const MAX_RECONNECT_WAIT: Duration = Duration::from_secs(5);

/// What the publisher and its tailer share.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Transactions of this publisher that published and may not have ended.
    pending: Mutex<Vec<i64>>,
    /// A transaction committed: run a round now.
    committed: Notify,
    /// A transaction published: look soon.
    published: Notify,
    /// Set when the tailer is to stop (then `committed` is notified).
    stop: AtomicBool,
    /// The stream's last error (a lost connection, a failed write), which every event RPC of
    /// the stream reports as its log's.
    pub(crate) errors: LastError,
}

impl Shared {
    /// A transaction `xid` published an event.
    pub(crate) fn published(&self, xid: i64) {
        let mut pending = self.lock_pending();
        if !pending.contains(&xid) {
            pending.push(xid);
        }
        drop(pending);
        self.published.notify_one();
    }

    /// A transaction that published committed.
    pub(crate) fn committed(&self) {
        self.committed.notify_one();
    }

    /// Asks the tailer to stop.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.committed.notify_one();
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Vec<i64>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The transactions that may not have ended.
    fn pending(&self) -> Vec<i64> {
        self.lock_pending().clone()
    }

    /// Forgets those of the transactions `asked` about that are not `running`.
    fn ended(&self, asked: &[i64], running: &[i64]) {
        self.lock_pending()
            .retain(|xid| running.contains(xid) || !asked.contains(xid));
    }

    fn has_pending(&self) -> bool {
        !self.lock_pending().is_empty()
    }
}

/// The tailer of one stream.
pub(crate) struct Tailer {
    pub(crate) stream: String,
    pub(crate) options: PgConnectOptions,
    /// `package.Service/Method` of each event RPC, and its hub.
    pub(crate) rpcs: Vec<String>,
    pub(crate) hubs: Vec<Arc<Hub>>,
    /// The next sequence of each event RPC.
    pub(crate) next: Vec<u64>,
    /// Below which sequence the rows of each event RPC are deleted, as far as this tailer knows.
    pub(crate) deleted_below: Vec<u64>,
    /// With compaction by key: the rows below `deleted_below` kept for their key.
    pub(crate) kept_rows: Vec<std::collections::BTreeSet<u64>>,
    /// When rows past retention were last deleted.
    pub(crate) pruned_at: tokio::time::Instant,
    /// When this publisher opened the stream (`claim::Opened::opened_at`).
    pub(crate) opened_at: i64,
    /// The consumer groups' changes, as recorded and as written.
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) written: Written,
    pub(crate) shared: Arc<Shared>,
}

/// Why a round failed.
enum Failure {
    /// The connection or a statement failed: connect again.
    Database(sqlx::Error),
    /// Rows this tailer was to number were numbered by another: it no longer owns the stream.
    Lost,
}

impl Tailer {
    /// Runs until asked to stop (or until another publisher took the stream), then releases
    /// the stream.
    pub(crate) async fn run(mut self, mut conn: PgConnection) {
        let mut wait = POLL_INTERVAL;
        let mut deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.shared.stopping() {
                break;
            }
            tokio::select! {
                () = self.shared.committed.notified() => {}
                () = self.shared.published.notified() => {
                    // The transaction has hardly begun: look again shortly.
                    wait = FIRST_WAIT;
                    deadline = deadline.min(tokio::time::Instant::now() + wait);
                    continue;
                }
                () = tokio::time::sleep_until(deadline) => {}
                () = self.outbox.changed.notified() => {
                    if let Err(error) = self.write_groups(&mut conn).await {
                        tracing::warn!(stream = %self.stream, %error, "writing consumer group progress failed; connecting again");
                        self.shared.errors.set("writing consumer group progress", &error);
                        match self.reconnect(conn).await {
                            Some(new) => conn = new,
                            None => return,
                        }
                    }
                    continue;
                }
            }
            if self.shared.stopping() {
                break;
            }
            match self.round(&mut conn).await {
                Ok(full) => {
                    wait = if full {
                        // More rows wait: no sleep.
                        Duration::ZERO
                    } else if self.shared.has_pending() {
                        (wait * 2).clamp(FIRST_WAIT, POLL_INTERVAL)
                    } else {
                        POLL_INTERVAL
                    };
                    deadline = tokio::time::Instant::now() + wait;
                }
                Err(Failure::Lost) => {
                    tracing::error!(stream = %self.stream, "rows of this stream were numbered by another publisher: it no longer serves the stream's new events");
                    self.shared.errors.set("numbering the stream's events", &"rows were numbered by another publisher: this one no longer serves the stream's new events");
                    return;
                }
                Err(Failure::Database(error)) => {
                    tracing::warn!(stream = %self.stream, %error, "reading the stream's events failed; connecting again");
                    self.shared
                        .errors
                        .set("reading the stream's events", &error);
                    match self.reconnect(conn).await {
                        Some(new) => conn = new,
                        None => return,
                    }
                    deadline = tokio::time::Instant::now();
                }
            }
        }
        // What the groups did until now is theirs when the name is opened again.
        if let Err(error) = self.write_groups(&mut conn).await {
            tracing::warn!(stream = %self.stream, %error, "writing consumer group progress failed as the stream was let go; their latest events go out again, marked");
            self.shared
                .errors
                .set("writing consumer group progress", &error);
        }
        claim::release(conn, &self.stream).await;
    }

    /// Writes the changes the groups recorded since the last write.
    async fn write_groups(&mut self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if !self.written.take(&self.outbox) {
            return Ok(());
        }
        let hubs = &self.hubs;
        self.written
            .write(conn, &self.stream, &self.rpcs, |rpc| {
                hubs[rpc].oldest_retained()
            })
            .await
    }

    /// One round: numbers the rows that are ready and hands them to the hubs. Returns whether
    /// a whole batch was read (more may wait).
    async fn round(&mut self, conn: &mut PgConnection) -> Result<bool, Failure> {
        // Asked before the rows are read: a transaction that ended by now has its rows read
        // below, if it committed.
        let asked = self.shared.pending();
        let running = if asked.is_empty() {
            Vec::new()
        } else {
            rows::running(conn, &asked)
                .await
                .map_err(Failure::Database)?
        };
        let ready = rows::unsequenced(conn, &self.stream, &self.rpcs)
            .await
            .map_err(Failure::Database)?;
        let full = ready.len() as i64 >= rows::BATCH;
        if !ready.is_empty() {
            let mut next = self.next.clone();
            let mut ids = Vec::with_capacity(ready.len());
            let mut sequences = Vec::with_capacity(ready.len());
            let mut numbered = Vec::with_capacity(ready.len());
            for row in ready {
                // Only rows of known event RPCs are read.
                let Some(rpc) = self.rpcs.iter().position(|rpc| *rpc == row.rpc) else {
                    continue;
                };
                let sequence = next[rpc];
                next[rpc] += 1;
                ids.push(row.id);
                sequences.push(i64::try_from(sequence).unwrap_or(i64::MAX));
                numbered.push((rpc, sequence, row.event));
            }
            let done = rows::number(conn, &ids, &sequences)
                .await
                .map_err(Failure::Database)?;
            if done != ids.len() as u64 {
                return Err(Failure::Lost);
            }
            self.next = next;
            for (rpc, sequence, event) in numbered {
                self.hand_over(rpc, sequence, event);
            }
        }
        self.shared.ended(&asked, &running);
        let more_to_delete = self.prune(conn).await.map_err(Failure::Database)?;
        // Also what a failed write left (the hubs may be quiet now).
        self.write_groups(conn).await.map_err(Failure::Database)?;
        Ok(full || more_to_delete)
    }

    /// Deletes the rows of events that have left the hubs, once enough have gathered; returns
    /// whether some are left for the next round.
    async fn prune(&mut self, conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
        let now = tokio::time::Instant::now();
        let due = now.duration_since(self.pruned_at) >= POLL_INTERVAL;
        let mut more = false;
        for rpc in 0..self.rpcs.len() {
            // The latest event's row is kept, whatever retention says (an age limit can leave
            // no event retained): a publisher opening the name again continues after it.
            let oldest = self.hubs[rpc]
                .oldest_retained()
                .min(self.next[rpc].saturating_sub(1));
            let behind = oldest.saturating_sub(self.deleted_below[rpc]);
            if behind == 0 || (behind < PRUNE_AT && !due) {
                continue;
            }
            self.pruned_at = now;
            if let Some(kept) = self.hubs[rpc].kept_sequences() {
                more |= !self.prune_kept(conn, rpc, oldest, &kept).await?;
                continue;
            }
            let mut batches = 0;
            while self.deleted_below[rpc] < oldest {
                if batches == PRUNE_BATCHES_PER_ROUND {
                    more = true;
                    break;
                }
                let deleted =
                    rows::delete_before(conn, &self.stream, &self.rpcs[rpc], oldest, rows::BATCH)
                        .await?;
                batches += 1;
                if deleted < rows::BATCH as u64 {
                    self.deleted_below[rpc] = oldest;
                }
            }
        }
        Ok(more)
    }

    fn hand_over(&self, rpc: usize, sequence: u64, event: crate::events::hub::Encoded) {
        if let Err(error) = self.hubs[rpc].append(event, Some(sequence)) {
            tracing::error!(stream = %self.stream, rpc = %self.rpcs[rpc], %error, "a numbered event could not be served");
            let what = format!("serving a numbered event of {}", self.rpcs[rpc]);
            self.shared.errors.set(&what, &error);
        }
    }

    /// Lets the failed connection go, connects again, claims the stream again and serves what
    /// was numbered meanwhile. `None` when it is to stop: asked to, or another publisher
    /// claimed or opened the stream meanwhile.
    async fn reconnect(&mut self, failed: PgConnection) -> Option<PgConnection> {
        // A session still alive (a statement that failed, not the connection) holds the lock:
        // unlocked first, or the claim below would find the name in use by this very
        // publisher. Closing ends a dead one.
        let _ = tokio::time::timeout(Duration::from_secs(1), claim::release(failed, &self.stream))
            .await;
        let mut backoff = crate::backoff::Backoff::new(FIRST_WAIT * 100, MAX_RECONNECT_WAIT);
        loop {
            if self.shared.stopping() {
                return None;
            }
            tokio::select! {
                () = self.shared.committed.notified() => {}
                () = tokio::time::sleep(backoff.next_pause()) => {}
            }
            if self.shared.stopping() {
                return None;
            }
            let mut conn = match claim::claim(&self.options, &self.stream).await {
                Ok(conn) => conn,
                Err(claim::ClaimError::InUse(_)) => {
                    tracing::error!(stream = %self.stream, "another publisher claimed the stream while this one was disconnected: this one no longer serves its new events");
                    self.shared.errors.set("connecting again", &"another publisher claimed the stream meanwhile: this one no longer serves its new events");
                    return None;
                }
                Err(error) => {
                    tracing::warn!(stream = %self.stream, %error, "connecting again failed");
                    self.shared.errors.set("connecting again", &error);
                    continue;
                }
            };
            match claim::opened_at(&mut conn, &self.stream).await {
                Ok(opened_at) if opened_at == self.opened_at => {}
                Ok(_) => {
                    tracing::error!(stream = %self.stream, "another publisher opened the stream while this one was disconnected: this one no longer serves its new events");
                    self.shared.errors.set("connecting again", &"another publisher opened the stream meanwhile: this one no longer serves its new events");
                    claim::release(conn, &self.stream).await;
                    return None;
                }
                Err(error) => {
                    tracing::warn!(stream = %self.stream, %error, "reading the stream's owner failed");
                    self.shared.errors.set("reading the stream's owner", &error);
                    claim::release(conn, &self.stream).await;
                    continue;
                }
            }
            match self.catch_up(&mut conn).await {
                Ok(()) => return Some(conn),
                Err(error) => {
                    tracing::warn!(stream = %self.stream, %error, "reading back the stream's events failed");
                    self.shared
                        .errors
                        .set("reading back the stream's events", &error);
                    claim::release(conn, &self.stream).await;
                }
            }
        }
    }

    /// Serves the rows numbered past what the hubs have (a numbering whose answer was lost).
    async fn catch_up(&mut self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        for rpc in 0..self.rpcs.len() {
            let numbered =
                rows::numbered_from(conn, &self.stream, &self.rpcs[rpc], self.next[rpc]).await?;
            for (sequence, event) in numbered {
                if sequence == self.next[rpc] {
                    self.next[rpc] += 1;
                    self.hand_over(rpc, sequence, event);
                }
            }
        }
        Ok(())
    }
}
