//! The memory log: reads by cursor, retention by count, bytes and age, and where a start time
//! falls.

use super::*;

fn log_of(retain: usize, events: u64) -> MemoryLog {
    let mut log = MemoryLog::new(retain);
    for sequence in 1..=events {
        log.append(Stored {
            sequence,
            published_at: 0,
            bytes: Bytes::new(),
            key: None,
        })
        .unwrap();
    }
    log
}

fn sequences(out: &VecDeque<Stored>) -> Vec<u64> {
    out.iter().map(|e| e.sequence).collect()
}

/// A log of `retain` whose event n was published at time 10·n.
fn timed_log(retain: usize, events: u64) -> MemoryLog {
    let mut log = MemoryLog::new(retain);
    for sequence in 1..=events {
        log.append(Stored {
            sequence,
            published_at: 10 * sequence,
            bytes: Bytes::new(),
            key: None,
        })
        .unwrap();
    }
    log
}

/// The log's answer, and the default's (which reads the log through).
fn since_both_ways(log: &MemoryLog, time: u64) -> [(u64, bool); 2] {
    /// The same events, through the trait's own `since`.
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
    let copy = MemoryLog {
        ring: log.ring.clone(),
        retain: log.retain,
        limits: log.limits,
        bytes: log.bytes,
        next: log.next,
        dropped_through: log.dropped_through,
        compaction: log.compaction.clone(),
        dropped_past_bound: log.dropped_past_bound,
    };
    [log.since(time), Plain(copy).since(time)]
}

#[test]
fn a_start_time_finds_the_first_event_published_since_and_whether_any_is_gone() {
    let log = timed_log(5, 3);
    assert_eq!(since_both_ways(&log, 15), [(2, false); 2]);
    assert_eq!(since_both_ways(&log, 20), [(2, false); 2]);
    assert_eq!(since_both_ways(&log, 0), [(1, false); 2]);
    assert_eq!(since_both_ways(&log, 31), [(4, false); 2], "none yet: live");

    // Events 1 to 3 (times 10 to 30) are gone.
    let log = timed_log(5, 8);
    assert_eq!(
        log.since(35),
        (4, false),
        "only events from before 35 are gone"
    );
    assert_eq!(log.since(30), (4, true), "event 3, at 30, is gone");
    // The default cannot tell when the dropped events were published.
    assert_eq!(since_both_ways(&log, 35)[1], (4, true));
    assert_eq!(since_both_ways(&log, 55), [(6, false); 2]);
    assert_eq!(since_both_ways(&log, 1000), [(9, false); 2]);
}

#[test]
fn reads_from_a_cursor_inside_the_window() {
    let log = log_of(5, 8);
    assert_eq!((log.oldest(), log.latest()), (4, 8));
    let mut out = VecDeque::new();
    let read = log.read(6, 10, &mut out);
    assert_eq!(sequences(&out), [6, 7, 8]);
    assert_eq!(read, Read { missed: 0, next: 9 });
}

#[test]
fn reports_what_fell_out_of_the_window() {
    let log = log_of(5, 8);
    let mut out = VecDeque::new();
    let read = log.read(1, 2, &mut out);
    assert_eq!(sequences(&out), [4, 5]);
    assert_eq!(read, Read { missed: 3, next: 6 });
}

#[test]
fn a_caught_up_reader_gets_nothing() {
    let log = log_of(5, 8);
    let mut out = VecDeque::new();
    assert_eq!(log.read(9, 10, &mut out), Read { missed: 0, next: 9 });
    assert!(out.is_empty());
}

#[test]
fn without_retention_everything_unread_is_missed() {
    let log = log_of(0, 3);
    let mut out = VecDeque::new();
    assert_eq!(log.read(2, 10, &mut out), Read { missed: 2, next: 4 });
    assert!(out.is_empty());
}

fn sized(sequence: u64, published_at: u64, size: usize) -> Stored {
    Stored {
        sequence,
        published_at,
        bytes: Bytes::from(vec![0; size]),
        key: None,
    }
}

#[test]
fn bytes_and_age_limit_what_is_retained() {
    let limits = Limits {
        max_bytes: Some(35),
        max_age: None,
        compact: None,
    };
    let mut log = MemoryLog::with_limits(100, limits);
    for sequence in 1..=5 {
        log.append(sized(sequence, 0, 10)).unwrap();
    }
    assert_eq!(
        (log.oldest(), log.latest()),
        (3, 5),
        "three events of 10 bytes fit in 35"
    );

    let second = 1_000_000;
    let limits = Limits {
        max_bytes: None,
        max_age: Some(std::time::Duration::from_secs(1)),
        compact: None,
    };
    let mut log = MemoryLog::with_limits(100, limits);
    log.append(sized(1, 0, 1)).unwrap();
    log.append(sized(2, second / 2, 1)).unwrap();
    log.append(sized(3, 2 * second, 1)).unwrap();
    assert_eq!(
        log.oldest(),
        3,
        "older than a second when event 3 was published"
    );
    log.expire(3 * second + 1);
    assert_eq!(
        (log.oldest(), log.latest()),
        (4, 3),
        "nothing left, the sequence kept"
    );
}

#[test]
fn a_group_record_takes_acknowledgements_of_events_behind_its_start() {
    // Events 95..99 left the log while members held them; the record moved past them, then
    // their acknowledgements came.
    let mut group = SavedGroup {
        start: 100,
        acked: (95..100).collect(),
        ..SavedGroup::default()
    };
    group.prune(101);
    assert_eq!((group.start, group.missed), (101, 1));
    assert!(group.acked.is_empty());
}
