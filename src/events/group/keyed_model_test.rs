//! Keyed groups under random joins, departures, lost streams and acknowledgements: a key never
//! has two events out, each key's events are handled in publish order, and every event is
//! handled exactly once when nobody fails to handle what it was given.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::*;
use crate::events::hub::{Hub, HubSettings};
use crate::events::protocol::Subscription;
use crate::keys::{KeyKind, KeyPath};
use crate::v1::{Acknowledgement, Cursor, Subscribe};

const EPOCH: u64 = 5;
const NAMES: [&str; 4] = ["a", "b", "c", "d"];

struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

struct Model {
    hub: Arc<Hub>,
    joined: HashMap<&'static str, Joined>,
    /// What each member was handed and has not handled, in delivery order: (sequence, key).
    out: HashMap<&'static str, Vec<(u64, u64)>>,
    key_of: HashMap<u64, u64>,
    handled: BTreeSet<u64>,
    /// The last event of each key handled.
    last_of_key: HashMap<u64, u64>,
}

impl Model {
    fn new(retain: usize) -> Self {
        let mut settings = HubSettings::new("test.v1.S/K".into(), EPOCH, retain, retain);
        settings.key = Some(KeyPath {
            fields: &[2],
            kind: KeyKind::Uint64,
        });
        let log = Box::new(crate::events::log::MemoryLog::new(retain));
        Self {
            hub: Hub::with_log(settings, log, None),
            joined: HashMap::new(),
            out: HashMap::new(),
            key_of: HashMap::new(),
            handled: BTreeSet::new(),
            last_of_key: HashMap::new(),
        }
    }

    fn publish(&mut self, key: u64) {
        let cursor = self
            .hub
            .publish(&Cursor {
                epoch: 0,
                sequence: key,
            })
            .unwrap();
        self.key_of.insert(cursor.sequence, key);
    }

    fn join(&mut self, name: &'static str, window: u32) {
        let request = Subscribe {
            group: "g".into(),
            member: name.into(),
            max_unacknowledged: window,
            ..Subscribe::default()
        };
        let subscription = Subscription::parse(&request).unwrap();
        let membership = subscription.membership.clone().unwrap();
        let joined = self.hub.join(&subscription, &membership).unwrap();
        self.joined.insert(name, joined);
        self.out.insert(name, Vec::new());
    }

    fn ack(&self, name: &str, handled: Option<u64>, each: &[u64], leave: bool) {
        let cursor = |sequence| Cursor {
            epoch: EPOCH,
            sequence,
        };
        let ack = Acknowledgement {
            rpc: "/test.v1.S/K".into(),
            group: "g".into(),
            member: name.into(),
            handled: handled.map(cursor),
            leave,
            handled_each: each.iter().map(|s| cursor(*s)).collect(),
            connection: 0,
        };
        self.hub.acknowledge(&ack, None).unwrap();
    }

    /// Takes what was delivered, and checks that no key has two events out.
    fn receive(&mut self) {
        for (name, joined) in &mut self.joined {
            while let Ok(delivery) = joined.deliveries.try_recv() {
                let sequence = delivery.event.sequence;
                self.out
                    .get_mut(name)
                    .unwrap()
                    .push((sequence, self.key_of[&sequence]));
            }
        }
        let mut out_keys = BTreeSet::new();
        for (sequence, key) in self.out.values().flatten() {
            assert!(
                out_keys.insert(*key),
                "key {key} has two events out ({sequence})"
            );
        }
    }

    fn handle(&mut self, sequence: u64, key: u64) {
        assert!(self.handled.insert(sequence), "{sequence} handled twice");
        if let Some(last) = self.last_of_key.insert(key, sequence) {
            assert!(
                last < sequence,
                "key {key}: {sequence} handled after {last}"
            );
        }
    }

    /// `name` handles its `index`th event alone.
    fn handle_one(&mut self, name: &'static str, index: usize) {
        let (sequence, key) = self.out.get_mut(name).unwrap().remove(index);
        self.handle(sequence, key);
        self.ack(name, None, &[sequence], false);
    }

    /// `name` handles everything it has, then acknowledges it cumulatively.
    fn handle_all(&mut self, name: &'static str) {
        let out = std::mem::take(self.out.get_mut(name).unwrap());
        for (sequence, key) in &out {
            self.handle(*sequence, *key);
        }
        if let Some((last, _)) = out.last() {
            self.ack(name, Some(*last), &[], false);
        }
    }

    /// `name` goes without handling what it has: it leaves, or its stream ends (without a
    /// runtime its lease runs out at once).
    fn go(&mut self, name: &'static str, leave: bool) {
        let joined = self.joined.remove(name).unwrap();
        self.out.remove(name);
        if leave {
            self.ack(name, None, &[], true);
        } else {
            self.hub.member_disconnected("g", name, joined.connection);
        }
    }
}

#[test]
fn keys_stay_one_at_a_time_and_in_order_whatever_members_do() {
    for seed in 1..=30u64 {
        let mut random = Random(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut model = Model::new(1000);
        let mut published = 0;
        for _ in 0..600 {
            let name = NAMES[random.below(4) as usize];
            match random.below(10) {
                0..=3 if published < 400 => {
                    model.publish(random.below(12));
                    published += 1;
                }
                4 if !model.joined.contains_key(name) => {
                    model.join(name, 1 + random.below(4) as u32);
                }
                5 if model.joined.contains_key(name) && random.below(4) == 0 => {
                    model.go(name, random.below(2) == 0);
                }
                6 if model.out.get(name).is_some_and(|out| !out.is_empty()) => {
                    model.handle_all(name);
                }
                _ => {
                    if let Some(out) = model.out.get(name).filter(|out| !out.is_empty()) {
                        let index = random.below(out.len() as u64) as usize;
                        model.handle_one(name, index);
                    }
                }
            }
            model.receive();
        }
        // One member that handles everything: every event is handled once.
        if !model.joined.contains_key("a") {
            model.join("a", 8);
        }
        for name in NAMES {
            if name != "a" && model.joined.contains_key(name) {
                model.go(name, true);
            }
        }
        for _ in 0..10_000 {
            model.receive();
            if model.out["a"].is_empty() {
                break;
            }
            model.handle_all("a");
        }
        let all: BTreeSet<u64> = model.key_of.keys().copied().collect();
        assert_eq!(model.handled, all, "seed {seed}");
    }
}
