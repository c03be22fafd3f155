//! The journal: its records, pruning, and what survives a write cut short.

use super::codec::{decode, encode, ACKED};
use super::*;

#[test]
fn changes_read_back_as_they_were_recorded() {
    for change in [
        GroupChange::Created {
            group: "mailers".into(),
            start: 7,
        },
        GroupChange::Acked {
            group: "mailers".into(),
            sequences: vec![7, 9, 12],
        },
        GroupChange::Missed {
            group: "g".into(),
            events: 3,
        },
        GroupChange::HandedOut {
            group: "g".into(),
            through: 99,
        },
        GroupChange::Forgotten { group: "g".into() },
    ] {
        assert_eq!(decode(&encode(&change)), Some(change));
    }
    assert_eq!(decode(&[ACKED, 1, 0, 0, 0, b'g', 2, 0, 0, 0]), None);
}

#[test]
fn pruning_moves_the_start_past_what_was_acknowledged_and_counts_what_is_gone() {
    let mut group = SavedGroup {
        start: 1,
        acked: [1, 2, 3, 5, 8].into(),
        ..SavedGroup::default()
    };
    prune(&mut group, 1);
    assert_eq!((group.start, group.acked.len()), (4, 2));
    // Events 4..7 left the log: 4, 6 and 7 were owed and are lost; 5 was handled.
    prune(&mut group, 8);
    assert_eq!(group.missed, 3);
    assert_eq!(group.start, 9);
    assert!(group.acked.is_empty());
}

/// A directory of its own, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("meshless-journal-{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn created(group: &str, start: u64) -> GroupChange {
    GroupChange::Created {
        group: group.into(),
        start,
    }
}

/// The first bytes of a record: what a write cut short leaves.
fn partial_record() -> Vec<u8> {
    let mut whole = Vec::new();
    encode_into(&created("lost", 9), &mut whole);
    whole.truncate(5);
    whole
}

fn append_raw(dir: &Path, bytes: &[u8]) {
    OpenOptions::new()
        .append(true)
        .open(dir.join(FILE))
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

/// Records what a short write, then later changes, leave; returns the groups read back.
fn after_a_partial_record(undo_failed: bool) -> BTreeMap<String, SavedGroup> {
    let scratch = Scratch::new();
    let mut journal = Journal::open(&scratch.0, BTreeMap::new(), 1, 0).unwrap();
    journal.record(&[created("g", 1)], 1).unwrap();
    append_raw(&scratch.0, &partial_record());
    journal.partial = undo_failed;
    let acked = GroupChange::Acked {
        group: "g".into(),
        sequences: vec![1, 2, 3],
    };
    let handed_out = GroupChange::HandedOut {
        group: "g".into(),
        through: 40,
    };
    journal.record(&[acked, handed_out], 1).unwrap();
    journal.record(&[created("h", 5)], 1).unwrap();
    read(&scratch.0).unwrap()
}

#[test]
fn a_partial_record_in_the_middle_hides_nothing_after_it() {
    for undo_failed in [false, true] {
        let groups = after_a_partial_record(undo_failed);
        assert_eq!(
            groups.keys().collect::<Vec<_>>(),
            ["g", "h"],
            "undo failed: {undo_failed}"
        );
        assert_eq!(groups["g"].acked, [1, 2, 3].into());
        assert_eq!(groups["g"].handed_out, 40);
    }
}

#[test]
fn a_partial_record_is_cut_back_before_the_next_one() {
    let scratch = Scratch::new();
    let mut journal = Journal::open(&scratch.0, BTreeMap::new(), 1, 0).unwrap();
    journal.record(&[created("g", 1)], 1).unwrap();
    let whole = std::fs::metadata(scratch.0.join(FILE)).unwrap().len();
    append_raw(&scratch.0, &partial_record());
    journal.partial = true;
    journal.record(&[created("h", 5)], 1).unwrap();
    let mut expected = Vec::new();
    encode_into(&created("h", 5), &mut expected);
    assert_eq!(
        std::fs::metadata(scratch.0.join(FILE)).unwrap().len(),
        whole + expected.len() as u64,
        "no partial record left in the file"
    );
}

#[test]
fn many_acknowledgements_are_split_over_records_of_bounded_size() {
    let scratch = Scratch::new();
    let mut journal = Journal::open(&scratch.0, BTreeMap::new(), 1, 0).unwrap();
    let sequences: Vec<u64> = (1..=3 * ACKED_PER_RECORD as u64 + 1).collect();
    let acked = GroupChange::Acked {
        group: "g".into(),
        sequences: sequences.clone(),
    };
    journal.record(&[created("g", 1), acked], 1).unwrap();
    let data = Bytes::from(std::fs::read(scratch.0.join(FILE)).unwrap());
    let mut at = 0;
    let mut records = 0;
    while let Some((_, end)) = change_at(&data, at) {
        assert!(
            end - at < ACKED_PER_RECORD * 8 + 64,
            "a record of {} bytes",
            end - at
        );
        (records, at) = (records + 1, end);
    }
    assert_eq!(
        (records, at),
        (5, data.len()),
        "created, then 4 records of acknowledgements"
    );
    let groups = read(&scratch.0).unwrap();
    assert_eq!(groups["g"].acked.len(), sequences.len());
}

#[test]
fn a_rewrite_replaces_the_journal_whole() {
    let scratch = Scratch::new();
    let mut journal = Journal::open(&scratch.0, BTreeMap::new(), 1, 0).unwrap();
    journal.record(&[created("g", 1)], 1).unwrap();
    for sequence in 1..=5000 {
        let acked = GroupChange::Acked {
            group: "g".into(),
            sequences: vec![sequence],
        };
        journal.record(&[acked], 1).unwrap();
    }
    assert!(journal.records < 5000, "the journal was rewritten compact");
    assert!(!scratch.0.join("groups.journal.new").exists());
    let groups = read(&scratch.0).unwrap();
    let g = &groups["g"];
    assert!((1..=5000).all(|s| s < g.start || g.acked.contains(&s)));
}
