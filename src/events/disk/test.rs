//! The disk log on its own: reopening, retention, write errors, group commit. Recovery after
//! crashes is in `recovery`.

mod compaction;
mod recovery;

use std::collections::VecDeque;
use std::io::Write;

use bytes::Bytes;

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

/// The folder of the one event RPC the tests open.
const FOLDER: &str = "E";

/// Opens `dir` for a publisher of one event RPC: its epoch and its log.
fn open_epoch(dir: &Path, retain: usize) -> (u64, DiskLog) {
    open_with(dir, retain, Limits::default())
}

/// Opens `dir` for a publisher of one event RPC with these limits: its epoch and its log.
pub(super) fn open_with(dir: &Path, retain: usize, limits: Limits) -> (u64, DiskLog) {
    let rpcs = [Rpc {
        folder: FOLDER,
        method: "test.v1.S/E".into(),
        retain,
        limits,
    }];
    let Opened { epoch, mut logs } = super::open(dir, &rpcs, || fastrand::u64(1..)).unwrap();
    (epoch, logs.pop().unwrap())
}

fn open(dir: &Path, retain: usize) -> DiskLog {
    open_epoch(dir, retain).1
}

/// Waits until the log's sync thread has done what it was handed so far.
pub(super) fn settle(syncer: &Syncer) {
    let (done, settled) = std::sync::mpsc::channel();
    syncer.chore(Box::new(move || {
        let _ = done.send(());
    }));
    settled
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the sync thread settles within 10 s");
}

/// Appends `count` events, letting the sync thread catch up after each (so that segments
/// roll where the count says).
fn append_settled(log: &mut DiskLog, count: u64) {
    for _ in 0..count {
        append(log, 1);
        settle(&log.syncer);
    }
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

/// The segments of the event RPC's folder in `dir`.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join(FOLDER))
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
    append_settled(&mut log, 40);
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
fn a_failed_write_is_an_error_and_leaves_no_event_behind() {
    let scratch = Scratch::new();
    let mut log = open(&scratch.0, 100);
    append(&mut log, 2);
    // A handle that cannot write, as a full or failing disk refuses writes.
    let path = log.segments.back().unwrap().1.clone();
    let writable = std::mem::replace(&mut log.current, Arc::new(File::open(&path).unwrap()));
    assert_eq!(log.last_error(), None);
    let error = log.append(event(3)).unwrap_err();
    assert_ne!(error.kind(), std::io::ErrorKind::Other, "{error}");
    assert_eq!(log.next_sequence(), 3, "the event is not in the log");
    // Kept for the admin status, after the write works again too.
    log.current = writable;
    append(&mut log, 1);
    assert_eq!(
        log.last_error(),
        Some(format!("writing an event: {error}")),
        "the failed write is the log's last error"
    );
    drop(log);
    let log = open(&scratch.0, 100);
    assert_eq!(log.next_sequence(), 4);
}

#[test]
fn a_batch_is_one_record_run_in_one_segment_and_reads_back_after_a_reopen() {
    let scratch = Scratch::new();
    // Segments roll after 2 events (a quarter of retain); a batch of 5 is not split.
    let mut log = open(&scratch.0, 8);
    append_settled(&mut log, 1);
    let batch: Vec<Stored> = (2..=6).map(event).collect();
    log.append_all(&batch).unwrap();
    settle(&log.syncer);
    assert_eq!(log.next_sequence(), 7);
    let segments: Vec<u64> = log.segments.iter().map(|(first, _)| *first).collect();
    assert_eq!(
        segments,
        [1, 7],
        "the batch went into the segment of event 1, then it rolled"
    );
    drop(log);
    let log = open(&scratch.0, 8);
    assert_eq!(
        all(&log),
        (1..=6)
            .map(|s| (s, Bytes::from(format!("event {s}"))))
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_failed_batch_write_leaves_none_of_the_batch_behind() {
    let scratch = Scratch::new();
    let mut log = open(&scratch.0, 100);
    append(&mut log, 2);
    let path = log.segments.back().unwrap().1.clone();
    let writable = std::mem::replace(&mut log.current, Arc::new(File::open(&path).unwrap()));
    let batch: Vec<Stored> = (3..=5).map(event).collect();
    log.append_all(&batch).unwrap_err();
    assert_eq!(
        log.next_sequence(),
        3,
        "no event of the batch is in the log"
    );
    assert_eq!(all(&log).len(), 2);
    log.current = writable;
    log.append_all(&batch).unwrap();
    drop(log);
    let log = open(&scratch.0, 100);
    assert_eq!(
        all(&log).iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
}

#[test]
fn a_batch_whose_last_record_was_never_written_is_not_recovered() {
    let scratch = Scratch::new();
    let mut log = open(&scratch.0, 100);
    append(&mut log, 2);
    log.append_all(&(3..=5).map(event).collect::<Vec<_>>())
        .unwrap();
    let path = log.segments.back().unwrap().1.clone();
    drop(log);
    // What a process killed inside the batch's write leaves: the records of events 3 and 4
    // whole, not the last one.
    let length = std::fs::metadata(&path).unwrap().len();
    let last_record = (record::HEADER + record::SEQUENCE + "event 5".len()) as u64;
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(length - last_record).unwrap();
    drop(file);

    let mut log = open(&scratch.0, 100);
    assert_eq!(
        all(&log).iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [1, 2],
        "none of the batch"
    );
    assert_eq!(log.next_sequence(), 3);
    append(&mut log, 1);
    drop(log);
    let log = open(&scratch.0, 100);
    assert_eq!(
        all(&log),
        vec![
            (1, Bytes::from("event 1")),
            (2, Bytes::from("event 2")),
            (3, Bytes::from("event 3"))
        ],
        "the next event follows the last whole one"
    );
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

/// What reopening `dir` finds: the sequences of the events kept, and whether any record was
/// not valid.
fn reopened(dir: &Path, retain: usize) -> (Vec<u64>, Option<String>) {
    let recovered = recover(&dir.join(FOLDER), retain, false).unwrap();
    let damage = recovered.damage.as_ref().map(|d| d.what.clone());
    let sequences = recovered.events.iter().map(|e| e.sequence).collect();
    (sequences, damage)
}

#[test]
fn a_record_after_a_cut_back_short_write_follows_the_last_whole_one() {
    let scratch = Scratch::new();
    let mut log = open(&scratch.0, 100);
    append(&mut log, 2);
    // What a write that fails part way (a full disk) leaves, and its undo: k bytes of a
    // record, cut back off.
    (&*log.current).write_all(&[0xAB; 7]).unwrap();
    log.current.set_len(log.current_bytes).unwrap();
    append(&mut log, 1);
    drop(log);
    assert_eq!(reopened(&scratch.0, 100), (vec![1, 2, 3], None));
}

#[test]
fn a_partial_record_whose_undo_failed_is_cut_before_the_next_record() {
    let scratch = Scratch::new();
    let mut log = open(&scratch.0, 100);
    append(&mut log, 2);
    (&*log.current).write_all(&[0xAB; 7]).unwrap();
    log.partial = Some(std::io::Error::other("no space left"));
    append(&mut log, 2);
    drop(log);
    assert_eq!(reopened(&scratch.0, 100), (vec![1, 2, 3, 4], None));
}

#[test]
fn a_segment_that_cannot_be_started_leaves_publishing_working_and_is_started_later() {
    let scratch = Scratch::new();
    // Segments of 2 events.
    let mut log = open(&scratch.0, 8);
    append(&mut log, 1);
    // The next segments cannot be created (as with no inode or no space left).
    let blockers: Vec<_> = (3..=5)
        .map(|first| scratch.0.join(FOLDER).join(segment_name(first)))
        .collect();
    for blocker in &blockers {
        std::fs::create_dir(blocker).unwrap();
    }
    for sequence in 2..=4 {
        log.append(event(sequence))
            .unwrap_or_else(|error| panic!("event {sequence}: {error}"));
    }
    assert_eq!(log.segments.back().unwrap().0, 1, "still the first segment");
    for blocker in &blockers {
        std::fs::remove_dir(blocker).unwrap();
    }
    settle(&log.syncer);
    append(&mut log, 2);
    assert_eq!(log.segments.back().unwrap().0, 6, "rolled once it could");
    drop(log);
    assert_eq!(reopened(&scratch.0, 8), (vec![1, 2, 3, 4, 5, 6], None));
}

#[test]
fn an_event_over_the_old_record_limit_reads_back() {
    let scratch = Scratch::new();
    let mut log = open(&scratch.0, 10);
    append(&mut log, 1);
    let large = Bytes::from(vec![7u8; 70 << 20]);
    log.append(Stored {
        bytes: large.clone(),
        ..event(2)
    })
    .unwrap();
    drop(log);
    let log = open(&scratch.0, 10);
    assert_eq!(log.next_sequence(), 3);
    assert_eq!(all(&log)[1], (2, large));
}

#[test]
fn segments_roll_beside_the_publish_path() {
    let scratch = Scratch::new();
    // A roll every event.
    let mut log = open(&scratch.0, 4);
    settle(&log.syncer);
    let syncs_before = sync::SYNCS_ON_THIS_THREAD.with(|syncs| syncs.get());
    let mut rolls = 0;
    for _ in 0..200 {
        let before = log.segments.back().map(|(first, _)| *first);
        append(&mut log, 1);
        rolls += u64::from(log.segments.back().map(|(first, _)| *first) != before);
        settle(&log.syncer);
    }
    assert_eq!(
        sync::SYNCS_ON_THIS_THREAD.with(|syncs| syncs.get()),
        syncs_before,
        "no sync, directory sync or file creation where events are appended"
    );
    assert!(rolls >= 100, "{rolls} rolls");
    settle(&log.syncer);
    assert!(
        segment_files(&scratch.0).len() <= 6,
        "old segments are removed"
    );
    drop(log);
    assert_eq!(reopened(&scratch.0, 4).0, [197, 198, 199, 200]);
}
