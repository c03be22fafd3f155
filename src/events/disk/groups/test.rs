//! The journal: its records, pruning, and what survives a write cut short.

use super::codec::{decode, encode, ACKED};
use super::*;
use crate::events::disk::sync;
use crate::events::disk::test::settle;

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
    group.prune(1);
    assert_eq!((group.start, group.acked.len()), (4, 2));
    // Events 4..7 left the log: 4, 6 and 7 were owed and are lost; 5 was handled.
    group.prune(8);
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

fn append_raw(journal: &Journal, bytes: &[u8]) {
    (&journal.file).write_all(bytes).unwrap();
}

/// A journal in `dir`, with a sync thread of its own.
fn journal(dir: &Path) -> Journal {
    let file = Arc::new(File::create(dir.join("segment")).unwrap());
    let syncer = Syncer::start("test", dir.to_owned(), file, 0).unwrap();
    Journal::open(dir, Saved::default(), (1, 0), syncer).unwrap()
}

/// Records what a short write, then later changes, leave; returns the groups read back.
fn after_a_partial_record(undo_failed: bool) -> BTreeMap<String, SavedGroup> {
    let scratch = Scratch::new();
    let mut journal = journal(&scratch.0);
    journal.record(&[created("g", 1)], 1).unwrap();
    append_raw(&journal, &partial_record());
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
    read(&scratch.0).unwrap().groups
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
    let mut journal = journal(&scratch.0);
    journal.record(&[created("g", 1)], 1).unwrap();
    let whole = journal.file.metadata().unwrap().len();
    append_raw(&journal, &partial_record());
    journal.partial = true;
    journal.record(&[created("h", 5)], 1).unwrap();
    let mut expected = Vec::new();
    encode_into(&created("h", 5), &mut expected);
    assert_eq!(
        journal.file.metadata().unwrap().len(),
        whole + expected.len() as u64,
        "no partial record left in the file"
    );
}

#[test]
fn many_acknowledgements_are_split_over_records_of_bounded_size() {
    let scratch = Scratch::new();
    let mut journal = journal(&scratch.0);
    let sequences: Vec<u64> = (1..=3 * ACKED_PER_RECORD as u64 + 1).collect();
    let acked = GroupChange::Acked {
        group: "g".into(),
        sequences: sequences.clone(),
    };
    journal.record(&[created("g", 1), acked], 1).unwrap();
    let data = Bytes::from(std::fs::read(scratch.0.join(tail_name(journal.generation))).unwrap());
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
    let groups = read(&scratch.0).unwrap().groups;
    assert_eq!(groups["g"].acked.len(), sequences.len());
}

#[test]
fn compaction_happens_beside_the_publish_path_and_replaces_the_files_whole() {
    let scratch = Scratch::new();
    let mut journal = journal(&scratch.0);
    journal.record(&[created("g", 1)], 1).unwrap();
    let syncs_before = sync::SYNCS_ON_THIS_THREAD.with(|syncs| syncs.get());
    for sequence in 1..=10_000 {
        let acked = GroupChange::Acked {
            group: "g".into(),
            sequences: vec![sequence],
        };
        journal.record(&[acked], 1).unwrap();
        if sequence % 4096 == 0 {
            // Let the compaction handed over finish, for the next to start.
            settle(&journal.syncer);
        }
    }
    assert_eq!(
        sync::SYNCS_ON_THIS_THREAD.with(|syncs| syncs.get()),
        syncs_before,
        "no sync where changes are recorded"
    );
    assert!(
        journal.generation >= 3,
        "compacted: tail {}",
        journal.generation
    );
    settle(&journal.syncer);
    let (bases, tails) = files(&scratch.0).unwrap();
    assert_eq!(bases.len(), 1, "{bases:?}");
    assert!(tails.iter().all(|(n, _)| *n > bases[0].0), "{tails:?}");
    let groups = read(&scratch.0).unwrap().groups;
    let g = &groups["g"];
    assert!((1..=10_000).all(|s| s < g.start || g.acked.contains(&s)));
    assert!(
        g.start > 8000,
        "the base holds the pruned groups: start {}",
        g.start
    );
}
