//! Compaction by key in files: the kept events survive a reopen, and a crash between writing
//! them and removing the segments that held them loses none.

use super::*;
use crate::events::wire;
use crate::v1::EventMetadata;

fn compacting() -> Limits {
    Limits {
        compact: Some(100),
        ..Limits::default()
    }
}

/// Event `sequence` of key `[key]`, its key in its metadata as a publisher stores it.
fn keyed(sequence: u64, key: u8) -> Stored {
    Stored {
        sequence,
        published_at: sequence,
        bytes: wire::encode_metadata_field(&EventMetadata {
            sequence,
            key: vec![key],
            ..EventMetadata::default()
        }),
        key: Some(crate::keys::hash(&[key])),
    }
}

/// Appends events of `keys`, letting the sync thread catch up after each (so that segments
/// roll, and old ones go).
fn append_keys(log: &mut DiskLog, keys: &[u8]) {
    for key in keys {
        let sequence = log.next_sequence();
        log.append(keyed(sequence, *key)).unwrap();
        settle(&log.syncer);
    }
}

fn latest(log: &DiskLog) -> Vec<u64> {
    log.latest_per_key().iter().map(|e| e.sequence).collect()
}

fn read_all(log: &DiskLog) -> Vec<u64> {
    all(log).into_iter().map(|(sequence, _)| sequence).collect()
}

#[test]
fn kept_events_survive_a_reopen() {
    let scratch = Scratch::new();
    let (_, mut log) = open_with(&scratch.0, 4, compacting());
    // Keys 1, 2, 3, then 40 events of key 9: only the window and the kept events are left.
    append_keys(&mut log, &[1, 2, 3]);
    append_keys(&mut log, &[9; 40]);
    assert_eq!(log.oldest(), 40);
    assert_eq!(latest(&log), [1, 2, 3, 43]);
    // Segments of one event (a quarter of retain): the window spans at most 5, plus the new one.
    let files = segment_files(&scratch.0);
    assert!(files.len() <= 6, "old segments removed: {files:?}");
    assert!(scratch.0.join(FOLDER).join(kept::FILE).exists());
    drop(log);

    let (_, mut log) = open_with(&scratch.0, 4, compacting());
    assert_eq!((log.oldest(), log.latest()), (40, 43));
    assert_eq!(latest(&log), [1, 2, 3, 43]);
    assert_eq!(read_all(&log), [1, 2, 3, 40, 41, 42, 43]);
    // Key 2 again supersedes event 2, kept or not after the next reopen.
    append_keys(&mut log, &[2]);
    assert_eq!(latest(&log), [1, 3, 43, 44]);
    append_keys(&mut log, &[9; 20]);
    drop(log);
    let (_, log) = open_with(&scratch.0, 4, compacting());
    assert_eq!(latest(&log), [1, 3, 44, 64]);
    assert_eq!(read_all(&log), [1, 3, 44, 61, 62, 63, 64]);
}

#[test]
fn segments_left_by_a_crash_before_their_removal_do_not_repeat_kept_events() {
    let scratch = Scratch::new();
    let (_, mut log) = open_with(&scratch.0, 4, compacting());
    append_keys(&mut log, &[1, 2]);
    append_keys(&mut log, &[9; 20]);
    drop(log);
    // As if the segments from event 1 on were still there when the process died: the kept
    // file holds events 1 and 2, and so do the segments.
    let folder = scratch.0.join(FOLDER);
    let first = segment_files(&scratch.0)[0].clone();
    let mut data = Vec::new();
    for sequence in 1..first_sequence(&first) {
        let key = match sequence {
            1 => 1,
            2 => 2,
            _ => 9,
        };
        let event = keyed(sequence, key);
        record::encode(sequence, event.published_at, &event.bytes, &mut data);
    }
    std::fs::write(folder.join(segment_name(1)), data).unwrap();
    let (_, log) = open_with(&scratch.0, 4, compacting());
    assert_eq!(latest(&log), [1, 2, 22]);
    assert_eq!(read_all(&log), [1, 2, 19, 20, 21, 22]);
}

fn first_sequence(segment: &Path) -> u64 {
    segment
        .file_stem()
        .and_then(|stem| stem.to_str())
        .and_then(|stem| stem.parse().ok())
        .unwrap()
}

#[test]
fn the_file_of_kept_events_is_replaced_once_mostly_superseded() {
    let scratch = Scratch::new();
    let (_, mut log) = open_with(&scratch.0, 40, compacting());
    // 50 keys in turn, a window of 40: each event leaves the window the latest of its key,
    // is written to the file as its segment goes, and is superseded 10 events later.
    for n in 0..2000u64 {
        let sequence = log.next_sequence();
        log.append(keyed(sequence, (n % 50) as u8)).unwrap();
        if n % 10 == 9 {
            settle(&log.syncer);
        }
    }
    let records = kept::read(&scratch.0.join(FOLDER), u64::MAX).unwrap().len();
    assert!(
        (50..=2 * 50 + 1024 + 20).contains(&records),
        "{records} records in the file"
    );
    drop(log);
    let (_, log) = open_with(&scratch.0, 40, compacting());
    assert_eq!(latest(&log), (1951..=2000).collect::<Vec<_>>());
    let records = kept::read(&scratch.0.join(FOLDER), u64::MAX).unwrap().len();
    assert_eq!(
        records, 10,
        "replaced on open: the kept events before the window"
    );
}
