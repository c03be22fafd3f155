use super::*;

fn cursor(sequence: u64) -> Cursor {
    Cursor { epoch: 1, sequence }
}

#[test]
fn keys_run_in_parallel_up_to_the_limit_and_in_order_within_a_key() {
    let mut lanes = Lanes::new(2);
    assert_eq!(lanes.arrive(1, cursor(1), "a1"), Some((0, "a1")));
    assert_eq!(lanes.arrive(1, cursor(2), "a2"), None, "behind a1");
    assert_eq!(lanes.arrive(2, cursor(3), "b1"), Some((2, "b1")));
    assert_eq!(lanes.arrive(3, cursor(4), "c1"), None, "no free handler");

    // b1 ends first: the cursor stays before a1; c1 starts (a2 still waits for a1).
    let (moved, start) = lanes.finished(2, 2);
    assert_eq!(moved, None);
    assert_eq!(start, [(3, 3, "c1")]);

    // a1 ends: the cursor passes a1 only (a2 is not handled); a2 starts.
    let (moved, start) = lanes.finished(1, 0);
    assert_eq!(moved, Some(cursor(1)));
    assert_eq!(start, [(1, 1, "a2")]);

    let (moved, start) = lanes.finished(1, 1);
    assert_eq!(moved, Some(cursor(3)), "a2 and b1 are behind it now");
    assert!(start.is_empty());
    let (moved, _) = lanes.finished(3, 3);
    assert_eq!(moved, Some(cursor(4)));
    assert_eq!(lanes.held(), 0);
    assert!(!lanes.is_running());
}

#[test]
fn waiting_events_are_dropped_when_the_observer_stops_and_running_ones_still_count() {
    let mut lanes = Lanes::new(1);
    assert!(lanes.arrive(1, cursor(1), ()).is_some());
    assert!(lanes.arrive(2, cursor(2), ()).is_none());
    lanes.drop_waiting();
    assert_eq!(lanes.unfinished(), 2);
    let (moved, start) = lanes.finished(1, 0);
    assert_eq!(moved, Some(cursor(1)));
    assert!(start.is_empty(), "the dropped event is not started");
}

#[test]
fn an_event_handled_before_lets_the_cursor_move_over_it() {
    let mut lanes = Lanes::new(2);
    assert!(lanes.arrive(1, cursor(1), ()).is_some());
    // Handled by an earlier stream: held as handled, behind the unfinished first event.
    assert_eq!(lanes.handled_before(cursor(2)), None);
    assert!(lanes.arrive(3, cursor(3), ()).is_some());
    let (moved, _) = lanes.finished(1, 0);
    assert_eq!(moved, Some(cursor(2)), "over the event handled before");
    let (moved, _) = lanes.finished(3, 2);
    assert_eq!(moved, Some(cursor(3)));
    assert_eq!(lanes.held(), 0);
    assert_eq!(lanes.handled_before(cursor(4)), Some(cursor(4)));
}
