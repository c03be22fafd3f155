//! The rows of `meshless.events`: inserted in the caller's transaction, and numbered by the
//! stream's one tailer in the order they become visible, that is, the order their transactions
//! committed.
//!
//! A row is inserted without a sequence, stamped with its transaction's id (`xid8`). A serial
//! id taken at insert does not give commit order (a transaction that inserts first may commit
//! last), so a reader that kept "the last id it read" as its cursor would skip such a row. Here
//! nothing is skipped because nothing is read by such a cursor: each round reads every
//! committed row that has no sequence yet and numbers it, and the number is kept in the row.
//! A row committed after a round is without a sequence at the next one, and is numbered after
//! everything numbered before: the sequences follow commit order, without a hole. Within a
//! round, rows are numbered by (transaction id, row id), so the events of one transaction stay
//! together and in the order it published them.

use bytes::BytesMut;
use sqlx::{PgConnection, Postgres, Row as _, Transaction};

use crate::events::hub::Encoded;

/// How many rows one read takes at most.
pub(crate) const BATCH: i64 = 1024;

/// Inserts an encoded event of `rpc` into `stream` in the caller's transaction; returns the
/// transaction's id.
pub(crate) async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    stream: &str,
    rpc: &str,
    event: &Encoded,
) -> Result<i64, sqlx::Error> {
    let non_empty = |text: &str| (!text.is_empty()).then(|| text.to_owned());
    sqlx::query_scalar(
        "INSERT INTO meshless.events (stream, rpc, payload, key, traceparent, tracestate)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING transaction_id::text::int8",
    )
    .bind(stream)
    .bind(rpc)
    .bind(&event.bytes[..])
    .bind(event.key.as_deref())
    .bind(non_empty(&event.traceparent))
    .bind(non_empty(&event.tracestate))
    .fetch_one(&mut **tx)
    .await
}

/// A row read back: which event RPC, and the event ready for its sequence.
#[derive(Debug)]
pub(crate) struct Ready {
    pub(crate) id: i64,
    pub(crate) rpc: String,
    pub(crate) event: Encoded,
}

const COLUMNS: &str = "id, rpc, payload, key, traceparent, tracestate, \
                       (extract(epoch FROM published_at) * 1000000)::int8 AS published_at";

fn decode(row: &sqlx::postgres::PgRow) -> Result<Ready, sqlx::Error> {
    let payload: Vec<u8> = row.try_get("payload")?;
    let traceparent: Option<String> = row.try_get("traceparent")?;
    let tracestate: Option<String> = row.try_get("tracestate")?;
    let extra = 32 + traceparent.as_ref().map_or(0, String::len) + 8;
    let mut bytes = BytesMut::with_capacity(payload.len() + extra);
    bytes.extend_from_slice(&payload);
    Ok(Ready {
        id: row.try_get("id")?,
        rpc: row.try_get("rpc")?,
        event: Encoded {
            bytes,
            key: row.try_get("key")?,
            traceparent: traceparent.unwrap_or_default(),
            tracestate: tracestate.unwrap_or_default(),
            published_at: row.try_get("published_at")?,
        },
    })
}

/// The committed rows of `stream` without a sequence, of the event RPCs in `rpcs`, in the order
/// they are to be numbered; at most [`BATCH`].
pub(crate) async fn unsequenced(
    conn: &mut PgConnection,
    stream: &str,
    rpcs: &[String],
) -> Result<Vec<Ready>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM meshless.events
         WHERE stream = $1 AND sequence IS NULL AND rpc = ANY($2)
         ORDER BY transaction_id, id
         LIMIT $3"
    );
    sqlx::query(&sql)
        .bind(stream)
        .bind(rpcs)
        .bind(BATCH)
        .fetch_all(conn)
        .await?
        .iter()
        .map(decode)
        .collect()
}

/// Those of the transactions `xids` that are still running (neither committed nor rolled
/// back).
pub(crate) async fn running(
    conn: &mut PgConnection,
    xids: &[i64],
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT xid FROM unnest($1::int8[]) AS xid
         WHERE pg_xact_status(xid::text::xid8) = 'in progress'",
    )
    .bind(xids)
    .fetch_all(conn)
    .await
}

/// Gives each row in `ids` the sequence beside it, unless a row has one already; returns how
/// many were numbered.
pub(crate) async fn number(
    conn: &mut PgConnection,
    ids: &[i64],
    sequences: &[i64],
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE meshless.events AS e SET sequence = n.sequence
         FROM unnest($1::int8[], $2::int8[]) AS n(id, sequence)
         WHERE e.id = n.id AND e.sequence IS NULL",
    )
    .bind(ids)
    .bind(sequences)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// The latest sequence of `rpc` in `stream`; 0 before the first.
pub(crate) async fn latest(
    conn: &mut PgConnection,
    stream: &str,
    rpc: &str,
) -> Result<u64, sqlx::Error> {
    let latest: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(sequence), 0) FROM meshless.events
         WHERE stream = $1 AND rpc = $2 AND sequence IS NOT NULL",
    )
    .bind(stream)
    .bind(rpc)
    .fetch_one(conn)
    .await?;
    Ok(u64::try_from(latest).unwrap_or(0))
}

/// The numbered rows of `rpc` in `stream` from sequence `from` on, in order, with their
/// sequences.
pub(crate) async fn numbered_from(
    conn: &mut PgConnection,
    stream: &str,
    rpc: &str,
    from: u64,
) -> Result<Vec<(u64, Encoded)>, sqlx::Error> {
    let sql = format!(
        "SELECT sequence, {COLUMNS} FROM meshless.events
         WHERE stream = $1 AND rpc = $2 AND sequence >= $3
         ORDER BY sequence"
    );
    sqlx::query(&sql)
        .bind(stream)
        .bind(rpc)
        .bind(i64::try_from(from).unwrap_or(i64::MAX))
        .fetch_all(conn)
        .await?
        .iter()
        .map(|row| {
            let sequence: i64 = row.try_get("sequence")?;
            Ok((u64::try_from(sequence).unwrap_or(0), decode(row)?.event))
        })
        .collect()
}

/// Deletes at most `limit` rows of `rpc` in `stream` numbered below `before`, oldest first;
/// returns how many. One short statement: it locks only the rows it deletes.
pub(crate) async fn delete_before(
    conn: &mut PgConnection,
    stream: &str,
    rpc: &str,
    before: u64,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM meshless.events WHERE id = ANY(ARRAY(
             SELECT id FROM meshless.events
             WHERE stream = $1 AND rpc = $2 AND sequence < $3
             ORDER BY sequence
             LIMIT $4))",
    )
    .bind(stream)
    .bind(rpc)
    .bind(i64::try_from(before).unwrap_or(i64::MAX))
    .bind(limit)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
