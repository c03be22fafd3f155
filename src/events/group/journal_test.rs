//! Consumer groups across a restart of the producer, over a log that keeps them: what goes out
//! again, and which of it is marked as a redelivery.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::*;
use crate::events::hub::{Hub, HubSettings};
use crate::events::log::{EventLog, MemoryLog, Read, SavedGroup};
use crate::events::protocol::Subscription;
use crate::keys::{KeyKind, KeyPath};
use crate::v1::{Acknowledgement, Cursor, Subscribe};

const EPOCH: u64 = 3;

/// A log in memory that keeps groups as a journal would, and outlives the hub over it: a new
/// hub over the same `Kept` is the producer restarted.
#[derive(Clone, Default)]
struct Kept {
    events: Arc<Mutex<Option<MemoryLog>>>,
    groups: Arc<Mutex<BTreeMap<String, SavedGroup>>>,
}

struct KeptLog {
    kept: Kept,
    handed_over: bool,
}

impl Kept {
    fn hub(&self) -> Arc<Hub> {
        self.events
            .lock()
            .unwrap()
            .get_or_insert_with(|| MemoryLog::new(1000));
        let mut settings = HubSettings::new("test.v1.S/K".into(), EPOCH, 1000, 1000);
        settings.key = Some(KeyPath {
            fields: &[2],
            kind: KeyKind::Uint64,
        });
        // The events are `Cursor`s, filtered on their sequence (the key).
        settings.schema = Some(crate::events::filter::EventSchema {
            descriptors: crate::v1::FILE_DESCRIPTOR_SET,
            message: ".meshless.v1.Cursor",
        });
        let log = KeptLog {
            kept: self.clone(),
            handed_over: false,
        };
        Hub::with_log(settings, Box::new(log), None)
    }
}

impl KeptLog {
    fn events<T>(&self, f: impl FnOnce(&mut MemoryLog) -> T) -> T {
        f(self.kept.events.lock().unwrap().as_mut().unwrap())
    }
}

impl EventLog for KeptLog {
    fn next_sequence(&self) -> u64 {
        self.events(|log| log.next_sequence())
    }

    fn oldest(&self) -> u64 {
        self.events(|log| log.oldest())
    }

    fn append(&mut self, event: Stored) -> std::io::Result<()> {
        self.events(|log| log.append(event))
    }

    fn read(&self, from: u64, max: usize, out: &mut VecDeque<Stored>) -> Read {
        self.events(|log| log.read(from, max, out))
    }

    fn keeps_groups(&self) -> bool {
        true
    }

    fn record_groups(&mut self, changes: &[GroupChange]) {
        let mut groups = self.kept.groups.lock().unwrap();
        for change in changes.iter().cloned() {
            change.apply_to(&mut groups);
        }
    }

    fn take_saved_groups(&mut self) -> Vec<(String, SavedGroup)> {
        if std::mem::replace(&mut self.handed_over, true) {
            return Vec::new();
        }
        self.kept
            .groups
            .lock()
            .unwrap()
            .clone()
            .into_iter()
            .collect()
    }
}

fn publish(hub: &Hub, key: u64) -> u64 {
    hub.publish(&Cursor {
        epoch: 0,
        sequence: key,
    })
    .unwrap()
    .sequence
}

fn join(hub: &Hub, member: &str) -> Joined {
    join_filtered(hub, member, None).unwrap()
}

/// Joins `member` with a filter that takes the events whose key is one of `keys`.
fn join_filtered(hub: &Hub, member: &str, keys: Option<&[u64]>) -> Result<Joined, tonic::Status> {
    let filter = keys.map(|keys| {
        crate::events::Filter::new()
            .any_of("sequence", keys.iter().copied())
            .into()
    });
    let request = Subscribe {
        group: "g".into(),
        member: member.into(),
        max_unacknowledged: 100,
        filter,
        ..Subscribe::default()
    };
    let subscription = Subscription::parse(&request).unwrap();
    let membership = subscription.membership.clone().unwrap();
    hub.join(&subscription, &membership)
}

#[test]
fn events_a_groups_filter_passes_over_are_kept_acknowledged_across_a_restart() {
    let kept = Kept::default();
    let hub = kept.hub();
    let mut a = join_filtered(&hub, "a", Some(&[2, 4])).unwrap();
    let published: Vec<u64> = (1..=6).map(|key| publish(&hub, key)).collect();
    let handled = handle_everything(&hub, &mut a);
    assert_eq!(handled, [(published[1], 1), (published[3], 1)]);
    let mut saved = kept.groups.lock().unwrap()["g"].clone();
    saved.prune(1);
    assert_eq!(
        (saved.start, saved.acked.len()),
        (7, 0),
        "the events passed over are acknowledged: the record stays small"
    );
    drop(a);
    drop(hub);

    // Restarted, the group takes the filter of its first member to join again.
    let hub = kept.hub();
    let mut b = join_filtered(&hub, "b", Some(&[4])).unwrap();
    let refused = join_filtered(&hub, "c", None).unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    let new: Vec<u64> = [2, 4, 5].iter().map(|key| publish(&hub, *key)).collect();
    assert_eq!(handle_everything(&hub, &mut b), [(new[1], 1)]);
}

fn ack(hub: &Hub, member: &str, sequence: u64) {
    let acknowledgement = Acknowledgement {
        rpc: "/test.v1.S/K".into(),
        group: "g".into(),
        member: member.into(),
        handled_each: vec![Cursor {
            epoch: EPOCH,
            sequence,
        }],
        ..Acknowledgement::default()
    };
    hub.acknowledge(&acknowledgement, None).unwrap();
}

/// Everything `member` gets, acknowledging each as it comes: (sequence, delivery count).
fn handle_everything(hub: &Hub, member: &mut Joined) -> Vec<(u64, u32)> {
    let mut handled = Vec::new();
    while let Ok(delivery) = member.deliveries.try_recv() {
        handled.push((delivery.event.sequence, delivery.delivery_count));
        ack(hub, &member.member, delivery.event.sequence);
    }
    handled
}

#[test]
fn after_a_restart_only_events_that_may_have_been_handed_out_are_marked() {
    let kept = Kept::default();
    let hub = kept.hub();
    let mut a = join(&hub, "a");
    let out = publish(&hub, 7);
    let waiting: Vec<u64> = (0..49).map(|_| publish(&hub, 7)).collect();
    let other = publish(&hub, 8);
    let handed_out: Vec<u64> = handle_everything_but_acknowledge(&mut a);
    assert_eq!(handed_out, [out, other]);
    drop(a);
    drop(hub);

    // The producer restarts; a member of the group handles what it is owed.
    let hub = kept.hub();
    let mut b = join(&hub, "b");
    let handled = handle_everything(&hub, &mut b);
    let sequences: Vec<u64> = handled.iter().map(|(s, _)| *s).collect();
    let mut expected = vec![out, other];
    expected.extend(&waiting);
    expected.sort_unstable();
    let mut sorted = sequences.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, expected, "every event not acknowledged, once");
    let marked: Vec<u64> = handled
        .iter()
        .filter(|(_, count)| *count > 1)
        .map(|(s, _)| *s)
        .collect();
    assert!(
        marked.contains(&out) && marked.contains(&other),
        "{marked:?}"
    );
    let marked_waiting = marked.iter().filter(|s| waiting.contains(s)).count();
    assert!(
        marked_waiting <= 16,
        "{marked_waiting} events that waited for their key, never handed out, marked as redeliveries"
    );
}

/// The sequences delivered to `member`, not acknowledged.
fn handle_everything_but_acknowledge(member: &mut Joined) -> Vec<u64> {
    let mut delivered = Vec::new();
    while let Ok(delivery) = member.deliveries.try_recv() {
        delivered.push(delivery.event.sequence);
    }
    delivered
}
