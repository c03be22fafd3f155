//! Keys in a consumer group: which live member owns each key (rendezvous hashing over the
//! members' names), which keys have an event out, and the events held for their key's turn.
//!
//! A key has at most one event out. An event whose key has one out, or whose owner has no
//! room, is held (per key, in order); a key with events held and none out is runnable: it
//! waits only for its owner to have room.

use std::collections::{BTreeSet, HashMap, VecDeque};

use super::member::{Members, Unacked};
use crate::keys;

#[derive(Debug, Default)]
pub(super) struct Keyed {
    /// Keys with an event out (delivered, not acknowledged), and the member that has it.
    busy: HashMap<u64, u64>,
    /// Events waiting for their key's turn, per key in order: their key has an event out, or
    /// its member has no room.
    held: HashMap<u64, VecDeque<Unacked>>,
    /// Events in `held`.
    held_count: usize,
    /// Keys with events held and none out, by the sequence of the first held: they wait only
    /// for their member to have room.
    runnable: BTreeSet<(u64, u64)>,
    /// Connected members, as (hash of the name, key): the candidates for owning a key.
    live: Vec<(u64, u64)>,
}

impl Keyed {
    /// Events held, over all keys.
    pub(super) fn held_count(&self) -> usize {
        self.held_count
    }

    /// Whether `key` has an event out or held: a new event of it waits its turn.
    pub(super) fn waits(&self, key: u64) -> bool {
        self.busy.contains_key(&key) || self.held.contains_key(&key)
    }

    /// The live member that owns `key`: the highest rendezvous score of the key and its name.
    pub(super) fn owner(&self, key: u64) -> Option<u64> {
        self.live
            .iter()
            .max_by_key(|(name, member)| (keys::score(key, *name), *member))
            .map(|&(_, member)| member)
    }

    /// The member a new event of `key` may go to now: its owner, when the key has no event
    /// out or held and the owner has room.
    pub(super) fn free_owner(&self, key: u64, members: &Members) -> Option<u64> {
        if self.waits(key) {
            return None;
        }
        self.owner(key).filter(|owner| members.has_room(*owner))
    }

    /// Holds an event of `key` until its turn: behind the key's other held events, or before
    /// them for one given back.
    pub(super) fn hold(&mut self, key: u64, unacked: Unacked, front: bool) {
        self.unmark_runnable(key);
        let held = self.held.entry(key).or_default();
        if front {
            held.push_front(unacked);
        } else {
            held.push_back(unacked);
        }
        self.held_count += 1;
        self.mark_runnable(key);
    }

    /// The runnable keys, as (sequence of the first held, key), the longest held first.
    pub(super) fn runnable(&self) -> Vec<(u64, u64)> {
        self.runnable.iter().copied().collect()
    }

    /// Takes the first held event of runnable `key` (whose first held is `sequence`), to hand
    /// it out.
    pub(super) fn take_runnable(&mut self, sequence: u64, key: u64) -> Option<Unacked> {
        self.runnable.remove(&(sequence, key));
        let held = self.held.get_mut(&key)?;
        let unacked = held.pop_front()?;
        if held.is_empty() {
            self.held.remove(&key);
        }
        self.held_count -= 1;
        Some(unacked)
    }

    /// An event of `key` went out to `member`: the key is busy until it is acknowledged or
    /// given back.
    pub(super) fn out(&mut self, key: u64, member: u64) {
        self.busy.insert(key, member);
    }

    /// `member` acknowledged its event of `key`: the key's next may go.
    pub(super) fn key_settled(&mut self, key: u64, member: u64) {
        if self.busy.get(&key) == Some(&member) {
            self.busy.remove(&key);
            self.mark_runnable(key);
        }
    }

    /// A member gave back its event of `key` (it left, or its lease ran out): it goes out
    /// again first.
    pub(super) fn given_back(&mut self, key: u64, unacked: Unacked) {
        self.busy.remove(&key);
        self.hold(key, unacked, true);
    }

    /// The connected members, the candidates for owning keys, after a member came or went.
    pub(super) fn rebuild_live(&mut self, members: &Members) {
        self.live.clear();
        self.live.extend(
            members
                .iter()
                .filter(|(_, member)| member.sender.is_some())
                .map(|(key, member)| (member.id_hash, key)),
        );
    }

    /// Takes `key` out of the runnable keys.
    fn unmark_runnable(&mut self, key: u64) {
        if let Some(first) = self.held.get(&key).and_then(VecDeque::front) {
            self.runnable.remove(&(first.event.sequence, key));
        }
    }

    /// Puts `key` in the runnable keys when it has events held and none out.
    fn mark_runnable(&mut self, key: u64) {
        if self.busy.contains_key(&key) {
            return;
        }
        if let Some(first) = self.held.get(&key).and_then(VecDeque::front) {
            self.runnable.insert((first.event.sequence, key));
        }
    }
}
