//! Keys in a consumer group: which live member owns each key (rendezvous hashing over the
//! members' names), which keys have an event out, and the events held for their key's turn.
//!
//! A key has at most one event out. An event whose key has one out, or whose owner has no
//! room, is held (per key, in order); a key with events held and none out is waiting: it
//! waits only for its owner to have room. Waiting keys are indexed by owner, and an owner is
//! looked at only when it may take something (it acknowledged, a key of its became free, or
//! the members changed), so that handing out costs what goes, not the number of keys held.
//!
//! Cost, per group that reads an event of a key: one owner computation, a rendezvous score per
//! live member (at most 1,024), or a lookup when the key's owner was computed since the members
//! last changed (up to 1,024 keys are remembered). At the documented limits, 256 groups of
//! 1,024 members, an event of a new key costs at most 262,144 scores over all groups, one of a
//! recent key 256 lookups. An event that goes out, or is held, costs a few map operations more;
//! an acknowledgement costs a look at the acknowledging member's waiting keys and what then
//! goes. A member that comes or goes moves only the waiting keys rendezvous hashing moves:
//! those of a member that went are owned again (live members scores each), and each other
//! waiting key costs one score per member that came.

use std::collections::{BTreeSet, HashMap, VecDeque};

use super::member::{Members, Unacked};
use super::seeded::NumberMap;
use crate::keys;

/// How many keys' owners a group remembers between two changes of its members.
const REMEMBERED_OWNERS: usize = 1024;
/// The owner of waiting keys while the group has no live member (members are numbered from 1).
const NOBODY: u64 = 0;

#[derive(Debug, Default)]
pub(super) struct Keyed {
    /// Keys with an event out (delivered, not acknowledged), and the member that has it.
    busy: NumberMap<u64>,
    /// Events waiting for their key's turn, per key in order: their key has an event out, or
    /// its member has no room.
    held: NumberMap<Held>,
    /// Events in `held`.
    held_count: usize,
    /// Keys with events held and none out, by owner, each as (sequence of the first held,
    /// key): they wait only for their owner to have room.
    waiting: NumberMap<BTreeSet<(u64, u64)>>,
    /// Owners whose waiting keys may go now: looked at by the next hand-out.
    may_take: BTreeSet<u64>,
    /// Connected members, as (hash of the name, key): the candidates for owning a key.
    live: Vec<(u64, u64)>,
    /// Owners computed since `live` last changed, by key.
    owners: NumberMap<Option<u64>>,
    /// Rendezvous scores computed, for tests of the cost of a hand-out.
    #[cfg(test)]
    pub(super) scores: std::cell::Cell<u64>,
}

/// The events held for one key.
#[derive(Debug, Default)]
struct Held {
    events: VecDeque<Unacked>,
    /// Its owner while the key is waiting (in `waiting`).
    waiting_for: Option<u64>,
}

impl Keyed {
    /// Events held, over all keys.
    pub(super) fn held_count(&self) -> usize {
        self.held_count
    }

    /// How many keys have an event out (delivered, not acknowledged).
    pub(super) fn busy_count(&self) -> usize {
        self.busy.len()
    }

    /// The lowest sequence held, if any (a look at every event held: for the admin status).
    pub(super) fn oldest_held(&self) -> Option<u64> {
        self.held
            .values()
            .flat_map(|held| held.events.iter())
            .map(|unacked| unacked.event.sequence)
            .min()
    }

    /// Whether `key` has an event out or held: a new event of it waits its turn.
    pub(super) fn waits(&self, key: u64) -> bool {
        self.busy.contains_key(&key) || self.held.contains_key(&key)
    }

    /// The live member that owns `key`: the highest rendezvous score of the key and its name.
    pub(super) fn owner(&mut self, key: u64) -> Option<u64> {
        if let Some(owner) = self.owners.get(&key) {
            return *owner;
        }
        let owner = self.score(key);
        if self.owners.len() >= REMEMBERED_OWNERS {
            self.owners.clear();
        }
        self.owners.insert(key, owner);
        owner
    }

    fn score(&self, key: u64) -> Option<u64> {
        #[cfg(test)]
        self.scores.set(self.scores.get() + self.live.len() as u64);
        self.live
            .iter()
            .max_by_key(|(name, member)| (keys::score(key, *name), *member))
            .map(|&(_, member)| member)
    }

    /// The member a new event of `key` may go to now: its owner, when the key has no event
    /// out or held and the owner has room.
    pub(super) fn free_owner(&mut self, key: u64, members: &Members) -> Option<u64> {
        if self.waits(key) {
            return None;
        }
        self.owner(key).filter(|owner| members.has_room(*owner))
    }

    /// Holds an event of `key` until its turn: behind the key's other held events, or before
    /// them for one given back.
    pub(super) fn hold(&mut self, key: u64, unacked: Unacked, front: bool) {
        self.stop_waiting(key);
        let held = self.held.entry(key).or_default();
        if front {
            held.events.push_front(unacked);
        } else {
            held.events.push_back(unacked);
        }
        self.held_count += 1;
        self.start_waiting(key);
    }

    /// An owner that may take a waiting key's event now, if any is left to look at.
    pub(super) fn next_to_look_at(&mut self) -> Option<u64> {
        self.may_take.pop_first()
    }

    /// Looks at `owner` again on the next hand-out (it stopped with room left).
    pub(super) fn look_again(&mut self, owner: u64) {
        if self.waiting.contains_key(&owner) {
            self.may_take.insert(owner);
        }
    }

    /// Takes the first held event of the key of `owner` that waited the longest, to hand it
    /// out: the key is then busy ([`out`](Self::out)).
    pub(super) fn take_waiting(&mut self, owner: u64) -> Option<Unacked> {
        let keys = self.waiting.get_mut(&owner)?;
        let (_, key) = keys.pop_first()?;
        if keys.is_empty() {
            self.waiting.remove(&owner);
        }
        let held = self.held.get_mut(&key)?;
        held.waiting_for = None;
        let unacked = held.events.pop_front()?;
        if held.events.is_empty() {
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
            self.start_waiting(key);
        }
    }

    /// A member gave back its event of `key` (it left, or its lease ran out): it goes out
    /// again first.
    pub(super) fn given_back(&mut self, key: u64, unacked: Unacked) {
        self.busy.remove(&key);
        self.hold(key, unacked, true);
    }

    /// The connected members, the candidates for owning keys, after a member came or went.
    /// Rendezvous hashing moves only what the change must: the waiting keys of a member that
    /// went get their owner again over every live member, and a waiting key of a member that
    /// stayed moves only to a member that came and outranks it (one score per key and member
    /// that came). The other waiting keys keep their owner.
    pub(super) fn rebuild_live(&mut self, members: &Members) {
        let before: HashMap<u64, u64> = self
            .live
            .iter()
            .map(|&(name, member)| (member, name))
            .collect();
        self.live.clear();
        self.live.extend(
            members
                .iter()
                .filter(|(_, member)| member.sender.is_some())
                .map(|(key, member)| (member.id_hash, key)),
        );
        let came: Vec<(u64, u64)> = self
            .live
            .iter()
            .filter(|(_, member)| !before.contains_key(member))
            .copied()
            .collect();
        let stayed: HashMap<u64, u64> = self
            .live
            .iter()
            .filter(|(_, member)| before.contains_key(member))
            .map(|&(name, member)| (member, name))
            .collect();
        if came.is_empty() && stayed.len() == before.len() {
            return;
        }
        self.owners.clear();
        self.may_take.retain(|owner| stayed.contains_key(owner));
        let owners: Vec<u64> = self.waiting.keys().copied().collect();
        for owner in owners {
            let owner_name = stayed.get(&owner).copied();
            if owner_name.is_some() && came.is_empty() {
                continue;
            }
            let Some(keys) = self.waiting.remove(&owner) else {
                continue;
            };
            let mut kept = BTreeSet::new();
            for (first, key) in keys {
                let new_owner = match owner_name {
                    // Its owner went: over every live member.
                    None => self.owner(key).unwrap_or(NOBODY),
                    Some(name) => self.outranked(key, (name, owner), &came),
                };
                if new_owner == owner {
                    kept.insert((first, key));
                    continue;
                }
                if let Some(held) = self.held.get_mut(&key) {
                    held.waiting_for = Some(new_owner);
                }
                self.waiting
                    .entry(new_owner)
                    .or_default()
                    .insert((first, key));
                if new_owner != NOBODY {
                    self.may_take.insert(new_owner);
                }
            }
            if !kept.is_empty() {
                self.waiting.entry(owner).or_default().extend(kept);
            }
        }
    }

    /// The owner of `key` now, given that `(name, member)` owned it before `came` came: the
    /// highest of their scores, as [`score`](Self::score) would pick over every live member.
    fn outranked(&self, key: u64, (name, member): (u64, u64), came: &[(u64, u64)]) -> u64 {
        #[cfg(test)]
        self.scores.set(self.scores.get() + 1 + came.len() as u64);
        came.iter()
            .chain(std::iter::once(&(name, member)))
            .max_by_key(|(name, member)| (keys::score(key, *name), *member))
            .map_or(member, |&(_, member)| member)
    }

    /// Takes `key` out of the waiting keys.
    fn stop_waiting(&mut self, key: u64) {
        let Some(held) = self.held.get_mut(&key) else {
            return;
        };
        let (Some(owner), Some(first)) = (held.waiting_for.take(), held.events.front()) else {
            return;
        };
        if let Some(keys) = self.waiting.get_mut(&owner) {
            keys.remove(&(first.event.sequence, key));
            if keys.is_empty() {
                self.waiting.remove(&owner);
            }
        }
    }

    /// Makes `key` wait for its owner when it has events held and none out; its owner is
    /// looked at on the next hand-out.
    fn start_waiting(&mut self, key: u64) {
        if self.busy.contains_key(&key) {
            return;
        }
        let Some(first) = self
            .held
            .get(&key)
            .and_then(|held| held.events.front())
            .map(|first| first.event.sequence)
        else {
            return;
        };
        let owner = self.owner(key).unwrap_or(NOBODY);
        if let Some(held) = self.held.get_mut(&key) {
            held.waiting_for = Some(owner);
        }
        self.waiting.entry(owner).or_default().insert((first, key));
        if owner != NOBODY {
            self.may_take.insert(owner);
        }
    }
}
