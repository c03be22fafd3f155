//! Reopening after crashes: of the process (a record cut mid-write), of the machine (records
//! lost whole or torn), and disk faults (a corrupt record).

use std::collections::BTreeMap;

use bytes::BytesMut;
use prost::Message;

use super::*;
use crate::events::log::{GroupChange, SavedGroup};
use crate::events::wire::{self, Envelope};

/// The last run's process died without closing its logs (the machine kept running).
fn as_if_the_process_died(dir: &Path) {
    std::fs::remove_file(dir.join("closed-cleanly")).unwrap();
}

/// Cuts `bytes` off the end of the last segment holding events.
fn cut_tail(dir: &Path, bytes: u64) {
    let last = segment_files(dir)
        .into_iter()
        .rfind(|path| std::fs::metadata(path).unwrap().len() > 0)
        .unwrap();
    let length = std::fs::metadata(&last).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    file.set_len(length - bytes).unwrap();
}

/// Cuts the log right before event `sequence` (at a record boundary): the records after it
/// lost whole, as a crash of the machine usually leaves a file.
fn lose_from(dir: &Path, sequence: u64) {
    for path in segment_files(dir) {
        let data = Bytes::from(std::fs::read(&path).unwrap());
        let mut at = 0;
        while let record::Scanned::Record {
            sequence: s, end, ..
        } = record::scan(&data, at)
        {
            if s == sequence {
                let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                file.set_len(at as u64).unwrap();
                return;
            }
            at = end;
        }
    }
    panic!("no event {sequence}");
}

/// An event as the hub stores it: its metadata names `epoch`.
fn published(epoch: u64, sequence: u64) -> Stored {
    let mut bytes = BytesMut::new();
    wire::append_published(
        &mut bytes,
        wire::Published {
            epoch,
            sequence,
            published_at: 1,
            traceparent: String::new(),
            tracestate: String::new(),
            key: Vec::new(),
        },
    );
    Stored {
        sequence,
        published_at: 1,
        bytes: bytes.freeze(),
        key: None,
    }
}

fn epoch_served(event: &Bytes) -> u64 {
    let (_, metadata) = Envelope::<()>::decode(event.clone())
        .unwrap()
        .into_parts()
        .unwrap();
    metadata.epoch
}

#[test]
fn a_record_cut_by_a_killed_process_is_removed_and_the_epoch_kept() {
    let scratch = Scratch::new();
    let (epoch, mut log) = open_epoch(&scratch.0, 100);
    append(&mut log, 5);
    drop(log);
    as_if_the_process_died(&scratch.0);
    cut_tail(&scratch.0, 3);

    let (reopened_epoch, mut log) = open_epoch(&scratch.0, 100);
    assert_eq!(
        reopened_epoch, epoch,
        "nobody saw the cut record: nothing to tell"
    );
    assert_eq!(log.next_sequence(), 5);
    append(&mut log, 2);
    drop(log);
    assert_eq!(reopened(&scratch.0, 100), (vec![1, 2, 3, 4, 5, 6], None));
}

#[test]
fn records_lost_whole_in_a_crash_of_the_machine_start_an_epoch_that_continues_the_rest() {
    let scratch = Scratch::new();
    let (old, mut log) = open_epoch(&scratch.0, 100);
    for sequence in 1..=10 {
        log.append(published(old, sequence)).unwrap();
    }
    drop(log);
    run::forget_clean_close(&scratch.0);
    lose_from(&scratch.0, 7);

    let (new, log) = open_epoch(&scratch.0, 100);
    assert_ne!(
        new, old,
        "events observers saw are gone: their sequences are not reused"
    );
    assert_eq!(
        log.continued(old),
        Some(6),
        "the old epoch's events 1..6 are kept"
    );
    assert_eq!(log.continued(12345), None);
    assert_eq!(log.next_sequence(), 7);
    let kept = all(&log);
    assert_eq!(kept.len(), 6);
    assert!(
        kept.iter().all(|(_, bytes)| epoch_served(bytes) == new),
        "served under the new epoch"
    );
    drop(log);

    // A second crash: the new epoch continues both.
    run::forget_clean_close(&scratch.0);
    lose_from(&scratch.0, 5);
    let (third, log) = open_epoch(&scratch.0, 100);
    assert_ne!(third, new);
    assert_eq!((log.continued(new), log.continued(old)), (Some(4), Some(4)));
}

#[test]
fn a_machine_that_restarted_after_a_clean_close_keeps_the_epoch() {
    let scratch = Scratch::new();
    let (epoch, mut log) = open_epoch(&scratch.0, 100);
    append(&mut log, 3);
    drop(log);
    std::fs::write(scratch.0.join("boot"), "another boot").unwrap();
    assert_eq!(open_epoch(&scratch.0, 100).0, epoch);
}

#[test]
fn a_corrupt_record_keeps_the_events_before_it_under_an_epoch_that_continues_them() {
    let scratch = Scratch::new();
    // Segments of 2 events.
    let (old, mut log) = open_epoch(&scratch.0, 8);
    append_settled(&mut log, 7);
    drop(log);
    // A flipped byte in event 4, in the second segment.
    let second = segment_files(&scratch.0)[1].clone();
    let mut data = std::fs::read(&second).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0x40;
    std::fs::write(&second, data).unwrap();

    let (new, log) = open_epoch(&scratch.0, 8);
    assert_ne!(new, old);
    assert_eq!(log.continued(old), Some(3));
    assert_eq!(log.next_sequence(), 4);
    drop(log);
    assert_eq!(
        reopened(&scratch.0, 8),
        (vec![1, 2, 3], None),
        "cut back for good"
    );
}

#[test]
fn group_progress_past_what_a_crash_kept_is_dropped() {
    let scratch = Scratch::new();
    let mut log = open(&scratch.0, 100);
    append(&mut log, 10);
    log.record_groups(&[
        GroupChange::Created {
            group: "g".into(),
            start: 1,
        },
        GroupChange::Acked {
            group: "g".into(),
            sequences: vec![1, 2, 3, 5, 8, 9],
        },
        GroupChange::HandedOut {
            group: "g".into(),
            through: 10,
        },
    ]);
    drop(log);
    run::forget_clean_close(&scratch.0);
    lose_from(&scratch.0, 7);

    let mut log = open(&scratch.0, 100);
    let saved: BTreeMap<String, SavedGroup> = log.take_saved_groups().into_iter().collect();
    let group = &saved["g"];
    assert_eq!(group.start, 4);
    assert_eq!(
        group.acked,
        [5].into(),
        "8 and 9 are new events' sequences now"
    );
    assert_eq!(group.handed_out, 6);
}
