//! A stream's name claimed by one live publisher: a session advisory lock held on a connection
//! of its own, and the stream's row, which keeps its epoch.
//!
//! The lock is `pg_try_advisory_lock(hashtextextended('meshless.stream ' || name, 0))`, held
//! for as long as the session lives: when the publisher releases the stream, or its process
//! dies (its connection closes, and the server ends the session and the lock with it), another
//! publisher may claim the name. When its machine is lost, the server ends the session once it
//! finds the connection dead, which its TCP keepalive settings (`tcp_keepalives_idle` and the
//! like) bound. Two names whose hashes collide cannot be served at once; with 64-bit hashes
//! that takes billions of names.

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection};

/// Why a name could not be claimed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClaimError {
    /// The database refused or failed.
    #[error("{0}")]
    Database(#[from] sqlx::Error),
    /// Another live publisher holds the name.
    #[error(
        "another live publisher serves the event stream {0:?} (it holds its advisory lock); \
         one publisher at a time serves a name"
    )]
    InUse(String),
}

/// A new connection with the pool's options, holding the lock of `name`.
pub(crate) async fn claim(
    options: &PgConnectOptions,
    name: &str,
) -> Result<PgConnection, ClaimError> {
    let mut conn = options
        .clone()
        .application_name("meshless stream")
        .connect()
        .await?;
    let locked: bool = sqlx::query_scalar(
        "SELECT pg_try_advisory_lock(hashtextextended('meshless.stream ' || $1, 0))",
    )
    .bind(name)
    .fetch_one(&mut conn)
    .await?;
    if !locked {
        // Not ours: closing is all there is to do, and failing to is harmless.
        let _ = sqlx::Connection::close(conn).await;
        return Err(ClaimError::InUse(name.to_owned()));
    }
    // The sequences it commits are on stable storage (and on synchronous standbys) before the
    // events are served, whatever the database's default.
    sqlx::query("SET synchronous_commit = on")
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

/// Releases the lock of `name` and closes the connection, so that another publisher may
/// claim the name at once.
pub(crate) async fn release(mut conn: PgConnection, name: &str) {
    let unlocked =
        sqlx::query("SELECT pg_advisory_unlock(hashtextextended('meshless.stream ' || $1, 0))")
            .bind(name)
            .execute(&mut conn)
            .await;
    if let Err(error) = unlocked {
        // Closing the session releases it too.
        tracing::debug!(stream = %name, %error, "releasing the stream's lock failed");
    }
    let _ = sqlx::Connection::close(conn).await;
}

/// What opening `name` found: its epoch, and when this opening took it.
pub(crate) struct Opened {
    pub(crate) epoch: u64,
    /// The stream's `opened_at`, in microseconds: it changes with every opening, so a
    /// publisher that claims the name again after losing its connection can tell whether
    /// another opened it meanwhile.
    pub(crate) opened_at: i64,
}

/// Opens `name`: its epoch is the one it was given when first opened, or `new` for a new
/// name.
pub(crate) async fn open(
    conn: &mut PgConnection,
    name: &str,
    new: u64,
) -> Result<Opened, sqlx::Error> {
    let (epoch, opened_at): (i64, i64) = sqlx::query_as(
        "INSERT INTO meshless.streams (name, epoch) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET opened_at = clock_timestamp()
         RETURNING epoch, (extract(epoch FROM opened_at) * 1000000)::int8",
    )
    .bind(name)
    // The epoch's 64 bits, as Postgres's signed bigint.
    .bind(i64::from_ne_bytes(new.to_ne_bytes()))
    .fetch_one(conn)
    .await?;
    Ok(Opened {
        epoch: u64::from_ne_bytes(epoch.to_ne_bytes()),
        opened_at,
    })
}

/// When `name` was last opened (see [`Opened::opened_at`]).
pub(crate) async fn opened_at(conn: &mut PgConnection, name: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT (extract(epoch FROM opened_at) * 1000000)::int8 FROM meshless.streams
         WHERE name = $1",
    )
    .bind(name)
    .fetch_one(conn)
    .await
}
