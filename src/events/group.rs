//! Consumer groups on a publisher: which member gets each event, what each member has not
//! acknowledged yet, and what goes back to its group when a member leaves or its lease runs out.
//!
//! Plain data under the hub's lock: the hub owns the lock, the lease timers and the streams.
//! Per group, events wait in `pending` until a live member has room (fewer unacknowledged
//! events than its window), then move to that member's `unacked` queue, in delivery order,
//! until the member acknowledges them. The pending queue holds at most the event RPC's `retain`
//! events; what falls out is reported to the group as missed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::mpsc;

use super::log::Stored;

/// The longest a member name or group name may be, in bytes.
pub(crate) const MAX_NAME_LEN: usize = 256;
/// How many consumer groups one event RPC of a publisher serves, each holding up to `retain`
/// events for its members: a bound on memory. Past it, the group that has been without members
/// the longest gives way.
pub(crate) const MAX_GROUPS: usize = 256;
/// How long a group without members keeps its events for the next member to join.
pub(crate) const IDLE_GROUP_TTL: Duration = Duration::from_secs(3600);
/// How many members one group may have, connected or within their lease.
pub(crate) const MAX_MEMBERS: usize = 1024;
/// A member's window when its `Subscribe` leaves `max_unacknowledged` at 0.
pub(crate) const DEFAULT_WINDOW: usize = 256;
/// A member's lease when its `Subscribe` leaves `lease_ms` at 0.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(5);
/// The longest lease a member may ask for.
pub(crate) const MAX_LEASE: Duration = Duration::from_secs(600);

/// A name from the network, cut short for a status message (which travels as a header).
pub(crate) fn shown(name: &str) -> String {
    match name.char_indices().nth(64) {
        Some((at, _)) => format!("{}...", &name[..at]),
        None => name.to_owned(),
    }
}

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
}

/// Why a member could not join.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum JoinError {
    TooManyGroups,
    TooManyMembers,
}

#[derive(Debug)]
pub(crate) struct Groups {
    by_name: HashMap<String, Group>,
    /// The event RPC's `retain`: the most events a group holds, pending and unacknowledged.
    capacity: usize,
    /// Numbers member connections, so that a stale disconnect or lease timer is told apart
    /// from the member's current connection.
    connections: u64,
    /// Deliveries beyond the first since [`take_redelivered`](Self::take_redelivered).
    redelivered: u64,
}

#[derive(Debug)]
struct Group {
    pending: VecDeque<Unacked>,
    members: Vec<Member>,
    /// Events that fell out of `pending`, reported with the next delivery.
    missed: u64,
    /// The epoch whose unseen tail the group lost, reported with the next delivery.
    previous_epoch: u64,
    /// Delivered and not yet acknowledged, over all members: at most the capacity.
    in_flight: usize,
    /// Since when the group has had no member.
    idle_since: Option<Instant>,
    /// Where the search for the least loaded member starts, so that ties take turns.
    next_pick: usize,
    /// Deliveries beyond the first, for metrics.
    redelivered: u64,
}

#[derive(Debug)]
struct Member {
    id: String,
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
    /// No groups yet; each will hold at most `capacity` events.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            by_name: HashMap::new(),
            capacity: capacity.max(1),
            connections: 0,
            redelivered: 0,
        }
    }

    /// How many events were delivered again since the last call.
    pub(crate) fn take_redelivered(&mut self) -> u64 {
        let groups: u64 = self
            .by_name
            .values_mut()
            .map(|g| std::mem::take(&mut g.redelivered))
            .sum();
        std::mem::take(&mut self.redelivered) + groups
    }

    pub(crate) fn contains(&self, group: &str) -> bool {
        self.by_name.contains_key(group)
    }

    /// Adds a group that starts with `backlog` (events it has yet to get), `missed`, and the
    /// epoch whose tail it lost (0: none). Groups without members past their time, and if
    /// there is still no room the one without members the longest, make room; their events
    /// are lost.
    pub(crate) fn create(
        &mut self,
        group: &str,
        backlog: VecDeque<Stored>,
        missed: u64,
        previous_epoch: u64,
    ) -> Result<(), JoinError> {
        self.forget_idle(Instant::now());
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
        let mut pending: VecDeque<Unacked> = backlog.into_iter().map(Unacked::new).collect();
        let mut missed = missed;
        while pending.len() > self.capacity {
            pending.pop_front();
            missed += 1;
        }
        self.by_name.insert(
            group.to_owned(),
            Group {
                pending,
                members: Vec::new(),
                missed,
                previous_epoch,
                in_flight: 0,
                idle_since: Some(Instant::now()),
                next_pick: 0,
                redelivered: 0,
            },
        );
        Ok(())
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
        if let Some(group) = self.by_name.remove(name) {
            if !group.pending.is_empty() {
                tracing::warn!(group = %shown(name), events = group.pending.len(), why, "consumer group without members forgotten; its events are lost");
            }
        }
    }

    /// Joins (or rejoins) a member to an existing group: a rejoining member gets its
    /// unacknowledged events again, after those it says it handled.
    pub(crate) fn join(&mut self, join: Join) -> Result<Joined, JoinError> {
        let connection = self.connections + 1;
        let capacity = self.capacity;
        let Some(group) = self.by_name.get_mut(&join.group) else {
            // The hub creates a group before joining it.
            return Err(JoinError::TooManyGroups);
        };
        let id = join.member;
        let existing = group.members.iter().position(|m| m.id == id);
        if existing.is_none() && group.members.len() >= MAX_MEMBERS {
            return Err(JoinError::TooManyMembers);
        }
        self.connections = connection;
        let (sender, deliveries) = mpsc::unbounded_channel();
        let superseded = Arc::new(AtomicBool::new(false));
        let index = match existing {
            Some(index) => index,
            None => {
                group.members.push(Member {
                    id: id.clone(),
                    window: join.window,
                    lease: join.lease,
                    unacked: VecDeque::new(),
                    sender: None,
                    connection,
                    superseded: superseded.clone(),
                    lease_timer: None,
                });
                group.members.len() - 1
            }
        };
        group.idle_since = None;
        let member = &mut group.members[index];
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
        if let Some(handled) = join.handled {
            group.in_flight -= member.acknowledge(handled);
        }
        let again: Vec<Unacked> = group.members[index].unacked.drain(..).collect();
        group.in_flight -= again.len();
        for unacked in again {
            group.deliver(index, unacked);
        }
        group.settle(capacity);
        Ok(Joined {
            member: id,
            connection,
            deliveries,
            superseded,
        })
    }

    /// Hands a newly published event to every group.
    pub(crate) fn offer(&mut self, event: &Stored) {
        let capacity = self.capacity;
        for group in self.by_name.values_mut() {
            group.pending.push_back(Unacked::new(event.clone()));
            group.settle(capacity);
        }
    }

    /// Acknowledges `handled` (and every event delivered to the member before it); with
    /// `leave`, then removes the member and hands its other events to the rest of the group.
    /// Returns how many events the member still has unacknowledged.
    pub(crate) fn acknowledge(
        &mut self,
        group: &str,
        member: &str,
        handled: Option<u64>,
        leave: bool,
    ) -> Result<u64, AckError> {
        let capacity = self.capacity;
        let group = self.by_name.get_mut(group).ok_or(AckError::UnknownGroup)?;
        let index = group
            .members
            .iter()
            .position(|m| m.id == member)
            .ok_or(AckError::UnknownMember)?;
        if let Some(handled) = handled {
            group.in_flight -= group.members[index].acknowledge(handled);
        }
        if leave {
            group.release(index);
            group.settle(capacity);
            return Ok(0);
        }
        group.settle(capacity);
        Ok(group.members[index].unacked.len() as u64)
    }

    /// The member's stream `connection` ended. Returns its lease when that was the member's
    /// current connection: the hub then starts a timer that calls [`expire`](Self::expire),
    /// and hands it over with [`set_lease_timer`](Self::set_lease_timer).
    pub(crate) fn disconnect(
        &mut self,
        group: &str,
        member: &str,
        connection: u64,
    ) -> Option<Duration> {
        let member = self
            .by_name
            .get_mut(group)?
            .members
            .iter_mut()
            .find(|m| m.id == member && m.connection == connection)?;
        member.sender = None;
        Some(member.lease)
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
        let member = self.by_name.get_mut(group).and_then(|g| {
            g.members
                .iter_mut()
                .find(|m| m.id == member && m.connection == connection && m.sender.is_none())
        });
        match member {
            Some(member) => {
                if let Some(old) = member.lease_timer.replace(timer) {
                    old.abort();
                }
            }
            // Back already, or gone.
            None => timer.abort(),
        }
    }

    /// The lease of the member's `connection` ran out: unless it came back meanwhile, its
    /// unacknowledged events go to the other members. Returns whether it was let go.
    pub(crate) fn expire(&mut self, group: &str, member: &str, connection: u64) -> bool {
        let capacity = self.capacity;
        let Some(group) = self.by_name.get_mut(group) else {
            return false;
        };
        let Some(index) = group
            .members
            .iter()
            .position(|m| m.id == member && m.connection == connection && m.sender.is_none())
        else {
            return false;
        };
        group.release(index);
        group.settle(capacity);
        true
    }

    /// Ends every member's stream after what was already delivered to it, and cancels every
    /// lease timer: for shutdown.
    pub(crate) fn close(&mut self) {
        for group in self.by_name.values_mut() {
            for member in &mut group.members {
                member.sender = None;
                if let Some(timer) = member.lease_timer.take() {
                    timer.abort();
                }
            }
        }
    }

    /// Whether every group that has members has had every event acknowledged. Groups without
    /// members are not waited for (nobody would acknowledge): see [`abandoned`](Self::abandoned).
    pub(crate) fn settled(&self) -> bool {
        self.by_name.values().all(|group| {
            group.members.is_empty() || (group.pending.is_empty() && group.in_flight == 0)
        })
    }

    /// Groups without members, and how many events each holds for the next member.
    pub(crate) fn abandoned(&self) -> Vec<(String, usize)> {
        self.by_name
            .iter()
            .filter(|(_, group)| group.members.is_empty() && !group.pending.is_empty())
            .map(|(name, group)| (name.clone(), group.pending.len()))
            .collect()
    }

    #[cfg(test)]
    pub(crate) fn unacked(&self, group: &str, member: &str) -> Vec<u64> {
        self.by_name[group]
            .members
            .iter()
            .find(|m| m.id == member)
            .map(|m| m.unacked.iter().map(|u| u.event.sequence).collect())
            .unwrap_or_default()
    }
}

impl Member {
    /// Drops `handled`, and everything delivered before it, from the unacknowledged events.
    /// An event not delivered to this member (or already acknowledged) changes nothing.
    /// Returns how many were acknowledged.
    fn acknowledge(&mut self, handled: u64) -> usize {
        match self
            .unacked
            .iter()
            .position(|u| u.event.sequence == handled)
        {
            Some(at) => self.unacked.drain(..=at).count(),
            None => 0,
        }
    }
}

impl Group {
    /// Sends pending events to the members with room, then drops what stays pending beyond
    /// what the group may hold (reported as missed). In that order: an event a member can
    /// take is never dropped.
    fn settle(&mut self, capacity: usize) {
        self.dispatch(capacity);
        self.trim(capacity.saturating_sub(self.in_flight));
    }

    /// Sends pending events to the members with room, the least loaded first, while the
    /// group holds fewer than `capacity` unacknowledged events.
    fn dispatch(&mut self, capacity: usize) {
        while !self.pending.is_empty() && self.in_flight < capacity {
            let Some(index) = self.pick() else { return };
            let unacked = self.pending.pop_front().expect("checked non-empty");
            self.deliver(index, unacked);
        }
    }

    /// The live member with the fewest unacknowledged events and room for one more.
    fn pick(&mut self) -> Option<usize> {
        let count = self.members.len();
        let mut best: Option<(usize, usize)> = None;
        for offset in 0..count {
            let index = (self.next_pick + offset) % count;
            let member = &self.members[index];
            let load = member.unacked.len();
            if member.sender.is_none() || load >= member.window {
                continue;
            }
            if best.is_none_or(|(_, least)| load < least) {
                best = Some((index, load));
                if load == 0 {
                    break;
                }
            }
        }
        let (index, _) = best?;
        self.next_pick = index + 1;
        Some(index)
    }

    fn deliver(&mut self, index: usize, mut unacked: Unacked) {
        unacked.deliveries = unacked.deliveries.saturating_add(1);
        if unacked.deliveries > 1 {
            self.redelivered += 1;
        }
        unacked.missed += std::mem::take(&mut self.missed);
        if self.previous_epoch != 0 {
            unacked.previous_epoch = std::mem::take(&mut self.previous_epoch);
        }
        self.in_flight += 1;
        let member = &mut self.members[index];
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
            }
        }
        member.unacked.push_back(unacked);
    }

    /// Removes a member; its unacknowledged events go back to the front of the group's queue.
    fn release(&mut self, index: usize) {
        let mut member = self.members.remove(index);
        let unacked = std::mem::take(&mut member.unacked);
        self.in_flight -= unacked.len();
        for unacked in unacked.into_iter().rev() {
            self.pending.push_front(unacked);
        }
        if self.next_pick > index {
            self.next_pick -= 1;
        }
        if self.members.is_empty() {
            self.idle_since = Some(Instant::now());
        }
    }

    /// Keeps at most `room` pending events: the oldest beyond it are missed.
    fn trim(&mut self, room: usize) {
        while self.pending.len() > room {
            if let Some(dropped) = self.pending.pop_front() {
                // Whatever it carried as missed is missed too.
                self.missed += 1 + dropped.missed;
                if dropped.previous_epoch != 0 {
                    self.previous_epoch = dropped.previous_epoch;
                }
            }
        }
    }
}
