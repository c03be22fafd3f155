//! The journal's records: one change to a consumer group each.

use super::ACKED_PER_RECORD;
use crate::events::disk::record;
use crate::events::log::{GroupChange, SavedGroup};

const CREATED: u8 = 1;
pub(super) const ACKED: u8 = 2;
const FORGOTTEN: u8 = 3;
const MISSED: u8 = 4;
const HANDED_OUT: u8 = 5;

pub(super) fn encode(change: &GroupChange) -> Vec<u8> {
    let mut out = Vec::new();
    let name = |tag: u8, group: &str, out: &mut Vec<u8>| {
        out.push(tag);
        let bytes = group.as_bytes();
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    };
    match change {
        GroupChange::Created { group, start } => {
            name(CREATED, group, &mut out);
            out.extend_from_slice(&start.to_le_bytes());
        }
        GroupChange::Acked { group, sequences } => {
            name(ACKED, group, &mut out);
            out.extend_from_slice(&(sequences.len() as u32).to_le_bytes());
            for sequence in sequences {
                out.extend_from_slice(&sequence.to_le_bytes());
            }
        }
        GroupChange::Missed { group, events } => {
            name(MISSED, group, &mut out);
            out.extend_from_slice(&events.to_le_bytes());
        }
        GroupChange::HandedOut { group, through } => {
            name(HANDED_OUT, group, &mut out);
            out.extend_from_slice(&through.to_le_bytes());
        }
        GroupChange::Forgotten { group } => name(FORGOTTEN, group, &mut out),
    }
    out
}

pub(super) fn decode(data: &[u8]) -> Option<GroupChange> {
    let (&tag, rest) = data.split_first()?;
    let length = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let group = String::from_utf8(rest.get(4..4 + length)?.to_vec()).ok()?;
    let rest = rest.get(4 + length..)?;
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(rest.get(at..at + 8)?.try_into().ok()?))
    };
    Some(match tag {
        CREATED => GroupChange::Created {
            group,
            start: u64_at(0)?,
        },
        MISSED => GroupChange::Missed {
            group,
            events: u64_at(0)?,
        },
        HANDED_OUT => GroupChange::HandedOut {
            group,
            through: u64_at(0)?,
        },
        FORGOTTEN => GroupChange::Forgotten { group },
        ACKED => {
            let count = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let rest = rest.get(4..)?;
            if rest.len() != count.checked_mul(8)? {
                return None;
            }
            GroupChange::Acked {
                group,
                sequences: rest
                    .chunks_exact(8)
                    .map(|chunk| u64::from_le_bytes(chunk.try_into().unwrap_or_default()))
                    .collect(),
            }
        }
        _ => return None,
    })
}

/// The changes that make `group` as it stands.
pub(super) fn as_changes(name: &str, group: &SavedGroup) -> Vec<GroupChange> {
    let group_name = || name.to_owned();
    let mut changes = vec![GroupChange::Created {
        group: group_name(),
        start: group.start,
    }];
    if group.handed_out > 0 {
        let through = group.handed_out;
        changes.push(GroupChange::HandedOut {
            group: group_name(),
            through,
        });
    }
    if group.missed > 0 {
        let events = group.missed;
        changes.push(GroupChange::Missed {
            group: group_name(),
            events,
        });
    }
    if !group.acked.is_empty() {
        let sequences = group.acked.iter().copied().collect();
        changes.push(GroupChange::Acked {
            group: group_name(),
            sequences,
        });
    }
    changes
}

/// Appends the records of `change` to `out`.
pub(super) fn encode_into(change: &GroupChange, out: &mut Vec<u8>) {
    match change {
        GroupChange::Acked { group, sequences } if sequences.len() > ACKED_PER_RECORD => {
            for chunk in sequences.chunks(ACKED_PER_RECORD) {
                let part = GroupChange::Acked {
                    group: group.clone(),
                    sequences: chunk.to_vec(),
                };
                record::encode(0, 0, &encode(&part), out);
            }
        }
        change => record::encode(0, 0, &encode(change), out),
    }
}
