//! Cursors of an epoch that a log's epoch continues (a log kept through a crash of the
//! machine), as that epoch takes them.

use super::EventLog;

/// A subscriber's cursor as the log's epoch `epoch` takes it: a cursor of an epoch it
/// continues names the same event in `epoch` when that event was kept; past what was kept,
/// it stands at the last event kept, and the second value is the epoch whose events after
/// it are lost (0: none).
pub(crate) fn continued_cursor(
    log: &dyn EventLog,
    epoch: u64,
    cursor: Option<crate::v1::Cursor>,
) -> (Option<crate::v1::Cursor>, u64) {
    let Some(cursor) = cursor.filter(|cursor| cursor.epoch != epoch) else {
        return (cursor, 0);
    };
    match log.continued(cursor.epoch) {
        Some(through) => (
            Some(crate::v1::Cursor {
                epoch,
                sequence: cursor.sequence.min(through),
            }),
            if cursor.sequence > through {
                cursor.epoch
            } else {
                0
            },
        ),
        None => (Some(cursor), 0),
    }
}
