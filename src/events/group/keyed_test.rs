//! Consumer groups with keys: one event per key out, keys owned by rendezvous hashing, and
//! hand-over only between two events of a key.

use std::sync::Arc;

use super::*;
use crate::events::hub::{Hub, HubSettings};
use crate::events::protocol::Subscription;
use crate::keys::{self, KeyKind, KeyPath};
use crate::v1::Cursor as Keyed;
use crate::v1::{Acknowledgement, Subscribe};

const EPOCH: u64 = 91;

/// A hub whose events are `Cursor` messages keyed by their `sequence` field.
fn hub() -> Arc<Hub> {
    hub_retaining(1000)
}

fn hub_retaining(retain: usize) -> Arc<Hub> {
    let mut settings = HubSettings::new("test.v1.S/K".into(), EPOCH, retain, retain);
    settings.key = Some(KeyPath {
        fields: &[2],
        kind: KeyKind::Uint64,
    });
    let log = Box::new(crate::events::log::MemoryLog::new(retain));
    Hub::with_log(settings, log, None)
}

fn publish(hub: &Hub, key: u64) -> u64 {
    hub.publish(&Keyed {
        epoch: 0,
        sequence: key,
    })
    .unwrap()
    .sequence
}

fn join(hub: &Hub, member: &str) -> Joined {
    join_with(hub, member, 100)
}

fn join_with(hub: &Hub, member: &str, window: u32) -> Joined {
    let request = Subscribe {
        group: "g".into(),
        member: member.into(),
        max_unacknowledged: window,
        ..Subscribe::default()
    };
    let subscription = Subscription::parse(&request).unwrap();
    let membership = subscription.membership.clone().unwrap();
    hub.join(&subscription, &membership).unwrap()
}

/// (sequence, delivery count) of everything delivered so far.
fn received(joined: &mut Joined) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    while let Ok(delivery) = joined.deliveries.try_recv() {
        out.push((delivery.event.sequence, delivery.delivery_count));
    }
    out
}

fn sequences(joined: &mut Joined) -> Vec<u64> {
    received(joined).into_iter().map(|(s, _)| s).collect()
}

fn ack(member: &str, handled: Option<u64>, each: &[u64], leave: bool) -> Acknowledgement {
    let cursor = |sequence| Keyed {
        epoch: EPOCH,
        sequence,
    };
    Acknowledgement {
        rpc: "/test.v1.S/K".into(),
        group: "g".into(),
        member: member.into(),
        handled: handled.map(cursor),
        leave,
        handled_each: each.iter().map(|s| cursor(*s)).collect(),
        connection: 0,
    }
}

/// Which of `members` owns `key` by rendezvous hashing.
fn owner<'a>(key: u64, members: &[&'a str]) -> &'a str {
    let key = keys::hash(key.to_string().as_bytes());
    members
        .iter()
        .max_by_key(|m| keys::score(key, keys::hash(m.as_bytes())))
        .unwrap()
}

/// A key that `members` give to `wanted`.
fn key_owned_by(wanted: &str, members: &[&str]) -> u64 {
    (1..).find(|k| owner(*k, members) == wanted).unwrap()
}

#[test]
fn a_key_has_one_event_out_while_the_other_keys_flow() {
    let hub = hub();
    let mut a = join(&hub, "a");
    let first = publish(&hub, 7);
    let second = publish(&hub, 7);
    let other = publish(&hub, 8);
    // The second event of key 7 waits for the first; key 8 does not wait.
    assert_eq!(sequences(&mut a), [first, other]);
    hub.acknowledge(&ack("a", None, &[first], false), None)
        .unwrap();
    assert_eq!(sequences(&mut a), [second]);
}

#[test]
fn every_key_goes_to_the_member_rendezvous_hashing_names() {
    let hub = hub();
    let mut a = join(&hub, "a");
    let mut b = join(&hub, "b");
    let mut expected = (Vec::new(), Vec::new());
    for key in 1..=40 {
        let sequence = publish(&hub, key);
        match owner(key, &["a", "b"]) {
            "a" => expected.0.push(sequence),
            _ => expected.1.push(sequence),
        }
    }
    assert!(!expected.0.is_empty() && !expected.1.is_empty());
    assert_eq!(sequences(&mut a), expected.0);
    assert_eq!(sequences(&mut b), expected.1);
}

#[test]
fn a_key_changes_hands_only_after_its_event_is_acknowledged() {
    let hub = hub();
    let mut a = join(&hub, "a");
    let key = key_owned_by("b", &["a", "b"]);
    let first = publish(&hub, key);
    assert_eq!(sequences(&mut a), [first]);

    // `b` joins and now owns the key, but `a` still has its event out.
    let mut b = join(&hub, "b");
    let second = publish(&hub, key);
    assert!(sequences(&mut a).is_empty());
    assert!(sequences(&mut b).is_empty(), "not before `a` acknowledged");

    hub.acknowledge(&ack("a", Some(first), &[], false), None)
        .unwrap();
    assert_eq!(sequences(&mut b), [second]);
    assert!(sequences(&mut a).is_empty());
}

#[test]
fn a_member_that_leaves_gives_its_keys_back_first_and_in_order() {
    let hub = hub();
    let mut a = join(&hub, "a");
    let key = key_owned_by("a", &["a", "b"]);
    let first = publish(&hub, key);
    let second = publish(&hub, key);
    assert_eq!(sequences(&mut a), [first]);
    let mut b = join(&hub, "b");
    assert!(sequences(&mut b).is_empty());

    // `a` leaves without handling: `b` gets the key's first event again, then the second.
    hub.acknowledge(&ack("a", None, &[], true), None).unwrap();
    assert_eq!(received(&mut b), [(first, 2)]);
    hub.acknowledge(&ack("b", None, &[first], false), None)
        .unwrap();
    assert_eq!(received(&mut b), [(second, 1)]);
}

#[test]
fn acknowledging_one_event_alone_frees_only_its_key() {
    let hub = hub();
    let mut a = join(&hub, "a");
    let (k1, k2) = (publish(&hub, 1), publish(&hub, 2));
    let (k1_next, k2_next) = (publish(&hub, 1), publish(&hub, 2));
    assert_eq!(sequences(&mut a), [k1, k2]);

    // The second delivered is acknowledged alone: the first stays out, its key waits.
    let response = hub
        .acknowledge(&ack("a", None, &[k2], false), None)
        .unwrap();
    assert_eq!(response.unacknowledged, 2, "k1's first and k2's next");
    assert_eq!(sequences(&mut a), [k2_next]);
    hub.acknowledge(&ack("a", None, &[k1], false), None)
        .unwrap();
    assert_eq!(sequences(&mut a), [k1_next]);
}

#[test]
fn a_disconnected_member_keeps_its_keys_out_until_its_lease_and_loses_the_rest() {
    let hub = hub();
    let mut a = join(&hub, "a");
    let mut b = join(&hub, "b");
    let held_by_a = key_owned_by("a", &["a", "b"]);
    let out = publish(&hub, held_by_a);
    assert_eq!(sequences(&mut a), [out]);

    // `a`'s stream ends (no runtime: its lease runs out at once, its event goes to `b`).
    hub.member_disconnected("g", "a", a.connection);
    assert_eq!(received(&mut b), [(out, 2)]);
    let next = publish(&hub, held_by_a);
    hub.acknowledge(&ack("b", None, &[out], false), None)
        .unwrap();
    assert_eq!(sequences(&mut b), [next]);
}

/// A member with a full window has the events of its keys held. Publishing another event, or
/// acknowledging one, then costs what can go: not a look at every held key.
#[test]
fn a_publish_or_an_acknowledgement_costs_the_same_however_many_keys_are_held() {
    let hub = hub_retaining(100_000);
    let mut slow = join_with(&hub, "slow", 1);
    let mut fast = join_with(&hub, "fast", 100_000);
    let cost_of = |keys: std::ops::Range<u64>| {
        let before = hub.key_scores();
        let count = keys.end - keys.start;
        for key in keys {
            publish(&hub, key);
        }
        (hub.key_scores() - before) / count
    };
    let with_few_held = cost_of(0..100);
    for key in 100..4_000 {
        publish(&hub, key);
    }
    let with_many_held = cost_of(4_000..4_100);
    // Two members: one owner computation is two scores.
    assert!(
        with_few_held <= 8 && with_many_held <= 8,
        "scores per publish: {with_few_held} with few keys held, {with_many_held} with ~2,000"
    );

    let delivered = sequences(&mut fast);
    let before = hub.key_scores();
    for sequence in &delivered[..100] {
        hub.acknowledge(&ack("fast", None, &[*sequence], false), None)
            .unwrap();
    }
    let per_ack = (hub.key_scores() - before) / 100;
    assert!(per_ack <= 8, "scores per acknowledgement: {per_ack}");

    // The slow member's keys still go to it, one event at a time, the longest held first.
    let first = sequences(&mut slow);
    assert_eq!(first.len(), 1);
    hub.acknowledge(&ack("slow", Some(first[0]), &[], false), None)
        .unwrap();
    let next = sequences(&mut slow);
    assert_eq!(next.len(), 1);
    assert!(next[0] > first[0]);
    assert!(!delivered.contains(&next[0]));
}

/// Every keyed group computes the owner of a key it has not seen since its members changed;
/// a key seen since costs a lookup per group, whatever the number of members.
#[test]
fn owners_are_remembered_until_the_members_change() {
    let hub = hub_retaining(10_000);
    let mut members = Vec::new();
    for group in 0..4 {
        for member in 0..32 {
            let request = Subscribe {
                group: format!("g{group}"),
                member: format!("m{member}"),
                max_unacknowledged: 10_000,
                ..Subscribe::default()
            };
            let subscription = Subscription::parse(&request).unwrap();
            let membership = subscription.membership.clone().unwrap();
            let joined = hub.join(&subscription, &membership).unwrap();
            members.push((format!("g{group}"), joined));
        }
    }
    let mut acknowledge_everything = || {
        for (group, member) in &mut members {
            for sequence in sequences(member) {
                let ack = Acknowledgement {
                    group: group.clone(),
                    ..ack(&member.member, Some(sequence), &[], false)
                };
                hub.acknowledge(&ack, None).unwrap();
            }
        }
    };
    for key in 0..16 {
        publish(&hub, key);
    }
    acknowledge_everything();
    let first_sight = hub.key_scores();
    assert_eq!(
        first_sight,
        16 * 4 * 32,
        "one owner computation per key and group"
    );
    for _ in 0..10 {
        for key in 0..16 {
            publish(&hub, key);
        }
        acknowledge_everything();
    }
    assert_eq!(
        hub.key_scores(),
        first_sight,
        "keys seen before cost no score"
    );
}

/// A member that comes or goes moves only the keys rendezvous hashing moves: the waiting keys
/// of the one that went (an owner computation each), and those a newcomer outranks (a score
/// per key), never every waiting key times every member; and each key then goes to the
/// member that owns it.
#[test]
fn a_member_that_comes_or_goes_re_owns_only_the_keys_that_move() {
    let hub = hub_retaining(100_000);
    // 15 members whose windows are full after one event, and one with room for everything,
    // so the group reads every event and holds those of the full members' keys.
    let names: Vec<String> = (0..15).map(|m| format!("m{m}")).collect();
    let mut joined: Vec<Joined> = names.iter().map(|name| join_with(&hub, name, 1)).collect();
    joined.push(join_with(&hub, "fast", 100_000));
    const KEYS: u64 = 2_000;
    for key in 0..KEYS {
        publish(&hub, key);
    }
    // What went out before the members change (one event each), acknowledged later.
    let out_before: Vec<(String, Vec<u64>)> = joined
        .iter_mut()
        .map(|member| (member.member.clone(), sequences(member)))
        .collect();

    // m0 leaves: only its own waiting keys (about 1/16th) are owned again, over 15 members.
    let before = hub.key_scores();
    hub.acknowledge(&ack("m0", None, &[], true), None).unwrap();
    let on_leave = hub.key_scores() - before;
    assert!(
        on_leave <= 2 * (KEYS / 16) * 16,
        "{on_leave} scores when a member of 16 left with {KEYS} keys waiting"
    );
    joined.remove(0);
    // What went out on the leave (m0's keys to their new owners), acknowledged later too.
    let out_between: Vec<(String, Vec<u64>)> = joined
        .iter_mut()
        .map(|member| (member.member.clone(), sequences(member)))
        .collect();

    // n joins: one score for the owner and one for n per waiting key, at most.
    let before = hub.key_scores();
    let newcomer = join_with(&hub, "n", 1);
    let on_join = hub.key_scores() - before;
    assert!(
        on_join <= 2 * KEYS + 64,
        "{on_join} scores when a member joined with {KEYS} keys waiting"
    );
    joined.push(newcomer);

    // Every event handed out from here goes to its key's owner among the members now.
    let live_names: Vec<String> = joined.iter().map(|j| j.member.clone()).collect();
    let live: Vec<&str> = live_names.iter().map(String::as_str).collect();
    let out_earlier = out_before.iter().chain(&out_between);
    for (name, out) in out_earlier.filter(|(name, _)| name != "m0") {
        for sequence in out {
            hub.acknowledge(&ack(name, Some(*sequence), &[], false), None)
                .unwrap();
        }
    }
    let mut checked = 0;
    for _ in 0..20 {
        for member in &mut joined {
            let name = member.member.clone();
            while let Ok(delivery) = member.deliveries.try_recv() {
                let key = delivery.event.sequence - 1;
                // What m0 gave back goes out again marked: its owner was m0's choice.
                if delivery.delivery_count == 1 {
                    assert_eq!(owner(key, &live), name, "key {key}");
                    checked += 1;
                }
                hub.acknowledge(&ack(&name, Some(delivery.event.sequence), &[], false), None)
                    .unwrap();
            }
        }
    }
    assert!(checked > 200, "only {checked} deliveries checked");
}
