//! Refusals: bad acknowledgements and subscriptions, acknowledgements from another identity
//! or from an earlier life of a member, members without a name.

use super::test::*;
use crate::peer::PeerIdentity;
use crate::v1::Cursor as WireCursor;
use crate::v1::{Acknowledgement, Subscribe};

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
fn a_member_needs_a_name() {
    let hub = hub(100);
    let error = hub.join_as(&member("g", "", 1)).unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
}

/// Joins and leaves as many groups as a hub serves.
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
