//! The rows of `meshless.observer_cursors` and `meshless.observer_handled`: an observer's
//! cursors, and the events its handlers' transactions recorded as handled past them.
//!
//! A handler's transaction inserts the event's row first, so that a second transaction for the
//! same event waits for the first and then finds its row; and reads the cursor after that
//! insert, so that a record pruned because the cursor passed it is still seen as handled. The
//! writer moves a cursor and deletes the records it passed in one short transaction: only rows
//! no transaction holds, so no handler waits on it.

use std::collections::BTreeMap;

use sqlx::{PgPool, Postgres, Row as _, Transaction};

/// An event, or every event up to it: event RPC, epoch, sequence.
pub(crate) type Position = (String, u64, u64);

/// Epochs and sequences are 64 bits, kept in Postgres's signed bigint.
fn signed(value: u64) -> i64 {
    i64::from_ne_bytes(value.to_ne_bytes())
}

fn unsigned(value: i64) -> u64 {
    u64::from_ne_bytes(value.to_ne_bytes())
}

/// What `observer` stored: its cursors, and the events recorded handled (past them or not
/// yet pruned), read in one snapshot.
pub(crate) async fn load(
    pool: &PgPool,
    observer: &str,
) -> Result<(Vec<Position>, Vec<Position>), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let read = |table: &str| {
        format!("SELECT rpc, epoch, sequence FROM meshless.{table} WHERE observer = $1")
    };
    let mut positions = Vec::with_capacity(2);
    for table in ["observer_cursors", "observer_handled"] {
        let rows = sqlx::query(&read(table))
            .bind(observer)
            .fetch_all(&mut *tx)
            .await?;
        positions.push(
            rows.iter()
                .map(|row| {
                    Ok((
                        row.try_get("rpc")?,
                        unsigned(row.try_get("epoch")?),
                        unsigned(row.try_get("sequence")?),
                    ))
                })
                .collect::<Result<Vec<Position>, sqlx::Error>>()?,
        );
    }
    tx.commit().await?;
    let handled = positions.pop().unwrap_or_default();
    let cursors = positions.pop().unwrap_or_default();
    Ok((cursors, handled))
}

/// Records in `tx` that `observer` handled the event at `position`; false when it was handled
/// before: recorded by a transaction that committed, or passed by the cursor.
pub(crate) async fn record(
    tx: &mut Transaction<'static, Postgres>,
    observer: &str,
    (rpc, epoch, sequence): (&str, u64, u64),
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO meshless.observer_handled (observer, rpc, epoch, sequence)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING",
    )
    .bind(observer)
    .bind(rpc)
    .bind(signed(epoch))
    .bind(signed(sequence))
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(false);
    }
    // A statement of its own, after the insert: it sees a cursor moved by a writer that
    // committed while the insert waited.
    let passed: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM meshless.observer_cursors
                        WHERE observer = $1 AND rpc = $2 AND epoch = $3 AND sequence >= $4)",
    )
    .bind(observer)
    .bind(rpc)
    .bind(signed(epoch))
    .bind(signed(sequence))
    .fetch_one(&mut **tx)
    .await?;
    Ok(!passed)
}

/// Moves `observer`'s cursors forward to `moved` (never back), and deletes the records they
/// passed, in one transaction.
pub(crate) async fn write(
    pool: &PgPool,
    observer: &str,
    moved: &BTreeMap<(String, u64), u64>,
) -> Result<(), sqlx::Error> {
    let rpcs: Vec<&str> = moved.keys().map(|(rpc, _)| rpc.as_str()).collect();
    let epochs: Vec<i64> = moved.keys().map(|&(_, epoch)| signed(epoch)).collect();
    let sequences: Vec<i64> = moved.values().map(|&sequence| signed(sequence)).collect();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO meshless.observer_cursors (observer, rpc, epoch, sequence)
         SELECT $1::text, * FROM unnest($2::text[], $3::int8[], $4::int8[])
         ON CONFLICT (observer, rpc, epoch) DO UPDATE
         SET sequence = greatest(observer_cursors.sequence, excluded.sequence),
             updated_at = now()",
    )
    .bind(observer)
    .bind(&rpcs)
    .bind(&epochs)
    .bind(&sequences)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "DELETE FROM meshless.observer_handled AS handled
         USING unnest($2::text[], $3::int8[], $4::int8[]) AS cursor (rpc, epoch, sequence)
         WHERE handled.observer = $1 AND handled.rpc = cursor.rpc
           AND handled.epoch = cursor.epoch AND handled.sequence <= cursor.sequence",
    )
    .bind(observer)
    .bind(&rpcs)
    .bind(&epochs)
    .bind(&sequences)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Deletes the cursors of `observer` beyond the `keep` updated last, and the records of their
/// producers; returns what was deleted.
pub(crate) async fn forget(
    pool: &PgPool,
    observer: &str,
    keep: usize,
) -> Result<Vec<Position>, sqlx::Error> {
    let rows = sqlx::query(
        "WITH forgotten AS (
             DELETE FROM meshless.observer_cursors
             WHERE observer = $1 AND (rpc, epoch) IN (
                 SELECT rpc, epoch FROM meshless.observer_cursors WHERE observer = $1
                 ORDER BY updated_at DESC OFFSET $2)
             RETURNING rpc, epoch, sequence),
         records AS (
             DELETE FROM meshless.observer_handled AS handled USING forgotten
             WHERE handled.observer = $1 AND handled.rpc = forgotten.rpc
               AND handled.epoch = forgotten.epoch)
         SELECT rpc, epoch, sequence FROM forgotten",
    )
    .bind(observer)
    .bind(i64::try_from(keep).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("rpc")?,
                unsigned(row.try_get("epoch")?),
                unsigned(row.try_get("sequence")?),
            ))
        })
        .collect()
}
