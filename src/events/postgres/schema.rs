//! The `meshless` schema: created and migrated by the publisher that opens a stream (and by
//! `PgCursors::open`), in versions, each applied once.
//!
//! Every migration runs in one transaction under a transaction-scoped advisory lock, so that
//! instances starting together migrate once, one after the other. A database whose schema is
//! newer than this build knows (migrated by a newer meshless) is refused with an error that
//! says so, rather than written with assumptions that may no longer hold.

use sqlx::PgPool;

use crate::Error;

/// The SQL of each version, the first being version 1. Never edit one that shipped: add the
/// next.
const MIGRATIONS: &[&str] = &[
    // Version 1: streams (a publisher's name and its epoch) and their events.
    r#"
CREATE TABLE meshless.streams (
    name text PRIMARY KEY,
    epoch bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    opened_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE meshless.events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream text NOT NULL,
    rpc text NOT NULL,
    transaction_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
    sequence bigint,
    published_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    payload bytea NOT NULL,
    key bytea,
    traceparent text,
    tracestate text
);
CREATE INDEX events_to_sequence ON meshless.events (stream, transaction_id, id)
    WHERE sequence IS NULL;
CREATE UNIQUE INDEX events_by_sequence ON meshless.events (stream, rpc, sequence)
    WHERE sequence IS NOT NULL;
"#,
    // Version 2: plain observers' cursors (`PgCursors`), and the events their handlers'
    // transactions recorded past them.
    r#"
CREATE TABLE meshless.observer_cursors (
    observer text NOT NULL,
    rpc text NOT NULL,
    epoch bigint NOT NULL,
    sequence bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (observer, rpc, epoch)
);
CREATE TABLE meshless.observer_handled (
    observer text NOT NULL,
    rpc text NOT NULL,
    epoch bigint NOT NULL,
    sequence bigint NOT NULL,
    handled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (observer, rpc, epoch, sequence)
);
"#,
    // Version 3: consumer groups' progress.
    r#"
CREATE TABLE meshless.groups (
    stream text NOT NULL,
    rpc text NOT NULL,
    name text NOT NULL,
    start bigint NOT NULL,
    missed bigint NOT NULL DEFAULT 0,
    handed_out bigint NOT NULL DEFAULT 0,
    acked bigint[] NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, rpc, name)
);
"#,
];

/// The newest schema version this build knows.
pub(crate) const VERSION: i32 = MIGRATIONS.len() as i32;

/// Why the schema could not be brought to [`VERSION`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum SchemaError {
    /// The database refused or failed a statement.
    #[error("{0}")]
    Database(#[from] sqlx::Error),
    /// A newer meshless migrated the schema.
    #[error(
        "the meshless schema in this database is at version {found}, newer than the versions \
         this build of meshless knows (up to {VERSION}): run a newer meshless"
    )]
    TooNew {
        /// The version in the database.
        found: i32,
    },
}

impl SchemaError {
    /// The error to give the caller, `opening` saying what was being opened.
    pub(crate) fn into_error(self, opening: &str) -> Error {
        match self {
            Self::Database(error) => {
                Error::database(format!("migrating the meshless schema ({opening})"), error)
            }
            too_new @ Self::TooNew { .. } => Error::unsupported(too_new.to_string()),
        }
    }
}

/// Creates the schema, or migrates it to [`VERSION`]; returns the version found before.
pub(crate) async fn migrate(pool: &PgPool) -> Result<i32, SchemaError> {
    let mut tx = pool.begin().await?;
    // Instances opening at once migrate one after the other; the lock ends with the
    // transaction.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('meshless.schema', 0))")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(
        "CREATE SCHEMA IF NOT EXISTS meshless;
         CREATE TABLE IF NOT EXISTS meshless.schema_version (
             version integer PRIMARY KEY,
             migrated_at timestamptz NOT NULL DEFAULT now()
         );",
    )
    .execute(&mut *tx)
    .await?;
    let found: i32 =
        sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM meshless.schema_version")
            .fetch_one(&mut *tx)
            .await?;
    if found > VERSION {
        return Err(SchemaError::TooNew { found });
    }
    for (version, sql) in (1..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(found).unwrap_or(0))
    {
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO meshless.schema_version (version) VALUES ($1)")
            .bind(version)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    if found < VERSION {
        tracing::info!(from = found, to = VERSION, "migrated the meshless schema");
    }
    Ok(found)
}
