//! Consumer groups on one hub: who gets each event, windows, acknowledgements, members that
//! come back or leave. The helpers here serve the other group tests too.

use std::sync::Arc;

use super::*;
use crate::events::hub::Hub;
use crate::events::protocol::Subscription;
use crate::events::stream::EventStream;
use crate::v1::Cursor as WireCursor;
use crate::v1::{Acknowledgement, StartPosition, Subscribe};

pub(super) const EPOCH: u64 = 77;

pub(super) fn hub(retain: usize) -> Arc<Hub> {
    Hub::new("test.v1.S/E".into(), EPOCH, retain, 64)
}

pub(super) fn publish(hub: &Hub, n: u64) {
    for _ in 0..n {
        hub.publish(&WireCursor::default()).unwrap();
    }
}

pub(super) fn member(group: &str, member: &str, window: u32) -> Subscribe {
    Subscribe {
        group: group.into(),
        member: member.into(),
        max_unacknowledged: window,
        ..Subscribe::default()
    }
}

/// Joins as `request` asks: the hub's join, for a test.
pub(super) trait JoinAs {
    fn join_as(&self, request: &Subscribe) -> Result<Joined, tonic::Status>;
}

impl JoinAs for Hub {
    fn join_as(&self, request: &Subscribe) -> Result<Joined, tonic::Status> {
        let subscription = Subscription::parse(request)?;
        let membership = subscription
            .membership
            .clone()
            .expect("a test joins with a group");
        Hub::join(self, &subscription, &membership)
    }
}

pub(super) fn parsed(request: &Subscribe) -> Subscription {
    Subscription::parse(request).unwrap()
}

/// (sequence, delivery count, missed) of everything delivered so far.
pub(super) fn received(joined: &mut Joined) -> Vec<(u64, u32, u64)> {
    let mut out = Vec::new();
    while let Ok(delivery) = joined.deliveries.try_recv() {
        out.push((
            delivery.event.sequence,
            delivery.delivery_count,
            delivery.missed,
        ));
    }
    out
}

pub(super) fn sequences(joined: &mut Joined) -> Vec<u64> {
    received(joined).into_iter().map(|(s, _, _)| s).collect()
}

pub(super) fn ack(group: &str, member: &str, sequence: u64) -> Acknowledgement {
    Acknowledgement {
        rpc: "/test.v1.S/E".into(),
        group: group.into(),
        member: member.into(),
        handled: Some(WireCursor {
            epoch: EPOCH,
            sequence,
        }),
        leave: false,
        handled_each: Vec::new(),
        connection: 0,
    }
}

impl Groups {
    /// The sequences `member` of `group` has not acknowledged, in delivery order.
    pub(crate) fn unacked(&self, group: &str, member: &str) -> Vec<u64> {
        let group = &self.by_name[group];
        group
            .members
            .key_of(member)
            .and_then(|key| group.members.get(key))
            .map(|member| member.unacked.iter().map(|u| u.event.sequence).collect())
            .unwrap_or_default()
    }
}

#[test]
fn each_event_goes_to_one_member_the_least_loaded_first() {
    let hub = hub(100);
    let mut a = hub.join_as(&member("g", "a", 10)).unwrap();
    let mut b = hub.join_as(&member("g", "b", 10)).unwrap();
    publish(&hub, 4);
    let (got_a, got_b) = (sequences(&mut a), sequences(&mut b));
    // Equal loads take turns.
    assert_eq!(got_a, [1, 3]);
    assert_eq!(got_b, [2, 4]);

    // `a` acknowledges both of its events: the next ones go to it until loads are even again.
    hub.acknowledge(&ack("g", "a", 3), None).unwrap();
    publish(&hub, 2);
    assert_eq!(sequences(&mut a), [5, 6]);
    assert!(sequences(&mut b).is_empty());
    assert_eq!(hub.unacked("g", "b"), [2, 4]);
}

#[test]
fn a_full_window_holds_events_back_until_acknowledged() {
    let hub = hub(100);
    let mut a = hub.join_as(&member("g", "a", 2)).unwrap();
    publish(&hub, 5);
    assert_eq!(sequences(&mut a), [1, 2]);
    // Cumulative: acknowledging 2 acknowledges 1 too.
    let response = hub.acknowledge(&ack("g", "a", 2), None).unwrap();
    assert_eq!(response.unacknowledged, 2);
    assert_eq!(sequences(&mut a), [3, 4]);
    hub.acknowledge(&ack("g", "a", 4), None).unwrap();
    assert_eq!(received(&mut a), [(5, 1, 0)]);
}

#[test]
fn groups_and_plain_subscribers_each_get_every_event() {
    let hub = hub(100);
    let mut welcome = hub.join_as(&member("welcome", "a", 10)).unwrap();
    let mut feed = hub.join_as(&member("feed", "a", 10)).unwrap();
    let plain = hub
        .start(&Subscription::parse(&Subscribe::default()).unwrap())
        .unwrap();
    publish(&hub, 3);
    assert_eq!(sequences(&mut welcome), [1, 2, 3]);
    assert_eq!(sequences(&mut feed), [1, 2, 3]);
    assert_eq!(plain.next, 1, "a plain subscriber reads all 3 from the log");
}

#[test]
fn a_new_group_starts_where_its_first_member_says_and_later_members_join_it_there() {
    let hub = hub(100);
    publish(&hub, 3);
    let mut first = hub
        .join_as(&Subscribe {
            after: Some(WireCursor {
                epoch: EPOCH,
                sequence: 1,
            }),
            ..member("g", "first", 10)
        })
        .unwrap();
    assert_eq!(sequences(&mut first), [2, 3]);
    let mut second = hub.join_as(&member("g", "second", 10)).unwrap();
    assert!(sequences(&mut second).is_empty());

    let mut live = hub
        .join_as(&Subscribe {
            start: StartPosition::Live as i32,
            ..member("live", "a", 10)
        })
        .unwrap();
    assert!(sequences(&mut live).is_empty());
    publish(&hub, 1);
    assert_eq!(sequences(&mut live), [4]);
}

#[test]
fn a_member_that_comes_back_gets_what_it_had_not_handled_again() {
    let hub = hub(100);
    let mut a = hub.join_as(&member("g", "a", 10)).unwrap();
    publish(&hub, 4);
    assert_eq!(sequences(&mut a), [1, 2, 3, 4]);
    // It handled up to 2 and reconnects saying so: 3 and 4 come again, counted.
    let mut again = hub
        .join_as(&Subscribe {
            after: Some(WireCursor {
                epoch: EPOCH,
                sequence: 2,
            }),
            ..member("g", "a", 10)
        })
        .unwrap();
    assert_eq!(received(&mut again), [(3, 2, 0), (4, 2, 0)]);
    // The first connection is over: nothing more reaches it.
    publish(&hub, 1);
    assert!(a.deliveries.try_recv().is_err());
    assert_eq!(sequences(&mut again), [5]);
}

#[test]
fn a_member_that_leaves_hands_its_events_over_at_once() {
    let hub = hub(100);
    let mut a = hub.join_as(&member("g", "a", 10)).unwrap();
    let mut b = hub.join_as(&member("g", "b", 1)).unwrap();
    publish(&hub, 4);
    assert_eq!(sequences(&mut a), [1, 3, 4]);
    assert_eq!(sequences(&mut b), [2]);
    hub.acknowledge(
        &Acknowledgement {
            leave: true,
            ..ack("g", "a", 1)
        },
        None,
    )
    .unwrap();
    // `a`'s stream ends; 3 and 4 wait for room at `b`.
    assert!(matches!(
        a.deliveries.try_recv(),
        Err(tokio::sync::mpsc::error::TryRecvError::Disconnected)
    ));
    assert!(sequences(&mut b).is_empty());
    hub.acknowledge(&ack("g", "b", 2), None).unwrap();
    assert_eq!(received(&mut b), [(3, 2, 0)]);
    hub.acknowledge(&ack("g", "b", 3), None).unwrap();
    assert_eq!(received(&mut b), [(4, 2, 0)]);
}

#[test]
fn a_group_without_members_keeps_what_is_retained_and_reports_the_rest() {
    let hub = hub(10);
    let a = hub.join_as(&member("g", "a", 10)).unwrap();
    hub.acknowledge(
        &Acknowledgement {
            leave: true,
            handled: None,
            ..ack("g", "a", 0)
        },
        None,
    )
    .unwrap();
    drop(a);
    publish(&hub, 15);
    let mut b = hub.join_as(&member("g", "b", 100)).unwrap();
    let got = received(&mut b);
    assert_eq!(got.len(), 10);
    assert_eq!(got[0], (6, 1, 5), "the first delivery reports the 5 missed");
    assert!(got[1..]
        .iter()
        .all(|&(_, count, missed)| count == 1 && missed == 0));
}

#[test]
fn a_group_holds_at_most_retain_events_unacknowledged() {
    // Retaining 4, two silent members with large windows pin 4 events, not 2 x 10.
    let hub = hub(4);
    let mut a = hub.join_as(&member("g", "a", 10)).unwrap();
    let mut b = hub.join_as(&member("g", "b", 10)).unwrap();
    publish(&hub, 12);
    let delivered = sequences(&mut a).len() + sequences(&mut b).len();
    assert_eq!(delivered, 4);
    assert_eq!(hub.unacked("g", "a").len() + hub.unacked("g", "b").len(), 4);
    // Acknowledging makes room again: the group goes on from what the log still holds
    // (9 to 12), reporting the 4 that left it (5 to 8) as missed.
    let acked = *hub.unacked("g", "a").last().unwrap();
    hub.acknowledge(&ack("g", "a", acked), None).unwrap();
    let next: Vec<_> = received(&mut a)
        .into_iter()
        .chain(received(&mut b))
        .collect();
    assert_eq!(next, [(9, 1, 4), (10, 1, 0)]);
}

#[test]
fn a_leaving_member_hands_its_events_to_one_with_room() {
    let hub = self::hub(5);
    let mut a = hub.join_as(&member("g", "a", 10)).unwrap();
    publish(&hub, 5);
    assert_eq!(sequences(&mut a).len(), 5);
    let mut b = hub.join_as(&member("g", "b", 10)).unwrap();
    hub.acknowledge(
        &Acknowledgement {
            leave: true,
            handled: None,
            ..ack("g", "a", 0)
        },
        None,
    )
    .unwrap();
    assert_eq!(
        received(&mut b),
        [(1, 2, 0), (2, 2, 0), (3, 2, 0), (4, 2, 0), (5, 2, 0)]
    );
}

#[test]
fn a_stream_taken_over_by_the_same_member_ends_without_sending_its_backlog() {
    let hub = hub(100);
    let first = EventStream::<WireCursor>::open(&hub, &parsed(&member("g", "a", 10))).unwrap();
    publish(&hub, 3);
    let second = EventStream::<WireCursor>::open(&hub, &parsed(&member("g", "a", 10))).unwrap();
    let waker = std::task::Waker::noop();
    let mut context = std::task::Context::from_waker(waker);
    let mut first = Box::pin(first);
    assert!(matches!(
        tokio_stream::Stream::poll_next(first.as_mut(), &mut context),
        std::task::Poll::Ready(None)
    ));
    drop(first);
    // The events went to the second stream, once, and the first stream's end does not count
    // as the member going away.
    assert_eq!(hub.unacked("g", "a"), [1, 2, 3]);
    let mut second = Box::pin(second);
    for _ in 0..3 {
        assert!(matches!(
            tokio_stream::Stream::poll_next(second.as_mut(), &mut context),
            std::task::Poll::Ready(Some(Ok(_)))
        ));
    }
}

#[test]
fn a_gap_report_survives_the_member_it_was_given_to() {
    let hub = hub(2);
    let a = hub.join_as(&member("g", "a", 10)).unwrap();
    hub.acknowledge(
        &Acknowledgement {
            leave: true,
            handled: None,
            ..ack("g", "a", 0)
        },
        None,
    )
    .unwrap();
    drop(a);
    publish(&hub, 5);
    let mut b = hub.join_as(&member("g", "b", 10)).unwrap();
    assert_eq!(received(&mut b)[0], (4, 1, 3));
    // `b` dies before acknowledging: `c` is told of the gap again.
    let mut c = hub.join_as(&member("g", "c", 10)).unwrap();
    hub.acknowledge(
        &Acknowledgement {
            leave: true,
            handled: None,
            ..ack("g", "b", 0)
        },
        None,
    )
    .unwrap();
    assert_eq!(received(&mut c), [(4, 2, 3), (5, 2, 0)]);
}

/// One acknowledgement costs what it names plus what the member has out, however many events
/// it names alone.
#[test]
fn an_acknowledgement_of_many_events_alone_costs_one_pass() {
    let hub = Hub::new("test.v1.S/E".into(), EPOCH, 4096, 4096);
    let mut a = hub.join_as(&member("g", "a", 4096)).unwrap();
    publish(&hub, 4096);
    assert_eq!(sequences(&mut a).len(), 4096);
    // Every event but the first, named alone, the last first: each named one is far from
    // the front.
    let named: Vec<u64> = (2..=4096).rev().chain(2..=4096).collect();
    let before = super::member::LOOKED_AT.with(std::cell::Cell::get);
    let response = hub
        .acknowledge(
            &Acknowledgement {
                handled: None,
                handled_each: named
                    .iter()
                    .map(|&sequence| WireCursor {
                        epoch: EPOCH,
                        sequence,
                    })
                    .collect(),
                ..ack("g", "a", 0)
            },
            None,
        )
        .unwrap();
    assert_eq!(response.unacknowledged, 1);
    assert_eq!(hub.unacked("g", "a"), [1]);
    let looked_at = super::member::LOOKED_AT.with(std::cell::Cell::get) - before;
    let bound = 2 * (4096 + named.len() as u64);
    assert!(
        looked_at <= bound,
        "{looked_at} unacknowledged events looked at for {} named",
        named.len()
    );
}
