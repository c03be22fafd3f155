//! Consumer groups over time and at their bounds: leases, groups without members, bounds,
//! drains and shutdown.

use std::time::Duration;

use super::test::*;

use crate::events::group;
use crate::events::hub::Hub;
use crate::events::stream::EventStream;
use crate::v1::Cursor as WireCursor;
use crate::v1::{Acknowledgement, Subscribe};

#[tokio::test(start_paused = true)]
async fn a_member_that_stays_away_past_its_lease_has_its_events_redelivered() {
    let hub = hub(100);
    let a = EventStream::<WireCursor>::open(
        &hub,
        &parsed(&Subscribe {
            lease_ms: 1000,
            ..member("g", "a", 10)
        }),
    )
    .unwrap();
    publish(&hub, 2);
    let mut b = hub.join_as(&member("g", "b", 10)).unwrap();
    drop(a);

    tokio::time::sleep(Duration::from_millis(999)).await;
    assert!(sequences(&mut b).is_empty(), "still within a's lease");
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_eq!(received(&mut b), [(1, 2, 0), (2, 2, 0)]);
    assert_eq!(
        hub.acknowledge(&ack("g", "a", 1), None).unwrap_err().code(),
        tonic::Code::NotFound
    );
}

#[tokio::test(start_paused = true)]
async fn a_member_back_within_its_lease_keeps_its_events() {
    let hub = hub(100);
    let a = EventStream::<WireCursor>::open(
        &hub,
        &parsed(&Subscribe {
            lease_ms: 1000,
            ..member("g", "a", 10)
        }),
    )
    .unwrap();
    let mut b = hub.join_as(&member("g", "b", 10)).unwrap();
    publish(&hub, 2);
    assert_eq!(sequences(&mut b), [2]);
    drop(a);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut back = hub.join_as(&member("g", "a", 10)).unwrap();
    assert_eq!(received(&mut back), [(1, 2, 0)]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(sequences(&mut b).is_empty(), "the old lease must not fire");
    assert_eq!(hub.unacked("g", "a"), [1]);
}

#[test]
fn drained_once_every_member_has_acknowledged() {
    let hub = hub(100);
    let _a = hub.join_as(&member("g", "a", 10)).unwrap();
    assert!(hub.drained());
    publish(&hub, 3);
    assert!(!hub.drained());
    hub.acknowledge(&ack("g", "a", 3), None).unwrap();
    assert!(hub.drained());
}

#[test]
fn groups_and_members_are_bounded() {
    let hub = hub(100);
    // Members stay (the joined streams are kept), so no group is idle.
    let mut joined = Vec::new();
    for i in 0..group::MAX_GROUPS {
        joined.push(hub.join_as(&member(&format!("g{i}"), "a", 1)).unwrap());
    }
    let error = hub.join_as(&member("one-too-many", "a", 1)).unwrap_err();
    assert_eq!(error.code(), tonic::Code::ResourceExhausted);
    // Existing groups still take members, up to their own bound.
    for i in 1..group::MAX_MEMBERS {
        hub.join_as(&member("g0", &format!("m{i}"), 1)).unwrap();
    }
    let error = hub.join_as(&member("g0", "one-too-many", 1)).unwrap_err();
    assert_eq!(error.code(), tonic::Code::ResourceExhausted);
    // A member already in the group may always come back.
    hub.join_as(&member("g0", "a", 1)).unwrap();
}

fn fill_with_groups_left_by_their_members(hub: &Hub) {
    for i in 0..group::MAX_GROUPS {
        let name = format!("g{i}");
        hub.join_as(&member(&name, "a", 1)).unwrap();
        hub.acknowledge(
            &Acknowledgement {
                leave: true,
                handled: None,
                ..ack(&name, "a", 0)
            },
            None,
        )
        .unwrap();
    }
}

#[test]
fn idle_groups_make_room_for_new_ones() {
    let hub = hub(100);
    fill_with_groups_left_by_their_members(&hub);
    // Every group is empty and owes nothing: one is forgotten for the newcomer.
    hub.join_as(&member("newcomer", "a", 1)).unwrap();
}

#[test]
fn abandoned_groups_holding_events_give_way_to_new_ones() {
    let hub = hub(100);
    fill_with_groups_left_by_their_members(&hub);
    // Each of the 256 member-less groups now holds an event for its next member.
    publish(&hub, 1);
    for i in 0..3 {
        let mut newcomer = hub.join_as(&member(&format!("new{i}"), "a", 1)).unwrap();
        assert_eq!(sequences(&mut newcomer), [1]);
    }
    // Groups that have members are never evicted: with 256 of them, the next one is refused.
    let hub = self::hub(100);
    let _members: Vec<_> = (0..group::MAX_GROUPS)
        .map(|i| hub.join_as(&member(&format!("g{i}"), "a", 1)).unwrap())
        .collect();
    let refused = hub.join_as(&member("one-too-many", "a", 1)).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
}

#[tokio::test(start_paused = true)]
async fn no_lease_timer_outlives_a_closed_hub() {
    let hub = hub(100);
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let stream = EventStream::<WireCursor>::open(
        &hub,
        &parsed(&Subscribe {
            lease_ms: 600_000,
            ..member("g", "a", 10)
        }),
    )
    .unwrap();
    let before = tasks();
    hub.close();
    drop(stream);
    assert_eq!(tasks(), before, "no lease timer started after close");

    // Before close, a lease timer runs; close cancels it.
    let hub = self::hub(100);
    let stream = EventStream::<WireCursor>::open(&hub, &parsed(&member("g", "a", 10))).unwrap();
    drop(stream);
    assert_eq!(tasks(), before + 1, "a lease timer");
    hub.close();
    tokio::task::yield_now().await;
    assert_eq!(tasks(), before, "cancelled by close");
}

#[tokio::test(start_paused = true)]
async fn a_group_without_members_for_an_hour_is_forgotten() {
    let hub = hub(100);
    hub.join_as(&member("gone", "a", 1)).unwrap();
    hub.acknowledge(
        &Acknowledgement {
            leave: true,
            handled: None,
            ..ack("gone", "a", 0)
        },
        None,
    )
    .unwrap();
    hub.join_as(&member("kept", "a", 1)).unwrap();
    tokio::time::advance(group::IDLE_GROUP_TTL - Duration::from_secs(1)).await;
    hub.join_as(&member("new", "a", 1)).unwrap();
    assert!(hub.has_group("gone"), "still within the hour");
    tokio::time::advance(Duration::from_secs(2)).await;
    hub.join_as(&member("newer", "a", 1)).unwrap();
    assert!(
        !hub.has_group("gone"),
        "forgotten after an hour without members"
    );
    assert!(
        hub.has_group("kept"),
        "a group with a member is never forgotten"
    );
}

#[tokio::test(start_paused = true)]
async fn a_group_without_members_is_forgotten_after_an_hour_even_if_no_group_comes() {
    let hub = hub(100);
    let mut gone = hub.join_as(&member("gone", "a", 1)).unwrap();
    let _kept = hub.join_as(&member("kept", "b", 100)).unwrap();
    publish(&hub, 3);
    let first = sequences(&mut gone);
    hub.acknowledge(
        &Acknowledgement {
            leave: true,
            handled: None,
            ..ack("gone", "a", 0)
        },
        None,
    )
    .unwrap();
    tokio::time::advance(group::IDLE_GROUP_TTL - Duration::from_secs(1)).await;
    settle().await;
    assert!(hub.has_group("gone"), "still within the hour");
    tokio::time::advance(Duration::from_secs(2)).await;
    settle().await;
    assert!(
        !hub.has_group("gone"),
        "forgotten after an hour without members, with {first:?} it was owed"
    );
    assert!(hub.has_group("kept"), "a group with a member stays");
}

/// Lets the tasks woken by the paused clock run.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}
