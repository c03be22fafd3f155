//! The disk log on its own: reopening, retention, torn tails, write errors, group commit.

use std::collections::VecDeque;
use std::io::Write;

use super::*;

/// A directory of its own, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("meshless-disk-{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn event(sequence: u64) -> Stored {
    Stored {
        sequence,
        published_at: 0,
        bytes: Bytes::from(format!("event {sequence}")),
        key: None,
    }
}

fn open(dir: &Path, retain: usize) -> DiskLog {
    let recovered = recover(dir, retain).unwrap();
    assert_eq!(recovered.torn, None);
    let lock = std::sync::Arc::new(super::lock::DirectoryLock::take(dir).unwrap());
    DiskLog::open(recovered, "test.v1.S/E", Limits::default(), lock).unwrap()
}

fn append(log: &mut DiskLog, count: u64) {
    for _ in 0..count {
        let sequence = log.next_sequence();
        log.append(event(sequence)).unwrap();
    }
}

fn all(log: &DiskLog) -> Vec<(u64, Bytes)> {
    let mut out = VecDeque::new();
    log.read(1, usize::MAX, &mut out);
    out.into_iter().map(|e| (e.sequence, e.bytes)).collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

#[test]
fn a_reopened_log_continues_where_it_stopped() {
    let scratch = Scratch::new();
    let mut log = open(&scratch.0, 100);
    append(&mut log, 10);
    drop(log);

    let mut log = open(&scratch.0, 100);
    assert_eq!(log.next_sequence(), 11);
    let read = all(&log);
    assert_eq!(read.len(), 10);
    assert_eq!(read[9], (10, Bytes::from("event 10")));
    append(&mut log, 5);
    drop(log);
    let log = open(&scratch.0, 100);
    assert_eq!(
        all(&log).iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=15).collect::<Vec<_>>()
    );
}

#[test]
fn segments_older_than_retention_are_removed() {
    let scratch = Scratch::new();
    let mut log = open(&scratch.0, 8);
    append(&mut log, 40);
    // Segments of 2 events (a quarter of retain): the 8 retained span at most 5 of them, plus
    // the new, empty one.
    let files = segment_files(&scratch.0);
    assert!(files.len() <= 6, "{files:?}");
    drop(log);
    let log = open(&scratch.0, 8);
    assert_eq!(log.oldest(), 33);
    assert_eq!(log.next_sequence(), 41);
}

#[test]
fn a_torn_tail_is_found_and_reported() {
    let scratch = Scratch::new();
    let mut log = open(&scratch.0, 100);
    append(&mut log, 5);
    drop(log);
    let last = segment_files(&scratch.0).pop().unwrap();
    let length = std::fs::metadata(&last).unwrap().len();
    // A record cut short, as a crash of the machine mid-write leaves it.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(length - 3)
        .unwrap();
    let recovered = recover(&scratch.0, 100).unwrap();
    let torn = recovered.torn.clone().expect("the torn record is found");
    assert!(torn.contains("torn or corrupt record"), "{torn}");

    // A flipped byte in an earlier record is found too.
    let mut data = std::fs::read(&last).unwrap();
    data[12] ^= 1;
    std::fs::write(&last, data).unwrap();
    assert!(recover(&scratch.0, 100).unwrap().torn.is_some());

    // Garbage appended after whole records too.
    let scratch = Scratch::new();
    let mut log = open(&scratch.0, 100);
    append(&mut log, 3);
    drop(log);
    let last = segment_files(&scratch.0).pop().unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap()
        .write_all(b"\x09\x00\x00\x00junk")
        .unwrap();
    let mut recovered = recover(&scratch.0, 100).unwrap();
    assert!(recovered.torn.is_some());
    recovered.discard().unwrap();
    assert!(recovered.is_empty());
    assert!(segment_files(&scratch.0).is_empty());
}

#[test]
fn a_failed_write_is_an_error_and_leaves_no_event_behind() {
    let scratch = Scratch::new();
    let mut log = open(&scratch.0, 100);
    append(&mut log, 2);
    // A handle that cannot write, as a full or failing disk refuses writes.
    let path = log.segments.back().unwrap().1.clone();
    let writable = std::mem::replace(&mut log.current, Arc::new(File::open(&path).unwrap()));
    let error = log.append(event(3)).unwrap_err();
    assert_ne!(error.kind(), std::io::ErrorKind::Other, "{error}");
    assert_eq!(log.next_sequence(), 3, "the event is not in the log");
    log.current = writable;
    append(&mut log, 1);
    drop(log);
    let log = open(&scratch.0, 100);
    assert_eq!(log.next_sequence(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_waits_share_syncs() {
    let scratch = Scratch::new();
    let mut log = open(&scratch.0, 1000);
    let syncer = log.syncer();
    append(&mut log, 1);
    syncer.wait(1).await.unwrap();
    let after_one = syncer.syncs();
    assert!(after_one >= 1, "a durable wait runs a sync");

    append(&mut log, 100);
    let waits: Vec<_> = (2..=101)
        .map(|sequence| {
            let syncer = syncer.clone();
            tokio::spawn(async move { syncer.wait(sequence).await })
        })
        .collect();
    for wait in waits {
        wait.await.unwrap().unwrap();
    }
    let shared = syncer.syncs() - after_one;
    assert!((1..100).contains(&shared), "100 waits took {shared} syncs");
    // Already synced: no new sync.
    let before = syncer.syncs();
    syncer.wait(50).await.unwrap();
    assert_eq!(syncer.syncs(), before);
}
