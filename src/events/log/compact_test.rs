//! Compaction by key in the memory log: what is kept past the window, what supersedes it,
//! the bound, and reads from before the window.

use super::*;

/// Event `sequence` of key `key` (`None`: the empty key).
fn keyed(sequence: u64, key: Option<u64>) -> Stored {
    Stored {
        sequence,
        published_at: sequence,
        bytes: Bytes::from(vec![0; 10]),
        key,
    }
}

fn compacting(retain: usize, max_kept: usize, keys: &[Option<u64>]) -> MemoryLog {
    let limits = Limits {
        compact: Some(max_kept),
        ..Limits::default()
    };
    let mut log = MemoryLog::with_limits(retain, limits);
    for (index, key) in keys.iter().enumerate() {
        log.append(keyed(index as u64 + 1, *key)).unwrap();
    }
    log
}

fn read(log: &MemoryLog, from: u64, max: usize) -> (Vec<u64>, Read) {
    let mut out = VecDeque::new();
    let read = log.read(from, max, &mut out);
    (out.iter().map(|e| e.sequence).collect(), read)
}

fn latest(log: &dyn EventLog) -> Vec<u64> {
    log.latest_per_key().iter().map(|e| e.sequence).collect()
}

#[test]
fn the_latest_event_of_every_key_is_kept_past_the_window() {
    // Keys 1 2 1 3 2 4 5; the window holds events 5 to 7.
    let keys = [1, 2, 1, 3, 2, 4, 5].map(Some);
    let mut log = compacting(3, 100, &keys);
    assert_eq!((log.oldest(), log.latest()), (5, 7));
    assert!(log.compacts());
    assert_eq!(latest(&log), [3, 4, 5, 6, 7], "key 1 at 3, key 3 at 4");
    // A reader from before the window gets the kept events after its cursor, then the window;
    // what is not kept was superseded, not missed.
    assert_eq!(
        read(&log, 1, 10),
        (vec![3, 4, 5, 6, 7], Read { missed: 0, next: 8 })
    );
    assert_eq!(read(&log, 4, 1), (vec![4], Read { missed: 0, next: 5 }));
    assert_eq!(read(&log, 1, 1), (vec![3], Read { missed: 0, next: 4 }));
    assert_eq!(
        read(&log, 1, 3),
        (vec![3, 4, 5], Read { missed: 0, next: 6 })
    );

    // Key 1 again: event 3 is superseded; event 5 (key 2) leaves the window, the latest of
    // its key, and is kept.
    log.append(keyed(8, Some(1))).unwrap();
    assert_eq!(latest(&log), [4, 5, 6, 7, 8]);
    assert_eq!(read(&log, 1, 10).0, [4, 5, 6, 7, 8]);
    assert_eq!(log.dropped_past_bound(), 0);
}

#[test]
fn past_the_bound_the_kept_event_published_first_is_dropped_and_missed() {
    // Six keys, a window of 2, at most 2 kept: events 1 and 2 are dropped.
    let keys = [1, 2, 3, 4, 5, 6].map(Some);
    let log = compacting(2, 2, &keys);
    assert_eq!(log.dropped_past_bound(), 2);
    assert_eq!(latest(&log), [3, 4, 5, 6]);
    assert_eq!(
        read(&log, 1, 10),
        (vec![3, 4, 5, 6], Read { missed: 2, next: 7 })
    );
    assert_eq!(read(&log, 2, 10).1.missed, 1);
    assert_eq!(read(&log, 3, 10).1.missed, 0);
    // A read of kept events only tells of what was dropped before what it returns.
    assert_eq!(read(&log, 1, 1), (vec![3], Read { missed: 2, next: 4 }));
}

#[test]
fn events_without_a_key_share_the_empty_key() {
    let log = compacting(1, 100, &[None, Some(1), None, Some(2)]);
    assert_eq!(latest(&log), [2, 3, 4]);
}

#[test]
fn without_a_window_every_event_is_kept_until_superseded() {
    let log = compacting(0, 100, &[Some(1), Some(2), Some(1)]);
    assert_eq!(log.oldest(), 4);
    assert_eq!(latest(&log), [2, 3]);
    assert_eq!(read(&log, 1, 10), (vec![2, 3], Read { missed: 0, next: 4 }));
}

#[test]
fn events_that_leave_by_size_or_age_are_kept_too() {
    let limits = Limits {
        max_bytes: Some(25),
        compact: Some(100),
        ..Limits::default()
    };
    let mut log = MemoryLog::with_limits(100, limits);
    for (sequence, key) in [(1, 1), (2, 2), (3, 3), (4, 1)] {
        log.append(keyed(sequence, Some(key))).unwrap();
    }
    assert_eq!(log.oldest(), 3, "two events of 10 bytes fit in 25");
    assert_eq!(latest(&log), [2, 3, 4]);
}

#[test]
fn a_log_that_does_not_compact_finds_the_latest_of_every_key_in_its_window() {
    let mut log = MemoryLog::new(4);
    for (sequence, key) in [
        (1, Some(9)),
        (2, Some(1)),
        (3, Some(2)),
        (4, Some(1)),
        (5, None),
    ] {
        log.append(keyed(sequence, key)).unwrap();
    }
    assert!(!log.compacts());
    assert_eq!(latest(&log), [3, 4, 5], "event 1 left the window");

    /// The trait's default, which reads the log through.
    struct Plain(MemoryLog);
    impl EventLog for Plain {
        fn next_sequence(&self) -> u64 {
            self.0.next_sequence()
        }
        fn oldest(&self) -> u64 {
            self.0.oldest()
        }
        fn append(&mut self, _: Stored) -> std::io::Result<()> {
            unreachable!("only read")
        }
        fn read(&self, from: u64, max: usize, out: &mut VecDeque<Stored>) -> Read {
            self.0.read(from, max, out)
        }
    }
    assert_eq!(latest(&Plain(log)), [3, 4, 5]);
}

#[test]
fn kept_events_are_restored_before_the_window() {
    let limits = Limits {
        compact: Some(100),
        ..Limits::default()
    };
    let mut log = MemoryLog::with_limits(2, limits);
    log.restore_kept(keyed(3, Some(1)));
    log.restore_kept(keyed(5, Some(2)));
    for (sequence, key) in [(7, 3), (8, 2), (9, 4)] {
        log.restore(keyed(sequence, Some(key)));
    }
    assert_eq!(latest(&log), [3, 7, 8, 9], "event 5 superseded by 8");
    assert_eq!(read(&log, 1, 10).0, [3, 7, 8, 9]);
}
