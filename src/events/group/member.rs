//! A member of a consumer group: what it was handed and has not acknowledged, its stream, its
//! lease; and [`Members`], a group's members with the index of those that have room.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::lease::Lease;
use super::seeded::NumberMap;
use crate::events::filter::EventFilter;
use crate::events::log::Stored;
use crate::peer::PeerIdentity;

/// How many members one group may have, connected or within their lease.
pub(crate) const MAX_MEMBERS: usize = 1024;

/// One event on its way to one member of a group.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) event: Stored,
    /// 1 for the first delivery to the group.
    pub(crate) delivery_count: u32,
    /// Events the group missed right before this one.
    pub(crate) missed: u64,
    /// The epoch whose unseen tail the group lost right before this one (0: none).
    pub(crate) previous_epoch: u64,
}

/// An event the group has not acknowledged, and how often it was delivered so far.
#[derive(Debug, Clone)]
pub(super) struct Unacked {
    pub(super) event: Stored,
    pub(super) deliveries: u32,
    /// Events missed right before this one: reported with every delivery of it until it is
    /// acknowledged, so that a member dying with it does not take the report along.
    pub(super) missed: u64,
    pub(super) previous_epoch: u64,
}

impl Unacked {
    pub(super) fn new(event: Stored) -> Self {
        Self {
            event,
            deliveries: 0,
            missed: 0,
            previous_epoch: 0,
        }
    }
}

/// How a member joins: who it is, its window and lease, and what it already handled.
#[derive(Debug)]
pub(crate) struct Join {
    pub(crate) group: String,
    /// Not empty: the hub refuses an unnamed member, which could never acknowledge.
    pub(crate) member: String,
    pub(crate) window: usize,
    pub(crate) lease: std::time::Duration,
    /// The last event the member handled, when it resumes in the same epoch: acknowledged.
    pub(crate) handled: Option<u64>,
    /// Who joins: only it may take the member over, acknowledge or leave.
    pub(crate) identity: Option<PeerIdentity>,
    /// The member's filter: the group's, or the group is formed with it.
    pub(crate) filter: Option<Arc<EventFilter>>,
    /// The member's address, when its request carried it (for the admin status).
    pub(crate) peer: Option<std::net::SocketAddr>,
}

/// A member's connection, as the hub hands it to the member's stream.
#[derive(Debug)]
pub(crate) struct Joined {
    pub(crate) member: String,
    pub(crate) connection: u64,
    pub(crate) deliveries: mpsc::UnboundedReceiver<Delivery>,
    /// Set when the member's next stream takes over: this one then ends at once, without
    /// sending what it still buffers (the new stream gets it).
    pub(crate) superseded: Arc<AtomicBool>,
}

/// Why an acknowledgement was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AckError {
    UnknownGroup,
    UnknownMember,
    /// The member was joined by another identity.
    NotYours,
    /// From a stream of an earlier life of the member, before its lease ran out: what that
    /// stream had went to the group again.
    EarlierLife {
        connection: u64,
    },
}

/// Why a member could not join.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum JoinError {
    /// No room for another group (or the group to join is gone).
    TooManyGroups,
    TooManyMembers,
    /// The member exists, joined by another identity.
    NotYours,
    /// The group was formed with another filter.
    OtherFilter,
}

/// What a member acknowledges: `handled` and everything delivered to it before, the events
/// of `handled_each` alone; with `leave`, then it leaves.
#[derive(Debug)]
pub(crate) struct Ack<'a> {
    pub(crate) group: &'a str,
    pub(crate) member: &'a str,
    pub(crate) handled: Option<u64>,
    pub(crate) handled_each: &'a [u64],
    pub(crate) leave: bool,
    pub(crate) identity: Option<&'a PeerIdentity>,
    /// The member's stream the acknowledged events came on, when the member says.
    pub(crate) connection: Option<u64>,
}

#[derive(Debug)]
pub(super) struct Member {
    pub(super) id: String,
    /// The hash of `id`, for rendezvous hashing.
    pub(super) id_hash: u64,
    pub(super) identity: Option<PeerIdentity>,
    /// The address of its latest connection, when known.
    pub(super) peer: Option<std::net::SocketAddr>,
    pub(super) window: usize,
    /// Delivered and not acknowledged, in delivery order.
    pub(super) unacked: VecDeque<Unacked>,
    /// The live stream; `None` while the member is away within its lease.
    pub(super) sender: Option<mpsc::UnboundedSender<Delivery>>,
    /// The member's latest connection, live or not.
    pub(super) connection: u64,
    /// The connection this life of the member began with: acknowledgements from earlier
    /// ones are refused.
    pub(super) born_on: u64,
    pub(super) superseded: Arc<AtomicBool>,
    /// How long it may be away, and the timer running while it is.
    pub(super) lease: Lease,
    /// When it was last handed an event: ties in load go to the one served longest ago.
    pub(super) turn: u64,
    /// Its entry in the group's index of members with room, if any.
    ready_as: Option<(usize, u64)>,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.superseded.store(true, Ordering::Release);
    }
}

impl Member {
    pub(super) fn new(join: &Join, connection: u64, superseded: Arc<AtomicBool>) -> Self {
        Self {
            id_hash: crate::keys::hash(join.member.as_bytes()),
            id: join.member.clone(),
            identity: join.identity.clone(),
            peer: join.peer,
            window: join.window,
            unacked: VecDeque::new(),
            sender: None,
            connection,
            born_on: connection,
            superseded,
            lease: Lease::new(join.lease),
            turn: 0,
            ready_as: None,
        }
    }

    /// Takes `handled`, and everything delivered before it, out of the unacknowledged events.
    /// An event not delivered to this member (or already acknowledged) takes nothing.
    pub(super) fn take_through(&mut self, handled: u64) -> Vec<Unacked> {
        match self
            .unacked
            .iter()
            .inspect(|_| looked_at())
            .position(|u| u.event.sequence == handled)
        {
            Some(at) => self.unacked.drain(..=at).collect(),
            None => Vec::new(),
        }
    }

    /// Takes the events of `sequences`, each alone, out of the unacknowledged events: one
    /// pass over them, whatever the number named. Events not delivered to this member (or
    /// already acknowledged) take nothing.
    pub(super) fn take_each(&mut self, sequences: &[u64]) -> Vec<Unacked> {
        if sequences.is_empty() || self.unacked.is_empty() {
            return Vec::new();
        }
        let named: HashSet<u64> = sequences.iter().copied().collect();
        let mut taken = Vec::new();
        self.unacked.retain(|unacked| {
            looked_at();
            let handled = named.contains(&unacked.event.sequence);
            if handled {
                taken.push(unacked.clone());
            }
            !handled
        });
        taken
    }

    pub(super) fn has_room(&self) -> bool {
        self.sender.is_some() && self.unacked.len() < self.window
    }
}

#[cfg(test)]
thread_local! {
    /// Unacknowledged events looked at to acknowledge, on this thread: for tests of the cost
    /// of an acknowledgement.
    pub(super) static LOOKED_AT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn looked_at() {
    #[cfg(test)]
    LOOKED_AT.with(|count| count.set(count.get() + 1));
}

/// A group's members by key, their names, and the index of the live ones with room.
#[derive(Debug, Default)]
pub(super) struct Members {
    by_key: NumberMap<Member>,
    names: HashMap<String, u64>,
    /// Live members with room, the least loaded first, then the one served longest ago:
    /// (unacknowledged, turn, key).
    ready: BTreeSet<(usize, u64, u64)>,
    /// Numbers members and turns.
    counter: u64,
}

impl Members {
    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub(super) fn key_of(&self, name: &str) -> Option<u64> {
        self.names.get(name).copied()
    }

    pub(super) fn get(&self, key: u64) -> Option<&Member> {
        self.by_key.get(&key)
    }

    pub(super) fn get_mut(&mut self, key: u64) -> Option<&mut Member> {
        self.by_key.get_mut(&key)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, &Member)> {
        self.by_key.iter().map(|(key, member)| (*key, member))
    }

    /// Adds a member; returns its key.
    pub(super) fn add(&mut self, member: Member) -> u64 {
        self.counter += 1;
        let key = self.counter;
        self.names.insert(member.id.clone(), key);
        self.by_key.insert(key, member);
        key
    }

    /// Removes a member, out of the index too.
    pub(super) fn remove(&mut self, key: u64) -> Option<Member> {
        let mut member = self.by_key.remove(&key)?;
        self.names.remove(&member.id);
        if let Some((load, turn)) = member.ready_as.take() {
            self.ready.remove(&(load, turn, key));
        }
        Some(member)
    }

    /// The live member with room and the fewest unacknowledged events.
    pub(super) fn least_loaded(&self) -> Option<u64> {
        self.ready.first().map(|&(_, _, key)| key)
    }

    /// Whether any live member has room.
    pub(super) fn any_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    pub(super) fn has_room(&self, key: u64) -> bool {
        self.by_key.get(&key).is_some_and(Member::has_room)
    }

    /// The next turn, for a member just handed an event.
    pub(super) fn next_turn(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// Puts the member where its load and turn say in the index of members with room, or
    /// takes it out.
    pub(super) fn reindex(&mut self, key: u64) {
        let Some(member) = self.by_key.get_mut(&key) else {
            return;
        };
        if let Some((load, turn)) = member.ready_as.take() {
            self.ready.remove(&(load, turn, key));
        }
        let load = member.unacked.len();
        if member.sender.is_some() && load < member.window {
            member.ready_as = Some((load, member.turn));
            self.ready.insert((load, member.turn, key));
        }
    }

    /// Ends every member's stream and empties the index: for shutdown.
    pub(super) fn close(&mut self) {
        self.ready.clear();
        for member in self.by_key.values_mut() {
            member.sender = None;
            member.ready_as = None;
            member.lease.cancel();
        }
    }
}
