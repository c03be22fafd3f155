use super::*;
use crate::v1::Cursor as WireCursor;

fn hub(retain: usize) -> Hub {
    Hub::new("test.v1.S/E".into(), 77, retain, 8)
}

fn publish(hub: &Hub, n: u64) {
    for i in 0..n {
        hub.publish(&WireCursor {
            epoch: 0,
            sequence: i,
        });
    }
}

fn subscribe(after: Option<(u64, u64)>, start: StartPosition) -> Subscribe {
    Subscribe {
        after: after.map(|(epoch, sequence)| WireCursor { epoch, sequence }),
        start: start as i32,
        ..Subscribe::default()
    }
}

fn sequences(start: &Start) -> Vec<u64> {
    start.backlog.iter().map(|e| e.sequence).collect()
}

#[test]
fn sequences_start_at_one_and_cursors_name_the_epoch() {
    let hub = hub(10);
    assert_eq!(
        hub.publish(&WireCursor::default()),
        WireCursor {
            epoch: 77,
            sequence: 1
        }
    );
    assert_eq!(
        hub.publish(&WireCursor::default()),
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
    assert_eq!(sequences(&start), [16, 17, 18, 19, 20]);
    assert_eq!(start.missed, 0);
    // Just before the oldest retained event (11) is still inside: nothing is missed.
    let start = hub
        .start(&subscribe(Some((77, 10)), StartPosition::Live))
        .unwrap();
    assert_eq!(sequences(&start), (11..=20).collect::<Vec<_>>());
    assert_eq!(start.missed, 0);
}

#[test]
fn a_cursor_outside_the_window_reports_exactly_what_was_missed() {
    let hub = hub(10);
    publish(&hub, 50);
    let oldest = hub
        .start(&subscribe(Some((77, 5)), StartPosition::Oldest))
        .unwrap();
    assert_eq!(sequences(&oldest), (41..=50).collect::<Vec<_>>());
    assert_eq!(oldest.missed, 35, "6 to 40");
    let live = hub
        .start(&subscribe(Some((77, 5)), StartPosition::Live))
        .unwrap();
    assert!(live.backlog.is_empty());
    assert_eq!(live.missed, 45, "6 to 50");
}

#[test]
fn another_epoch_means_the_publisher_restarted() {
    let hub = hub(10);
    publish(&hub, 15);
    let start = hub
        .start(&subscribe(Some((1234, 900)), StartPosition::Unspecified))
        .unwrap();
    assert_eq!(sequences(&start), (6..=15).collect::<Vec<_>>());
    assert_eq!(start.missed, 5, "this epoch's events 1 to 5 are gone");
}

#[test]
fn without_a_cursor_nothing_counts_as_missed() {
    let hub = hub(10);
    publish(&hub, 15);
    let oldest = hub
        .start(&subscribe(None, StartPosition::Unspecified))
        .unwrap();
    assert_eq!((sequences(&oldest).len(), oldest.missed), (10, 0));
    let live = hub.start(&subscribe(None, StartPosition::Live)).unwrap();
    assert_eq!((live.backlog.len(), live.missed), (0, 0));
}

#[test]
fn a_cursor_from_the_future_is_invalid() {
    let hub = hub(10);
    publish(&hub, 3);
    let error = hub
        .start(&subscribe(Some((77, 4)), StartPosition::Unspecified))
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
}
