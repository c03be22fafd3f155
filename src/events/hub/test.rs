//! The hub: sequences and cursors, where subscriptions start (from a cursor, a time, the latest
//! per key), and what a publish refuses.

use prost::Message as _;

use super::plain::Position;
use super::*;
use crate::events::protocol::{Refusal, Subscription};
use crate::v1::Cursor as WireCursor;
use crate::v1::StartPosition;

fn hub(retain: usize) -> std::sync::Arc<Hub> {
    Hub::new("test.v1.S/E".into(), 77, retain, 8)
}

fn publish(hub: &Hub, n: u64) {
    for i in 0..n {
        hub.publish(&WireCursor {
            epoch: 0,
            sequence: i,
        })
        .unwrap();
    }
}

fn subscribe(after: Option<(u64, u64)>, start: StartPosition) -> Subscription {
    Subscription::parse(&crate::v1::Subscribe {
        after: after.map(|(epoch, sequence)| WireCursor { epoch, sequence }),
        start: start as i32,
        ..crate::v1::Subscribe::default()
    })
    .unwrap()
}

/// The sequences a subscription starting at `start` reads before it waits for new events.
fn sequences(hub: &Hub, start: &Position) -> Vec<u64> {
    let mut out = std::collections::VecDeque::new();
    hub.lock().log.read(start.next, usize::MAX, &mut out);
    out.iter().map(|e| e.sequence).collect()
}

fn position(next: u64, missed: u64, previous_epoch: u64) -> Position {
    Position {
        snapshot: super::plain::Snapshot::default(),
        next,
        missed,
        previous_epoch,
    }
}

#[test]
fn sequences_start_at_one_and_cursors_name_the_epoch() {
    let hub = hub(10);
    assert_eq!(
        hub.publish(&WireCursor::default()).unwrap(),
        WireCursor {
            epoch: 77,
            sequence: 1
        }
    );
    assert_eq!(
        hub.publish(&WireCursor::default()).unwrap(),
        WireCursor {
            epoch: 77,
            sequence: 2
        }
    );
}

#[test]
fn a_cursor_inside_the_window_resumes_right_after_it() {
    let hub = hub(10);
    publish(&hub, 20);
    let start = hub
        .start(&subscribe(Some((77, 15)), StartPosition::Unspecified))
        .unwrap();
    assert_eq!(start, position(16, 0, 0));
    assert_eq!(sequences(&hub, &start), [16, 17, 18, 19, 20]);
    // Just before the oldest retained event (11) is still inside: nothing is missed.
    let start = hub
        .start(&subscribe(Some((77, 10)), StartPosition::Live))
        .unwrap();
    assert_eq!(start, position(11, 0, 0));
}

#[test]
fn a_cursor_outside_the_window_reports_exactly_what_was_missed() {
    let hub = hub(10);
    publish(&hub, 50);
    let oldest = hub
        .start(&subscribe(Some((77, 5)), StartPosition::Oldest))
        .unwrap();
    assert_eq!(oldest, position(41, 35, 0), "6 to 40 missed");
    let live = hub
        .start(&subscribe(Some((77, 5)), StartPosition::Live))
        .unwrap();
    assert_eq!(live, position(51, 45, 0), "6 to 50 missed");
}

#[test]
fn another_epoch_means_the_publisher_restarted_and_lost_the_old_tail() {
    let hub = hub(10);
    publish(&hub, 15);
    let start = hub
        .start(&subscribe(Some((1234, 900)), StartPosition::Unspecified))
        .unwrap();
    assert_eq!(
        start,
        position(6, 5, 1234),
        "this epoch's events 1 to 5 are gone, and epoch 1234's tail after 900"
    );
    let live = hub
        .start(&subscribe(Some((1234, 2)), StartPosition::Live))
        .unwrap();
    assert_eq!(live, position(16, 15, 1234));
}

#[test]
fn without_a_cursor_nothing_counts_as_missed() {
    let hub = hub(10);
    publish(&hub, 15);
    let oldest = hub
        .start(&subscribe(None, StartPosition::Unspecified))
        .unwrap();
    assert_eq!(oldest, position(6, 0, 0));
    let live = hub.start(&subscribe(None, StartPosition::Live)).unwrap();
    assert_eq!(live, position(16, 0, 0));
}

#[test]
fn a_cursor_from_the_future_is_invalid() {
    let hub = hub(10);
    publish(&hub, 3);
    let error = hub
        .start(&subscribe(Some((77, 4)), StartPosition::Unspecified))
        .unwrap_err();
    assert!(matches!(error, Refusal::CursorAhead { latest: 3, .. }));
}

/// A hub whose events may be 100 bytes encoded at most.
fn hub_taking_at_most_100_bytes() -> std::sync::Arc<Hub> {
    let mut settings = HubSettings::new("test.v1.S/E".into(), 77, 10, 8);
    settings.max_event_size = 100;
    Hub::with_log(
        settings,
        Box::new(crate::events::log::MemoryLog::new(10)),
        None,
    )
}

/// An event over 200 bytes encoded.
fn over_200_bytes() -> crate::v1::Acknowledgement {
    crate::v1::Acknowledgement {
        rpc: "x".repeat(200),
        ..Default::default()
    }
}

#[test]
fn an_event_too_large_for_its_streams_is_refused_and_not_kept() {
    let hub = hub_taking_at_most_100_bytes();
    let large = over_200_bytes();
    let error = hub.publish(&large).unwrap_err();
    assert!(matches!(error, PublishError::TooLarge { size, limit: 100, .. } if size > 200));
    // Nothing was kept, and the next event gets the first sequence.
    assert_eq!(hub.publish(&WireCursor::default()).unwrap().sequence, 1);
}

/// A waker that counts its wake-ups.
#[derive(Default)]
struct Wakes(std::sync::atomic::AtomicUsize);

impl std::task::Wake for Wakes {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_batch_takes_consecutive_sequences_and_wakes_a_waiting_stream() {
    let hub = hub(10);
    publish(&hub, 1);
    let wakes = std::sync::Arc::new(Wakes::default());
    let waker = std::task::Waker::from(wakes.clone());
    let (mut next, mut registered, mut batch) = (2, None, std::collections::VecDeque::new());
    let fetched = hub.fetch(&mut next, 1, &mut batch, (1, &mut registered), &waker);
    assert!(matches!(fetched, Fetched::Waiting));

    let events: Vec<WireCursor> = (10..14)
        .map(|sequence| WireCursor { epoch: 0, sequence })
        .collect();
    let last = hub.publish_batch(&events).unwrap();
    assert_eq!(
        last,
        Some(WireCursor {
            epoch: 77,
            sequence: 5
        })
    );
    assert_eq!(
        wakes.0.load(Ordering::SeqCst),
        1,
        "one wake-up for the batch"
    );
    assert!(matches!(
        hub.fetch(&mut next, 1, &mut batch, (1, &mut registered), &waker),
        Fetched::Events { missed: 0 }
    ));
    let read: Vec<(u64, u64)> = batch
        .iter()
        .map(|stored| {
            let (event, metadata) = wire::Envelope::<WireCursor>::decode(&stored.bytes[..])
                .unwrap()
                .into_parts()
                .unwrap();
            (metadata.sequence, event.sequence)
        })
        .collect();
    assert_eq!(
        read,
        [(2, 10), (3, 11), (4, 12), (5, 13)],
        "in the batch's order"
    );

    assert_eq!(hub.publish_batch::<WireCursor>(&[]).unwrap(), None);
    assert_eq!(hub.latest(), 5, "an empty batch publishes nothing");
}

#[test]
fn a_batch_with_one_event_too_large_is_refused_whole() {
    let hub = hub_taking_at_most_100_bytes();
    let small = crate::v1::Acknowledgement::default();
    let large = over_200_bytes();
    let error = hub
        .publish_batch(&[small.clone(), large, small.clone()])
        .unwrap_err();
    assert!(matches!(error, PublishError::TooLarge { limit: 100, .. }));
    assert_eq!(hub.latest(), 0, "none of the batch is kept");
    assert_eq!(hub.publish(&small).unwrap().sequence, 1);
}

#[test]
fn a_batch_over_the_batch_limit_is_refused_whole() {
    let hub = hub(10);
    let megabyte = crate::v1::Acknowledgement {
        rpc: "x".repeat(1024 * 1024),
        ..Default::default()
    };
    let batch = vec![megabyte; publish::MAX_BATCH_BYTES / (1024 * 1024) + 1];
    let error = hub.publish_batch(&batch).unwrap_err();
    assert!(
        matches!(error, PublishError::BatchTooLarge { events, limit, .. } if events == batch.len() && limit == publish::MAX_BATCH_BYTES),
        "{error}"
    );
    assert_eq!(hub.latest(), 0, "none of the batch is kept");
    // Each event is 1 MiB and a few bytes encoded: 63 of them fit.
    assert!(hub.publish_batch(&batch[2..]).unwrap().is_some());
}

#[test]
fn a_start_time_skips_what_was_published_before_it_and_misses_what_may_be_gone() {
    let hub = hub(3);
    publish(&hub, 2);
    let between = u64::try_from(wire::now_unix_micros()).unwrap() + 1;
    while u64::try_from(wire::now_unix_micros()).unwrap() <= between {
        std::hint::spin_loop();
    }
    publish(&hub, 1);
    let at = |time: u64, after: Option<(u64, u64)>| {
        hub.start(
            &Subscription::parse(&crate::v1::Subscribe {
                after: after.map(|(epoch, sequence)| WireCursor { epoch, sequence }),
                start: StartPosition::Time as i32,
                start_time_unix_micros: i64::try_from(time).unwrap(),
                ..crate::v1::Subscribe::default()
            })
            .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(at(between, None), position(3, 0, 0), "1 and 2 skipped");
    assert_eq!(at(0, None), position(1, 0, 0));
    // A cursor comes first; one of another epoch starts at the time, and what this epoch
    // published before it is missed from that cursor's point of view.
    assert_eq!(at(between, Some((77, 1))), position(2, 0, 0));
    assert_eq!(at(between, Some((5, 9))), position(3, 2, 5));

    // Event 1 leaves the window of 3: a start before it misses it.
    publish(&hub, 1);
    assert_eq!(at(0, None), position(2, 1, 0));
    assert_eq!(at(between, None), position(3, 0, 0));
}

/// A hub whose events (`Cursor`s) are keyed by their `epoch` field, keeping the latest of
/// every key past a window of `retain`; with the events of `keys` published.
fn compacting(retain: usize, keys: &[u64]) -> std::sync::Arc<Hub> {
    let mut settings = HubSettings::new("test.v1.S/E".into(), 77, retain, 8);
    settings.key = Some(crate::keys::KeyPath {
        fields: &[1],
        kind: crate::keys::KeyKind::Fixed64,
    });
    let limits = crate::events::log::Limits {
        compact: Some(100),
        ..Default::default()
    };
    let log = crate::events::log::MemoryLog::with_limits(retain, limits);
    let hub = Hub::with_log(settings, Box::new(log), None);
    for (index, key) in keys.iter().enumerate() {
        hub.publish(&WireCursor {
            epoch: *key,
            sequence: index as u64,
        })
        .unwrap();
    }
    hub
}

fn snapshot(start: &Position) -> Vec<u64> {
    start.snapshot.0.iter().map(|e| e.sequence).collect()
}

#[test]
fn a_latest_per_key_start_gets_the_latest_of_every_key_then_live() {
    let hub = compacting(3, &[1, 2, 1, 3, 2, 4, 5]);
    let start = hub
        .start(&subscribe(None, StartPosition::LatestPerKey))
        .unwrap();
    assert_eq!(snapshot(&start), [3, 4, 5, 6, 7]);
    assert_eq!((start.next, start.missed, start.previous_epoch), (8, 0, 0));

    // A cursor before the window reads the kept events after it, whatever the start.
    let behind = hub
        .start(&subscribe(Some((77, 1)), StartPosition::Live))
        .unwrap();
    assert_eq!(behind, position(2, 0, 0));
    assert_eq!(sequences(&hub, &behind), [3, 4, 5, 6, 7]);
    // A cursor of another epoch: the snapshot, and the lost epoch reported.
    let other = hub
        .start(&subscribe(Some((5, 9)), StartPosition::LatestPerKey))
        .unwrap();
    assert_eq!(snapshot(&other), [3, 4, 5, 6, 7]);
    assert_eq!((other.next, other.missed, other.previous_epoch), (8, 0, 5));
    // A start at the oldest is the window's.
    let oldest = hub.start(&subscribe(None, StartPosition::Oldest)).unwrap();
    assert_eq!(oldest, position(5, 0, 0));
}

#[test]
fn without_keys_a_latest_per_key_start_is_the_oldest() {
    let hub = hub(3);
    publish(&hub, 5);
    let start = hub
        .start(&subscribe(None, StartPosition::LatestPerKey))
        .unwrap();
    assert_eq!(start, position(3, 0, 0));
}

#[test]
fn a_consumer_group_cannot_start_at_the_latest_per_key() {
    let refused = Subscription::parse(&crate::v1::Subscribe {
        start: StartPosition::LatestPerKey as i32,
        group: "g".into(),
        member: "m".into(),
        ..crate::v1::Subscribe::default()
    })
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("consumer group `g`"),
        "{refused:?}"
    );
}
