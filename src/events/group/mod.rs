//! Consumer groups on a publisher: which member gets each event, what each member has not
//! acknowledged yet, and what goes back to its group when a member leaves or its lease runs out.
//!
//! Plain data under the hub's lock: the hub owns the lock, the lease timers and the streams.
//! A group reads the event log by cursor, as plain subscribers do: it holds no copy of the
//! events it has yet to hand out, only where it stands. Events move to a member's `unacked`
//! queue, in delivery order, when it has room (fewer unacknowledged events than its window),
//! and stay there until the member acknowledges them; at most `retain` events per group are
//! unacknowledged at once. Members with room are kept in an index ordered by load, so that
//! handing out an event costs the same whatever the number of members, and a group that cannot
//! take an event costs `publish` nothing.
//!
//! Events with a key go by key instead: to the live member that scores highest for the key by
//! rendezvous hashing, one event per key at a time. An event whose key has an event out, or whose
//! member has no room, is held (per key, in order) until the previous one is acknowledged or
//! given back; it then goes to whichever member the key belongs to at that time, so a key
//! changes hands only between two events, never with one out. Held events are copies (of the
//! shared bytes), at most `retain` per group; a keyed group that cannot take an event at once
//! reads it into its held events during `publish`, and looks its waiting keys over after each
//! acknowledgement (each key's owner is computed over the live members).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::log::{EventLog, GroupChange, SavedGroup, Stored};
use crate::keys;
use crate::peer::PeerIdentity;

/// The longest a member name or group name may be, in bytes.
pub(crate) const MAX_NAME_LEN: usize = 256;
/// How many consumer groups one event RPC of a publisher serves. Past it, the group that has
/// been without members the longest gives way.
pub(crate) const MAX_GROUPS: usize = 256;
/// How long a group without members keeps its place (and its events) for the next member.
pub(crate) const IDLE_GROUP_TTL: Duration = Duration::from_secs(3600);
/// How far ahead of the events handed out a log that keeps groups records that they may have
/// been: after a crash, at most this many events go out marked as redeliveries that were not.
const MARK_AHEAD: u64 = 16;

/// How many members one group may have, connected or within their lease.
pub(crate) const MAX_MEMBERS: usize = 1024;
/// A member's window when its `Subscribe` leaves `max_unacknowledged` at 0.
pub(crate) const DEFAULT_WINDOW: usize = 256;
/// A member's lease when its `Subscribe` leaves `lease_ms` at 0.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(5);
/// The longest lease a member may ask for.
pub(crate) const MAX_LEASE: Duration = Duration::from_secs(600);

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
struct Unacked {
    event: Stored,
    deliveries: u32,
    /// Events missed right before this one: reported with every delivery of it until it is
    /// acknowledged, so that a member dying with it does not take the report along.
    missed: u64,
    previous_epoch: u64,
}

impl Unacked {
    fn new(event: Stored) -> Self {
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
    pub(crate) lease: Duration,
    /// The last event the member handled, when it resumes in the same epoch: acknowledged.
    pub(crate) handled: Option<u64>,
    /// Who joins: only it may take the member over, acknowledge or leave.
    pub(crate) identity: Option<PeerIdentity>,
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
}

/// Why a member could not join.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum JoinError {
    TooManyGroups,
    TooManyMembers,
    /// The member exists, joined by another identity.
    NotYours,
}

#[derive(Debug)]
pub(crate) struct Groups {
    by_name: HashMap<String, Group>,
    /// The event RPC's `retain`: the most events a group holds unacknowledged.
    capacity: usize,
    /// Numbers member connections, so that a stale disconnect or lease timer is told apart
    /// from the member's current connection.
    connections: u64,
    /// Where one event read from the log lands on its way to a member.
    scratch: VecDeque<Stored>,
    /// Whether changes are recorded (for a log that keeps groups).
    journaling: bool,
    /// Changes not yet handed to the log.
    changes: Vec<GroupChange>,
}

#[derive(Debug)]
struct Group {
    name: String,
    /// The sequence of the next event in the log this group has not handed out.
    next: u64,
    /// Events up to this one may have been handed out, as far as the log knows (see
    /// [`Group::announce`]).
    handed_out: u64,
    /// Events members gave back (they left, or their lease ran out), handed out again
    /// before the log's, in order.
    again: VecDeque<Unacked>,
    members: HashMap<u64, Member>,
    /// Member keys by name.
    names: HashMap<String, u64>,
    /// Live members with room, the least loaded first, then the one served longest ago:
    /// (unacknowledged, turn, key).
    ready: BTreeSet<(usize, u64, u64)>,
    /// Numbers members and deliveries.
    counter: u64,
    /// Events missed right before the next delivery, to report with it.
    missed: u64,
    /// The epoch whose unseen tail the group lost, reported with the next delivery.
    previous_epoch: u64,
    /// Delivered and not yet acknowledged, over all members: at most the capacity.
    in_flight: usize,
    /// Since when the group has had no member.
    idle_since: Option<Instant>,
    /// Deliveries beyond the first, for metrics.
    redelivered: u64,
    /// The keys handled one event at a time.
    keyed: Keyed,
}

/// What a group keeps to hand out events with keys.
#[derive(Debug, Default)]
struct Keyed {
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

#[derive(Debug)]
struct Member {
    id: String,
    /// The hash of `id`, for rendezvous hashing.
    id_hash: u64,
    identity: Option<PeerIdentity>,
    window: usize,
    lease: Duration,
    /// Delivered and not acknowledged, in delivery order.
    unacked: VecDeque<Unacked>,
    /// The live stream; `None` while the member is away within its lease.
    sender: Option<mpsc::UnboundedSender<Delivery>>,
    /// The member's latest connection, live or not.
    connection: u64,
    superseded: Arc<AtomicBool>,
    /// The lease timer running while the member is away.
    lease_timer: Option<tokio::task::AbortHandle>,
    /// When it was last handed an event: ties in load go to the one served longest ago.
    turn: u64,
    /// Its entry in the group's `ready` index, if any.
    ready_as: Option<(usize, u64)>,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.superseded.store(true, Ordering::Release);
        if let Some(timer) = self.lease_timer.take() {
            timer.abort();
        }
    }
}

impl Groups {
    /// No groups yet; each will hold at most `capacity` events unacknowledged.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            by_name: HashMap::new(),
            capacity: capacity.max(1),
            connections: 0,
            scratch: VecDeque::with_capacity(1),
            journaling: false,
            changes: Vec::new(),
        }
    }

    /// How many events were delivered again since the last call.
    pub(crate) fn take_redelivered(&mut self) -> u64 {
        self.by_name
            .values_mut()
            .map(|g| std::mem::take(&mut g.redelivered))
            .sum()
    }

    pub(crate) fn contains(&self, group: &str) -> bool {
        self.by_name.contains_key(group)
    }

    /// Adds a group that starts at sequence `next` of the log, having missed `missed` events
    /// and the tail of `previous_epoch` (0: none). Groups without members past their time,
    /// and if there is still no room the one without members the longest, make room; their
    /// events are lost.
    pub(crate) fn create(
        &mut self,
        group: &str,
        next: u64,
        missed: u64,
        previous_epoch: u64,
    ) -> Result<(), JoinError> {
        let now = Instant::now();
        self.forget_idle(now);
        if self.by_name.len() >= MAX_GROUPS {
            let longest_idle = self
                .by_name
                .iter()
                .filter_map(|(name, g)| g.idle_since.map(|since| (since, name)))
                .min()
                .map(|(_, name)| name.clone());
            match longest_idle {
                Some(name) => self.forget(&name, "to make room for a new group"),
                None => return Err(JoinError::TooManyGroups),
            }
        }
        self.by_name.insert(
            group.to_owned(),
            Group {
                name: group.to_owned(),
                handed_out: 0,
                next,
                again: VecDeque::new(),
                members: HashMap::new(),
                names: HashMap::new(),
                ready: BTreeSet::new(),
                counter: 0,
                missed,
                previous_epoch,
                in_flight: 0,
                idle_since: Some(now),
                redelivered: 0,
                keyed: Keyed::default(),
            },
        );
        if self.journaling {
            self.changes.push(GroupChange::Created {
                group: group.to_owned(),
                start: next,
            });
        }
        Ok(())
    }

    /// Records changes from now on, for a log that keeps groups.
    pub(crate) fn journal(&mut self) {
        self.journaling = true;
    }

    /// The changes since the last call, for the log.
    pub(crate) fn take_changes(&mut self) -> Vec<GroupChange> {
        std::mem::take(&mut self.changes)
    }

    /// Forms again, without members, the groups a log kept: each is owed the events of the log
    /// from its start that it did not acknowledge (those no longer retained are reported
    /// missed). Those it may have handed out already go out again marked as redeliveries.
    pub(crate) fn restore(&mut self, saved: Vec<(String, SavedGroup)>, log: &dyn EventLog) {
        let now = Instant::now();
        for (name, saved) in saved.into_iter().take(MAX_GROUPS) {
            let from = saved.start.max(log.oldest());
            let mut owed = VecDeque::new();
            let mut next = from;
            while next <= log.latest() {
                let read = log.read(next, 256, &mut self.scratch);
                if read.next == next {
                    break;
                }
                next = read.next;
                for event in self.scratch.drain(..) {
                    if !saved.acked.contains(&event.sequence) {
                        let mut unacked = Unacked::new(event);
                        if unacked.event.sequence <= saved.handed_out {
                            unacked.deliveries = 1;
                        }
                        owed.push_back(unacked);
                    }
                }
            }
            tracing::info!(group = %crate::text::shown(&name), owed = owed.len(), "consumer group restored from the event log");
            self.by_name.insert(
                name.clone(),
                Group {
                    name,
                    handed_out: saved.handed_out,
                    next: log.latest() + 1,
                    again: owed,
                    members: HashMap::new(),
                    names: HashMap::new(),
                    ready: BTreeSet::new(),
                    counter: 0,
                    missed: saved.missed + (from - saved.start.min(from)),
                    previous_epoch: 0,
                    in_flight: 0,
                    idle_since: Some(now),
                    redelivered: 0,
                    keyed: Keyed::default(),
                },
            );
        }
    }

    /// Forgets the groups that have had no member for longer than [`IDLE_GROUP_TTL`].
    fn forget_idle(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .by_name
            .iter()
            .filter(|(_, g)| {
                g.idle_since
                    .is_some_and(|since| now - since >= IDLE_GROUP_TTL)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in expired {
            self.forget(&name, "after an hour without members");
        }
    }

    fn forget(&mut self, name: &str, why: &str) {
        if self.by_name.remove(name).is_some() {
            if self.journaling {
                self.changes.push(GroupChange::Forgotten {
                    group: name.to_owned(),
                });
            }
            tracing::info!(group = %crate::text::shown(name), why, "consumer group without members forgotten; what it had yet to deliver is lost");
        }
    }

    /// Joins (or rejoins) a member to an existing group: a rejoining member gets its
    /// unacknowledged events again, after those it says it handled.
    pub(crate) fn join(&mut self, join: Join, log: &mut dyn EventLog) -> Result<Joined, JoinError> {
        let connection = self.connections + 1;
        let Some(group) = self.by_name.get_mut(&join.group) else {
            // The hub creates a group before joining it.
            return Err(JoinError::TooManyGroups);
        };
        let existing = group.names.get(&join.member).copied();
        if existing.is_none() && group.members.len() >= MAX_MEMBERS {
            return Err(JoinError::TooManyMembers);
        }
        if existing.is_some_and(|key| group.members[&key].identity != join.identity) {
            return Err(JoinError::NotYours);
        }
        self.connections = connection;
        let (sender, deliveries) = mpsc::unbounded_channel();
        let superseded = Arc::new(AtomicBool::new(false));
        let key = existing.unwrap_or_else(|| {
            group.counter += 1;
            let key = group.counter;
            group.names.insert(join.member.clone(), key);
            group.members.insert(
                key,
                Member {
                    id_hash: keys::hash(join.member.as_bytes()),
                    id: join.member.clone(),
                    identity: join.identity.clone(),
                    window: join.window,
                    lease: join.lease,
                    unacked: VecDeque::new(),
                    sender: None,
                    connection,
                    superseded: superseded.clone(),
                    lease_timer: None,
                    turn: 0,
                    ready_as: None,
                },
            );
            key
        });
        group.idle_since = None;
        let member = group.members.get_mut(&key).expect("inserted above");
        member.window = join.window;
        member.lease = join.lease;
        member.connection = connection;
        // A previous stream of the same member, still open, ends here, and what it still
        // buffers is delivered again below, on this one.
        member.sender = Some(sender);
        if !Arc::ptr_eq(&member.superseded, &superseded) {
            std::mem::replace(&mut member.superseded, superseded.clone())
                .store(true, Ordering::Release);
        }
        if let Some(timer) = member.lease_timer.take() {
            timer.abort();
        }
        let acked = join
            .handled
            .map(|handled| member.take_through(handled))
            .unwrap_or_default();
        let again: Vec<Unacked> = member.unacked.drain(..).collect();
        group.settle(key, acked, self.journaling.then_some(&mut self.changes));
        group.in_flight -= again.len();
        group.rebuild_live();
        for unacked in again {
            group.deliver(key, unacked);
        }
        group.reindex(key);
        group.dispatch(log, self.capacity, &mut self.scratch);
        Ok(Joined {
            member: join.member,
            connection,
            deliveries,
            superseded,
        })
    }

    /// Hands a newly published event (already in `log`) to every group that can take it
    /// now: a group whose members have no room, or that is still behind, gets it later from
    /// the log, so that it costs `publish` nothing.
    pub(crate) fn offer(&mut self, event: &Stored, log: &mut dyn EventLog) {
        for group in self.by_name.values_mut() {
            let in_turn = group.next == event.sequence
                && group.again.is_empty()
                && group.in_flight < self.capacity;
            let to = match event.key {
                None => group.ready.first().map(|&(_, _, member)| member),
                Some(key) => group.free_owner(key),
            };
            match (in_turn, to) {
                (true, Some(member)) => {
                    group.next += 1;
                    group.announce(event.sequence, log);
                    group.deliver(member, Unacked::new(event.clone()));
                }
                // An event with a key waits for nobody's acknowledgement but its key's:
                // behind others that wait, it is read into the held ones now.
                _ if event.key.is_some() => {
                    group.dispatch(log, self.capacity, &mut self.scratch);
                }
                _ => {}
            }
        }
    }

    /// Acknowledges `handled` (and every event delivered to the member before it); with
    /// `leave`, then removes the member and hands its other events to the rest of the group.
    /// Returns how many events the member still has unacknowledged.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn acknowledge(
        &mut self,
        group: &str,
        member: &str,
        handled: Option<u64>,
        handled_each: &[u64],
        leave: bool,
        identity: Option<&PeerIdentity>,
        log: &mut dyn EventLog,
    ) -> Result<u64, AckError> {
        let group = self.by_name.get_mut(group).ok_or(AckError::UnknownGroup)?;
        let key = *group.names.get(member).ok_or(AckError::UnknownMember)?;
        if group.members[&key].identity.as_ref() != identity {
            return Err(AckError::NotYours);
        }
        let member = group.members.get_mut(&key).expect("named members exist");
        let mut acked = handled
            .map(|handled| member.take_through(handled))
            .unwrap_or_default();
        acked.extend(
            handled_each
                .iter()
                .filter_map(|sequence| member.take_one(*sequence)),
        );
        if !acked.is_empty() {
            group.settle(key, acked, self.journaling.then_some(&mut self.changes));
            group.reindex(key);
        }
        if leave {
            group.release(key);
        }
        group.dispatch(log, self.capacity, &mut self.scratch);
        Ok(group
            .members
            .get(&key)
            .map_or(0, |member| member.unacked.len() as u64))
    }

    /// The member's stream `connection` ended. Returns its lease when that was the member's
    /// current connection: the hub then starts a timer that calls [`expire`](Self::expire),
    /// and hands it over with [`set_lease_timer`](Self::set_lease_timer).
    pub(crate) fn disconnect(
        &mut self,
        group: &str,
        member: &str,
        connection: u64,
        log: &mut dyn EventLog,
    ) -> Option<Duration> {
        let group = self.by_name.get_mut(group)?;
        let key = *group.names.get(member)?;
        let member = group.members.get_mut(&key)?;
        if member.connection != connection {
            return None;
        }
        member.sender = None;
        let lease = member.lease;
        group.reindex(key);
        // Its keys without an event out belong to the others now.
        group.rebuild_live();
        group.dispatch(log, self.capacity, &mut self.scratch);
        Some(lease)
    }

    /// Keeps the lease timer of a member that is away, so that it is cancelled when the member
    /// comes back or goes: one timer per member, however often it reconnects.
    pub(crate) fn set_lease_timer(
        &mut self,
        group: &str,
        member: &str,
        connection: u64,
        timer: tokio::task::AbortHandle,
    ) {
        match self.away(group, member, connection) {
            Some(member) => {
                if let Some(old) = member.lease_timer.replace(timer) {
                    old.abort();
                }
            }
            // Back already, or gone.
            None => timer.abort(),
        }
    }

    /// The member `member` of `group`, if it is away since its connection `connection` ended.
    fn away(&mut self, group: &str, member: &str, connection: u64) -> Option<&mut Member> {
        let group = self.by_name.get_mut(group)?;
        let key = group.names.get(member)?;
        group
            .members
            .get_mut(key)
            .filter(|m| m.connection == connection && m.sender.is_none())
    }

    /// The lease of the member's `connection` ran out: unless it came back meanwhile, its
    /// unacknowledged events go to the other members. Returns whether it was let go.
    pub(crate) fn expire(
        &mut self,
        group: &str,
        member: &str,
        connection: u64,
        log: &mut dyn EventLog,
    ) -> bool {
        if self.away(group, member, connection).is_none() {
            return false;
        }
        let group = self.by_name.get_mut(group).expect("found above");
        let key = group.names[member];
        group.release(key);
        group.dispatch(log, self.capacity, &mut self.scratch);
        true
    }

    /// Ends every member's stream after what was already delivered to it, and cancels every
    /// lease timer: for shutdown.
    pub(crate) fn close(&mut self) {
        for group in self.by_name.values_mut() {
            group.ready.clear();
            group.keyed.live.clear();
            for member in group.members.values_mut() {
                member.sender = None;
                member.ready_as = None;
                if let Some(timer) = member.lease_timer.take() {
                    timer.abort();
                }
            }
        }
    }

    /// Whether every group that has members has had every event of `log` acknowledged.
    /// Groups without members are not waited for (nobody would acknowledge): see
    /// [`abandoned`](Self::abandoned).
    pub(crate) fn settled(&self, log: &dyn EventLog) -> bool {
        self.by_name
            .values()
            .all(|group| group.members.is_empty() || (group.owed(log) == 0 && group.in_flight == 0))
    }

    /// Groups without members, and how many events each has yet to deliver.
    pub(crate) fn abandoned(&self, log: &dyn EventLog) -> Vec<(String, u64)> {
        self.by_name
            .iter()
            .filter(|(_, group)| group.members.is_empty())
            .map(|(name, group)| (name.clone(), group.owed(log)))
            .filter(|(_, owed)| *owed > 0)
            .collect()
    }

    #[cfg(test)]
    pub(crate) fn unacked(&self, group: &str, member: &str) -> Vec<u64> {
        let group = &self.by_name[group];
        group
            .names
            .get(member)
            .map(|key| {
                group.members[key]
                    .unacked
                    .iter()
                    .map(|u| u.event.sequence)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Member {
    /// Takes `handled`, and everything delivered before it, out of the unacknowledged events.
    /// An event not delivered to this member (or already acknowledged) takes nothing.
    fn take_through(&mut self, handled: u64) -> Vec<Unacked> {
        match self
            .unacked
            .iter()
            .position(|u| u.event.sequence == handled)
        {
            Some(at) => self.unacked.drain(..=at).collect(),
            None => Vec::new(),
        }
    }

    /// Takes event `sequence` alone out of the unacknowledged events, if it is there.
    fn take_one(&mut self, sequence: u64) -> Option<Unacked> {
        let at = self
            .unacked
            .iter()
            .position(|u| u.event.sequence == sequence)?;
        self.unacked.remove(at)
    }

    fn has_room(&self) -> bool {
        self.sender.is_some() && self.unacked.len() < self.window
    }
}

impl Group {
    /// Events the group has yet to hand out: given back, and still in the log.
    fn owed(&self, log: &dyn EventLog) -> u64 {
        let unread = (log.latest() + 1).saturating_sub(self.next.max(log.oldest()));
        (self.again.len() + self.keyed.held_count) as u64 + unread
    }

    /// Hands out what the group owes to members with room, the least loaded first, while it
    /// holds fewer than `capacity` events unacknowledged. Events that left the log before the
    /// group got to them are reported missed with the next delivery.
    fn dispatch(
        &mut self,
        log: &mut dyn EventLog,
        capacity: usize,
        scratch: &mut VecDeque<Stored>,
    ) {
        self.dispatch_held(log, capacity);
        self.dispatch_owed(log, capacity, scratch);
    }

    /// Hands out the events given back and those still in the log, in order, holding those
    /// whose key must wait.
    fn dispatch_owed(
        &mut self,
        log: &mut dyn EventLog,
        capacity: usize,
        scratch: &mut VecDeque<Stored>,
    ) {
        while self.in_flight < capacity {
            if self.ready.is_empty() {
                return;
            }
            let unacked = match self.again.pop_front() {
                Some(unacked) => unacked,
                None => {
                    // Held events are read from the log and kept: as many as may be out.
                    if self.next > log.latest() || self.keyed.held_count >= capacity {
                        return;
                    }
                    let read = log.read(self.next, 1, scratch);
                    self.missed += read.missed;
                    self.next = read.next;
                    match scratch.pop_front() {
                        Some(event) => Unacked::new(event),
                        None => continue,
                    }
                }
            };
            let to = match unacked.event.key {
                None => self.ready.first().map(|&(_, _, member)| member),
                Some(key) => {
                    if self.keyed.busy.contains_key(&key) || self.keyed.held.contains_key(&key) {
                        self.hold(key, unacked, false);
                        continue;
                    }
                    match self.owner(key) {
                        Some(owner) if self.members[&owner].has_room() => Some(owner),
                        Some(_) => {
                            self.hold(key, unacked, false);
                            continue;
                        }
                        None => None,
                    }
                }
            };
            let Some(member) = to else {
                self.again.push_front(unacked);
                return;
            };
            if unacked.deliveries == 0 {
                self.announce(unacked.event.sequence, log);
            }
            self.deliver(member, unacked);
        }
    }

    /// Hands out the held events whose key has none out, to their key's member if it has room,
    /// the longest held first.
    fn dispatch_held(&mut self, log: &mut dyn EventLog, capacity: usize) {
        if self.keyed.runnable.is_empty() || self.ready.is_empty() {
            return;
        }
        let runnable: Vec<(u64, u64)> = self.keyed.runnable.iter().copied().collect();
        for (sequence, key) in runnable {
            if self.in_flight >= capacity || self.ready.is_empty() {
                return;
            }
            let Some(owner) = self.owner(key) else {
                return;
            };
            if !self.members[&owner].has_room() {
                continue;
            }
            self.keyed.runnable.remove(&(sequence, key));
            let Some(held) = self.keyed.held.get_mut(&key) else {
                continue;
            };
            let Some(unacked) = held.pop_front() else {
                continue;
            };
            if held.is_empty() {
                self.keyed.held.remove(&key);
            }
            self.keyed.held_count -= 1;
            if unacked.deliveries == 0 {
                self.announce(unacked.event.sequence, log);
            }
            // Marks the key busy: it is runnable again once this event is acknowledged.
            self.deliver(owner, unacked);
        }
    }

    /// The live member that owns `key`: the highest rendezvous score of the key and its name.
    fn owner(&self, key: u64) -> Option<u64> {
        self.keyed
            .live
            .iter()
            .max_by_key(|(name, member)| (keys::score(key, *name), *member))
            .map(|&(_, member)| member)
    }

    /// The member a new event of `key` may go to now: its owner, when the key has no event
    /// out or held and the owner has room.
    fn free_owner(&self, key: u64) -> Option<u64> {
        if self.keyed.busy.contains_key(&key) || self.keyed.held.contains_key(&key) {
            return None;
        }
        self.owner(key)
            .filter(|owner| self.members[owner].has_room())
    }

    /// Holds an event of `key` until its turn: behind the key's other held events, or before
    /// them for one given back.
    fn hold(&mut self, key: u64, unacked: Unacked, front: bool) {
        self.unmark_runnable(key);
        let held = self.keyed.held.entry(key).or_default();
        if front {
            held.push_front(unacked);
        } else {
            held.push_back(unacked);
        }
        self.keyed.held_count += 1;
        self.mark_runnable(key);
    }

    /// Takes `key` out of the runnable keys.
    fn unmark_runnable(&mut self, key: u64) {
        if let Some(first) = self.keyed.held.get(&key).and_then(VecDeque::front) {
            self.keyed.runnable.remove(&(first.event.sequence, key));
        }
    }

    /// Puts `key` in the runnable keys when it has events held and none out.
    fn mark_runnable(&mut self, key: u64) {
        if self.keyed.busy.contains_key(&key) {
            return;
        }
        if let Some(first) = self.keyed.held.get(&key).and_then(VecDeque::front) {
            self.keyed.runnable.insert((first.event.sequence, key));
        }
    }

    /// Events `member` acknowledged: no longer in flight, and their keys free for their next.
    fn settle(&mut self, member: u64, acked: Vec<Unacked>, journal: Option<&mut Vec<GroupChange>>) {
        self.in_flight -= acked.len();
        for unacked in &acked {
            if let Some(key) = unacked.event.key {
                if self.keyed.busy.get(&key) == Some(&member) {
                    self.keyed.busy.remove(&key);
                    self.mark_runnable(key);
                }
            }
        }
        if let Some(changes) = journal {
            if !acked.is_empty() {
                changes.push(GroupChange::Acked {
                    group: self.name.clone(),
                    sequences: acked.iter().map(|u| u.event.sequence).collect(),
                });
            }
        }
    }

    /// The connected members, the candidates for owning keys, after a member came or went.
    fn rebuild_live(&mut self) {
        self.keyed.live.clear();
        self.keyed.live.extend(
            self.members
                .iter()
                .filter(|(_, member)| member.sender.is_some())
                .map(|(key, member)| (member.id_hash, *key)),
        );
    }

    /// Before event `sequence` is first handed to a member, makes sure a log that keeps
    /// groups has recorded that it may have been: after a restart it then goes out again
    /// marked as a redelivery. Recorded [`MARK_AHEAD`] events ahead, so that one record covers
    /// many deliveries.
    fn announce(&mut self, sequence: u64, log: &mut dyn EventLog) {
        if sequence > self.handed_out && log.keeps_groups() {
            self.handed_out = sequence + MARK_AHEAD;
            log.record_groups(&[GroupChange::HandedOut {
                group: self.name.clone(),
                through: self.handed_out,
            }]);
        }
    }

    fn deliver(&mut self, key: u64, mut unacked: Unacked) {
        unacked.deliveries = unacked.deliveries.saturating_add(1);
        if unacked.deliveries > 1 {
            self.redelivered += 1;
        }
        unacked.missed += std::mem::take(&mut self.missed);
        if self.previous_epoch != 0 {
            unacked.previous_epoch = std::mem::take(&mut self.previous_epoch);
        }
        self.in_flight += 1;
        self.counter += 1;
        if let Some(event_key) = unacked.event.key {
            self.keyed.busy.insert(event_key, key);
        }
        let member = self.members.get_mut(&key).expect("delivering to a member");
        member.turn = self.counter;
        if let Some(sender) = &member.sender {
            let delivery = Delivery {
                event: unacked.event.clone(),
                delivery_count: unacked.deliveries,
                missed: unacked.missed,
                previous_epoch: unacked.previous_epoch,
            };
            if sender.send(delivery).is_err() {
                // The stream is gone and its disconnect is on its way; the event stays
                // unacknowledged with the member, like any other in flight.
                member.sender = None;
                member.unacked.push_back(unacked);
                self.reindex(key);
                self.rebuild_live();
                return;
            }
        }
        member.unacked.push_back(unacked);
        self.reindex(key);
    }

    /// Puts the member where its load and turn say in the index of members with room, or
    /// takes it out.
    fn reindex(&mut self, key: u64) {
        let Some(member) = self.members.get_mut(&key) else {
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

    /// Removes a member; its unacknowledged events go back to the front of the group's queue.
    fn release(&mut self, key: u64) {
        let Some(mut member) = self.members.remove(&key) else {
            return;
        };
        self.names.remove(&member.id);
        if let Some((load, turn)) = member.ready_as.take() {
            self.ready.remove(&(load, turn, key));
        }
        let unacked = std::mem::take(&mut member.unacked);
        self.in_flight -= unacked.len();
        for unacked in unacked.into_iter().rev() {
            match unacked.event.key {
                // Its key's first: the key had no other event out.
                Some(key) => {
                    self.keyed.busy.remove(&key);
                    self.hold(key, unacked, true);
                }
                None => self.again.push_front(unacked),
            }
        }
        self.rebuild_live();
        if self.members.is_empty() {
            self.idle_since = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod keyed_test;
#[cfg(test)]
mod test;
