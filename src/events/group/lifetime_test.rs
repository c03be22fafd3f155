//! Consumer groups over time and at their bounds: leases, groups without members, refusals,
//! identities, shutdown.

use std::time::Duration;

use super::test::*;

use crate::events::group;
use crate::events::hub::Hub;
use crate::events::stream::EventStream;
use crate::peer::PeerIdentity;
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

#[test]
fn a_late_acknowledgement_from_an_earlier_life_of_a_member_acknowledges_nothing_since() {
    let hub = hub(100);
    let mut first_life = hub.join_as(&member("g", "a", 10)).unwrap();
    publish(&hub, 3);
    assert_eq!(sequences(&mut first_life), [1, 2, 3]);
    // Its stream ends; without a runtime its lease runs out at once: its events go back.
    hub.member_disconnected("g", "a", first_life.connection);
    let mut second_life = hub.join_as(&member("g", "a", 10)).unwrap();
    assert_eq!(sequences(&mut second_life), [1, 2, 3]);

    // The first life's acknowledgement arrives late.
    let late = hub
        .acknowledge(
            &Acknowledgement {
                connection: first_life.connection,
                ..ack("g", "a", 2)
            },
            None,
        )
        .unwrap_err();
    assert_eq!(late.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        hub.unacked("g", "a"),
        [1, 2, 3],
        "nothing of the second life"
    );

    hub.acknowledge(
        &Acknowledgement {
            connection: second_life.connection,
            ..ack("g", "a", 2)
        },
        None,
    )
    .unwrap();
    assert_eq!(hub.unacked("g", "a"), [3]);
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
fn bad_acknowledgements_are_refused_and_change_nothing() {
    let hub = hub(100);
    let mut a = hub.join_as(&member("g", "a", 10)).unwrap();
    let mut b = hub.join_as(&member("g", "b", 10)).unwrap();
    publish(&hub, 4);
    let (got_a, got_b) = (sequences(&mut a), sequences(&mut b));
    assert_eq!((got_a.len(), got_b.len()), (2, 2));

    let cases = [
        (ack("nope", "a", 1), tonic::Code::NotFound),
        (ack("g", "nobody", 1), tonic::Code::NotFound),
        (ack("g", "a", 5), tonic::Code::InvalidArgument),
        (ack("g", "a", 0), tonic::Code::InvalidArgument),
        (
            Acknowledgement {
                handled: None,
                ..ack("g", "a", 1)
            },
            tonic::Code::InvalidArgument,
        ),
        (
            Acknowledgement {
                handled: Some(WireCursor {
                    epoch: EPOCH + 1,
                    sequence: 1,
                }),
                ..ack("g", "a", 1)
            },
            tonic::Code::FailedPrecondition,
        ),
    ];
    for (bad, code) in cases {
        let error = hub.acknowledge(&bad, None).unwrap_err();
        assert_eq!(error.code(), code, "{bad:?}: {}", error.message());
        assert!(!error.message().is_empty());
    }
    // Acknowledging an event delivered to the other member is no acknowledgement at all.
    hub.acknowledge(&ack("g", "a", got_b[1]), None).unwrap();
    assert_eq!(hub.unacked("g", "a"), got_a);
    assert_eq!(hub.unacked("g", "b"), got_b);
    // Both members still get events.
    publish(&hub, 2);
    assert_eq!(sequences(&mut a).len() + sequences(&mut b).len(), 2);
}

#[test]
fn nonsense_subscriptions_are_refused() {
    let hub = hub(100);
    publish(&hub, 2);
    let long = "x".repeat(1000);
    for request in [
        member(&long, "a", 1),
        member("g", &long, 1),
        Subscribe {
            after: Some(WireCursor {
                epoch: EPOCH,
                sequence: 3,
            }),
            ..member("g", "a", 1)
        },
    ] {
        let error = hub.join_as(&request).unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
    }
    // Absurd windows and leases are clamped, not obeyed.
    let mut greedy = hub
        .join_as(&Subscribe {
            max_unacknowledged: u32::MAX,
            lease_ms: u32::MAX,
            ..member("g", "a", 0)
        })
        .unwrap();
    publish(&hub, 100);
    assert_eq!(
        sequences(&mut greedy).len(),
        64,
        "the hub's buffer caps the window"
    );
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

#[test]
fn a_member_needs_a_name() {
    let hub = hub(100);
    let error = hub.join_as(&member("g", "", 1)).unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
}

/// Joins and leaves as many groups as a hub serves.
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

#[test]
fn a_member_belongs_to_the_identity_that_joined_it() {
    let hub = hub(100);
    let alice = PeerIdentity::new("alice");
    let mallory = PeerIdentity::new("mallory");
    let join = |name: &str, identity: Option<&PeerIdentity>| {
        let subscription = parsed(&member("g", name, 10));
        let mut membership = subscription.membership.clone().unwrap();
        membership.identity = identity.cloned();
        hub.join(&subscription, &membership)
    };
    let mut a = join("a", Some(&alice)).unwrap();
    publish(&hub, 2);
    assert_eq!(sequences(&mut a), [1, 2]);

    // Another identity, or none, may neither take `a` over nor acknowledge or leave for it.
    for other in [Some(&mallory), None] {
        let refused = join("a", other).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(
            refused.message().contains("another identity"),
            "{refused:?}"
        );
        let ack_refused = hub.acknowledge(&ack("g", "a", 2), other).unwrap_err();
        assert_eq!(ack_refused.code(), tonic::Code::PermissionDenied);
        let leave = Acknowledgement {
            leave: true,
            ..ack("g", "a", 1)
        };
        assert_eq!(
            hub.acknowledge(&leave, other).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
    }
    assert_eq!(
        hub.unacked("g", "a"),
        [1, 2],
        "nothing acknowledged by others"
    );
    assert!(!a.superseded.load(std::sync::atomic::Ordering::Acquire));

    // Its own identity may, and other identities join under other names.
    assert_eq!(
        hub.acknowledge(&ack("g", "a", 1), Some(&alice))
            .unwrap()
            .unacknowledged,
        1
    );
    join("m", Some(&mallory)).unwrap();
    let again = join("a", Some(&alice)).unwrap();
    assert!(a.superseded.load(std::sync::atomic::Ordering::Acquire));
    drop(again);
}
