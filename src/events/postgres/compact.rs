//! Retention with compaction by key on Postgres: the rows of events past the retained window
//! are deleted but for those the hub keeps as the latest of their key; a kept row goes once
//! its event is superseded (or dropped past the bound). The hub's kept events are the truth:
//! the rows follow them, a round behind.

use std::collections::BTreeSet;

use sqlx::PgConnection;

use super::rows::BATCH;
use super::tail::{Tailer, PRUNE_BATCHES_PER_ROUND};

impl Tailer {
    /// For an event RPC (number `rpc`) with compaction by key: deletes the rows below `oldest`
    /// but those of the `kept` events; returns whether it is done.
    pub(super) async fn prune_kept(
        &mut self,
        conn: &mut PgConnection,
        rpc: usize,
        oldest: u64,
        kept: &[u64],
    ) -> Result<bool, sqlx::Error> {
        let names = (&*self.stream, &*self.rpcs[rpc]);
        let range = (self.deleted_below[rpc], oldest);
        let rows = &mut self.kept_rows[rpc];
        let done = prune(conn, names, range, kept, rows, PRUNE_BATCHES_PER_ROUND).await?;
        if done {
            self.deleted_below[rpc] = oldest;
        }
        Ok(done)
    }
}

/// Deletes, of `rpc` in `stream`, the rows kept earlier (`rows`) whose events are no longer
/// `kept`, and at most `batches` batches of the rows in `range` (from, before) that are not
/// `kept`. Returns whether the range is done (its kept rows are then in `rows`).
async fn prune(
    conn: &mut PgConnection,
    (stream, rpc): (&str, &str),
    (from, before): (u64, u64),
    kept: &[u64],
    rows: &mut BTreeSet<u64>,
    batches: usize,
) -> Result<bool, sqlx::Error> {
    let signed = |sequence: u64| i64::try_from(sequence).unwrap_or(i64::MAX);
    let kept_set: BTreeSet<u64> = kept.iter().copied().collect();
    let superseded: Vec<i64> = rows.difference(&kept_set).map(|s| signed(*s)).collect();
    if !superseded.is_empty() {
        sqlx::query(
            "DELETE FROM meshless.events
             WHERE stream = $1 AND rpc = $2 AND sequence = ANY($3)",
        )
        .bind(stream)
        .bind(rpc)
        .bind(&superseded)
        .execute(&mut *conn)
        .await?;
        rows.retain(|sequence| kept_set.contains(sequence));
    }
    let in_range: Vec<i64> = kept_set.range(from..before).map(|s| signed(*s)).collect();
    for _ in 0..batches {
        let deleted = sqlx::query(
            "DELETE FROM meshless.events WHERE id = ANY(ARRAY(
                 SELECT id FROM meshless.events AS e
                 WHERE stream = $1 AND rpc = $2 AND sequence >= $3 AND sequence < $4
                   AND NOT EXISTS (SELECT 1 FROM unnest($5::bigint[]) AS k(s) WHERE k.s = e.sequence)
                 ORDER BY sequence
                 LIMIT $6))",
        )
        .bind(stream)
        .bind(rpc)
        .bind(signed(from))
        .bind(signed(before))
        .bind(&in_range)
        .bind(BATCH)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if deleted < BATCH as u64 {
            rows.extend(kept_set.range(from..before));
            return Ok(true);
        }
    }
    Ok(false)
}
