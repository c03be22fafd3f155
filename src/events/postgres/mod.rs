//! Events kept in the service's own PostgreSQL database (feature `postgres`): published inside
//! the service's transactions with sqlx, served to observers like any other events.
//!
//! A publisher opened with `{Service}Publisher::open_postgres(&pool, name)` keeps its events in
//! the `meshless` schema of the pool's database (created and migrated on open, see `schema`).
//! Its `publish_{event}_in(&mut tx, event)` inserts the event in the caller's transaction: a
//! transaction that commits has published it, one that rolls back never did, and no observer
//! ever sees it. The plain `publish_*` is refused ([`PublishError::InTransaction`]): an event of
//! such a publisher is published by a transaction.
//!
//! - **Commit order without holes.** The publisher numbers events as their transactions
//!   commit, keeping each number in its row (see `rows`), and serves them from its retained
//!   window like any event: cursors, gaps, keys and trace context as with `publish_*`. A
//!   transaction kept open delays only its own events.
//! - **Latency.** [`Publisher::commit`] commits and has the event served at once; a plain
//!   `tx.commit()` is noticed within milliseconds (the publisher looks at doubling intervals
//!   from 1 ms while the transaction runs), and rows written by other processes within
//!   [`POLL_INTERVAL`]. No `LISTEN`/`NOTIFY`.
//! - **A name, not a machine.** The stream belongs to its name: a publisher opened later with
//!   the same name, on any machine, continues its epoch and sequences, so observers resume
//!   with nothing lost and nothing twice. One live publisher serves a name: it holds a session
//!   advisory lock on a connection of its own, and a second one is refused with an error
//!   ([`Error::is_stream_in_use`](crate::Error::is_stream_in_use)).
//!   [`Publisher::release`] lets the name go; so does dropping the publisher (shortly after),
//!   or the end of its process (its connection closes). When its machine is lost, the name is
//!   free once the server finds the connection dead (its TCP keepalive settings).
//!
//! - **Consumer groups** keep their progress in `meshless.groups` (see `groups`), and
//!   **retention** deletes the rows of events past the retained window (see `tail`), but
//!   those kept by compaction by key (see `compact`).
//!
//! An observer whose handler writes to the same database keeps its cursor there with
//! [`PgCursors`]: the handler's transaction records the event as handled, so that its effects
//! happen exactly once.
//!
//! [`PublishError::InTransaction`]: crate::events::PublishError::InTransaction
//! [`Publisher::commit`]: crate::events::Publisher::commit
//! [`Publisher::release`]: crate::events::Publisher::release

mod claim;
mod compact;
mod cursor_rows;
mod cursor_state;
mod cursors;
mod groups;
mod publisher;
mod rows;
mod schema;
mod tail;

use std::sync::{Arc, Mutex};

use prost::Message;
use sqlx::{PgPool, Postgres, Transaction};

pub use cursors::PgCursors;
pub use sqlx;
pub use tail::POLL_INTERVAL;

use super::error::PublishError;
use super::hub::{Hub, HubSettings};
use super::log::{Limits, MemoryLog};
use crate::Error;

/// The Postgres side of a publisher: its stream's name, and the tailer serving it.
pub(crate) struct Stream {
    name: String,
    shared: Arc<tail::Shared>,
    tailer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

/// One event RPC of the publisher being opened: its hub's settings and its log's retention.
pub(crate) struct Rpc {
    pub(crate) hub: HubSettings,
    pub(crate) retain: usize,
    /// Its retention, compaction included.
    pub(crate) limits: Limits,
}

/// What was opened: the epoch, the hubs (holding the retained events), and the stream.
pub(crate) struct Opened {
    pub(crate) hubs: Vec<Arc<Hub>>,
    pub(crate) stream: Stream,
}

/// Opens the stream `name` in the pool's database for a publisher of `rpcs` (their hub
/// settings' epoch is replaced by the stream's): migrates the schema, claims the name, reads
/// back the retained events and starts the tailer.
pub(crate) async fn open(
    pool: &PgPool,
    name: &str,
    rpcs: Vec<Rpc>,
    new_epoch: u64,
) -> Result<Opened, Error> {
    let database = |what: &str| {
        let what = format!("{what} (event stream {name:?})");
        move |error| Error::database(what, error)
    };
    schema::migrate(pool)
        .await
        .map_err(|error| error.into_error(&format!("event stream {name:?}")))?;
    let options = (*pool.connect_options()).clone();
    let mut conn = claim::claim(&options, name)
        .await
        .map_err(|error| match error {
            claim::ClaimError::Database(error) => database("claiming the stream")(error),
            in_use @ claim::ClaimError::InUse(_) => Error::stream_in_use(in_use.to_string()),
        })?;
    // From here on the name is ours; an error closes the connection, and the lock with it.
    let claim::Opened { epoch, opened_at } = claim::open(&mut conn, name, new_epoch)
        .await
        .map_err(database("reading the stream's epoch"))?;
    let mut hubs = Vec::with_capacity(rpcs.len());
    let mut methods = Vec::with_capacity(rpcs.len());
    let mut next = Vec::with_capacity(rpcs.len());
    let mut loaded_groups = Vec::with_capacity(rpcs.len());
    let outbox = Arc::new(groups::Outbox::default());
    let shared = Arc::new(tail::Shared::default());
    for (index, rpc) in rpcs.into_iter().enumerate() {
        let Rpc {
            mut hub,
            retain,
            limits,
        } = rpc;
        let latest = rows::latest(&mut conn, name, &hub.method)
            .await
            .map_err(database("reading the stream's latest sequence"))?;
        let kept_from = latest.saturating_sub(retain as u64) + 1;
        // With compaction by key, the rows before the window are the kept events (and some
        // superseded since, not deleted yet: restoring them in order drops those).
        let read_from = if limits.compact.is_some() {
            1
        } else {
            kept_from
        };
        let kept = rows::numbered_from(&mut conn, name, &hub.method, read_from)
            .await
            .map_err(database("reading back the retained events"))?;
        let mut log = MemoryLog::with_limits(retain, limits);
        for (sequence, event) in kept {
            let event = event.stored(epoch, sequence);
            if sequence < kept_from {
                log.restore_kept(event);
            } else {
                log.restore(event);
            }
        }
        log.set_next(latest + 1);
        let saved = groups::load(&mut conn, name, &hub.method, latest)
            .await
            .map_err(database("reading the stream's consumer groups"))?;
        loaded_groups.push(saved.iter().cloned().collect());
        hub.epoch = epoch;
        methods.push(hub.method.clone());
        next.push(latest + 1);
        let log = groups::PgLog {
            memory: log,
            rpc: index,
            saved,
            outbox: outbox.clone(),
            errors: shared.errors.clone(),
        };
        hubs.push(Hub::with_log(hub, Box::new(log), None));
    }
    let tailer = tail::Tailer {
        stream: name.to_owned(),
        options,
        rpcs: methods,
        hubs: hubs.clone(),
        deleted_below: vec![0; next.len()],
        kept_rows: vec![Default::default(); next.len()],
        next,
        pruned_at: tokio::time::Instant::now(),
        opened_at,
        outbox,
        written: groups::Written::new(loaded_groups),
        shared: shared.clone(),
    };
    // Rows committed while no publisher served the name are numbered at once.
    shared.committed();
    let task = tokio::spawn(tailer.run(conn));
    Ok(Opened {
        hubs,
        stream: Stream {
            name: name.to_owned(),
            shared,
            tailer: Mutex::new(Some(task)),
        },
    })
}

impl Stream {
    /// Inserts `event` for `hub`'s event RPC in the caller's transaction.
    pub(crate) async fn publish_in<T: Message>(
        &self,
        hub: &Hub,
        tx: &mut Transaction<'_, Postgres>,
        event: &T,
    ) -> Result<(), sqlx::Error> {
        let encoded = hub
            .encode(event)
            .map_err(|refused| sqlx::Error::Encode(Box::new(refused)))?;
        let xid = rows::insert(tx, &self.name, &hub.method, &encoded).await?;
        self.shared.published(xid);
        Ok(())
    }

    /// A transaction that published committed: its events are served at once.
    pub(crate) fn committed(&self) {
        self.shared.committed();
    }

    /// Stops numbering events and lets the name go; returns once another publisher may claim
    /// it.
    pub(crate) async fn release(&self) {
        self.shared.stop();
        let task = self
            .tailer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// The refusal of a plain publish on `rpc`.
    pub(crate) fn refuse_plain(&self, rpc: &str) -> PublishError {
        PublishError::InTransaction {
            rpc: rpc.to_owned(),
        }
    }
}
