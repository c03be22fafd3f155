//! One consumer group: where it stands in the log, its members, and how it hands events out:
//! events without a key to the least loaded member with room, events with a key to the key's
//! owner, one at a time per key ([`Keyed`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::journal::{HandedOut, Journal, Restored};
use super::keyed::Keyed;
use super::member::{Delivery, Join, JoinError, Member, Members, Unacked, MAX_MEMBERS};
use crate::events::filter::EventFilter;
use crate::events::log::{EventLog, GroupChange, Stored};

#[derive(Debug)]
pub(super) struct Group {
    pub(super) name: String,
    /// The sequence of the next event in the log this group has not handed out.
    pub(super) next: u64,
    /// How far events may have been handed out, as the log knows.
    marks: HandedOut,
    /// Events members gave back (they left, or their lease ran out), handed out again
    /// before the log's, in order.
    pub(super) again: VecDeque<Unacked>,
    pub(super) members: Members,
    /// Events missed right before the next delivery, to report with it.
    missed: u64,
    /// The epoch whose unseen tail the group lost, reported with the next delivery.
    previous_epoch: u64,
    /// Delivered and not yet acknowledged, over all members: at most the capacity.
    pub(super) in_flight: usize,
    /// Since when the group has had no member.
    pub(super) idle_since: Option<Instant>,
    /// Deliveries beyond the first, for metrics.
    pub(super) redelivered: u64,
    /// The keys handled one event at a time.
    pub(super) keyed: Keyed,
    /// The group's filter, set by its first member; events that do not match are passed over
    /// (acknowledged at once).
    filter: Option<Arc<EventFilter>>,
    /// Whether `filter` was set: a group formed again from a log takes its first member's.
    filter_set: bool,
    /// When a member last acknowledged an event (for the admin status).
    pub(super) last_acknowledged: Option<Instant>,
}

/// A filter's conditions in canonical form (`None`: every event).
fn canonical(filter: &Option<Arc<EventFilter>>) -> Option<&Vec<Vec<u8>>> {
    filter.as_ref().map(|filter| &filter.canonical)
}

impl Group {
    /// A group without members that starts at sequence `next` of the log, having missed
    /// `missed` events and the tail of `previous_epoch` (0: none).
    pub(super) fn new(name: String, next: u64, missed: u64, previous_epoch: u64) -> Self {
        Self {
            name,
            next,
            marks: HandedOut::default(),
            again: VecDeque::new(),
            members: Members::default(),
            missed,
            previous_epoch,
            in_flight: 0,
            idle_since: Some(Instant::now()),
            redelivered: 0,
            keyed: Keyed::default(),
            filter: None,
            filter_set: false,
            last_acknowledged: None,
        }
    }

    /// A group formed again from what a log kept: it owes what it did not acknowledge
    /// before the log's events from then on.
    pub(super) fn restored(name: String, restored: Restored) -> Self {
        Self {
            marks: restored.marks,
            again: restored.owed,
            ..Self::new(name, restored.next, restored.missed, 0)
        }
    }

    /// Events the group has yet to hand out: given back, and still in the log.
    pub(super) fn owed(&self, log: &dyn EventLog) -> u64 {
        let unread = (log.latest() + 1).saturating_sub(self.next.max(log.oldest()));
        (self.again.len() + self.keyed.held_count()) as u64 + unread
    }

    /// Joins (or rejoins) a member on its connection `connection`: a rejoining member gets
    /// its unacknowledged events again, after those it says it handled.
    pub(super) fn join(
        &mut self,
        join: &Join,
        connection: u64,
        journal: &mut Journal,
    ) -> Result<(mpsc::UnboundedReceiver<Delivery>, Arc<AtomicBool>), JoinError> {
        let existing = self.members.key_of(&join.member);
        match existing.and_then(|key| self.members.get(key)) {
            None if self.members.len() >= MAX_MEMBERS => return Err(JoinError::TooManyMembers),
            Some(member) if member.identity != join.identity => return Err(JoinError::NotYours),
            _ => {}
        }
        if !self.filter_set {
            self.filter = join.filter.clone();
            self.filter_set = true;
        } else if canonical(&self.filter) != canonical(&join.filter) {
            return Err(JoinError::OtherFilter);
        }
        let (sender, deliveries) = mpsc::unbounded_channel();
        let superseded = Arc::new(AtomicBool::new(false));
        let key = match existing {
            Some(key) => key,
            None => self
                .members
                .add(Member::new(join, connection, superseded.clone())),
        };
        self.idle_since = None;
        let member = self.members.get_mut(key).expect("added above");
        member.window = join.window;
        member.lease.length = join.lease;
        member.peer = join.peer;
        member.connection = connection;
        // A previous stream of the same member, still open, ends here, and what it still
        // buffers is delivered again below, on this one.
        member.sender = Some(sender);
        if !Arc::ptr_eq(&member.superseded, &superseded) {
            std::mem::replace(&mut member.superseded, superseded.clone())
                .store(true, Ordering::Release);
        }
        member.lease.cancel();
        let acked = join
            .handled
            .map(|handled| member.take_through(handled))
            .unwrap_or_default();
        let again: Vec<Unacked> = member.unacked.drain(..).collect();
        self.settle(key, acked, journal);
        self.in_flight -= again.len();
        self.keyed.rebuild_live(&self.members);
        for unacked in again {
            self.deliver(key, unacked);
        }
        self.members.reindex(key);
        Ok((deliveries, superseded))
    }

    /// The member's stream `connection` ended: unless it is no longer its latest, the member
    /// is away, and its keys without an event out belong to the others.
    pub(super) fn disconnect(&mut self, key: u64, connection: u64) -> bool {
        let Some(member) = self.members.get_mut(key) else {
            return false;
        };
        if member.connection != connection {
            return false;
        }
        member.sender = None;
        self.members.reindex(key);
        self.keyed.rebuild_live(&self.members);
        true
    }

    /// The member named `member`, if it is away since its connection `connection` ended.
    pub(super) fn away(&self, member: &str, connection: u64) -> Option<u64> {
        let key = self.members.key_of(member)?;
        let member = self.members.get(key)?;
        (member.connection == connection && member.sender.is_none()).then_some(key)
    }

    /// Ends every member's stream after what was already delivered to it, and cancels every
    /// lease timer: for shutdown.
    pub(super) fn close(&mut self) {
        self.members.close();
        self.keyed.rebuild_live(&self.members);
    }

    /// Hands out what the group owes to members with room, the least loaded first, while it
    /// holds fewer than `capacity` events unacknowledged. Events that left the log before the
    /// group got to them are reported missed with the next delivery.
    pub(super) fn dispatch(
        &mut self,
        log: &mut dyn EventLog,
        capacity: usize,
        scratch: &mut VecDeque<Stored>,
        journal: &mut Journal,
    ) {
        self.dispatch_held(log, capacity);
        let mut passed_over = Vec::new();
        self.dispatch_owed(log, capacity, scratch, &mut passed_over);
        self.passed_over(passed_over, journal);
    }

    /// Whether the group's filter lets `event` through.
    pub(super) fn wants(&self, event: &Stored) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|filter| filter.matches(&event.bytes))
    }

    /// Passes over a newly published event the group's filter does not want, when the group is
    /// in turn for it: acknowledged at once. Returns whether it did.
    pub(super) fn passes_over(&mut self, event: &Stored, journal: &mut Journal) -> bool {
        if self.next != event.sequence || !self.again.is_empty() || self.wants(event) {
            return false;
        }
        self.next += 1;
        journal.push(|| GroupChange::Acked {
            group: self.name.clone(),
            sequences: vec![event.sequence],
        });
        true
    }

    /// Events the group's filter passed over count as acknowledged, so that a log that keeps
    /// the group never owes them to it again.
    pub(super) fn passed_over(&self, sequences: Vec<u64>, journal: &mut Journal) {
        if !sequences.is_empty() {
            journal.push(|| GroupChange::Acked {
                group: self.name.clone(),
                sequences,
            });
        }
    }

    /// Hands out the events given back and those still in the log, in order, holding those
    /// whose key must wait.
    fn dispatch_owed(
        &mut self,
        log: &mut dyn EventLog,
        capacity: usize,
        scratch: &mut VecDeque<Stored>,
        passed_over: &mut Vec<u64>,
    ) {
        while self.in_flight < capacity {
            if !self.members.any_ready() {
                return;
            }
            let unacked = match self.again.pop_front() {
                Some(unacked) => unacked,
                None => {
                    // Held events are read from the log and kept: as many as may be out.
                    if self.next > log.latest() || self.keyed.held_count() >= capacity {
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
            // Events given back matched when they were delivered; those a group formed again
            // from a log owes may not.
            if !self.wants(&unacked.event) {
                passed_over.push(unacked.event.sequence);
                continue;
            }
            let to = match unacked.event.key {
                None => self.members.least_loaded(),
                Some(key) => {
                    if self.keyed.waits(key) {
                        self.keyed.hold(key, unacked, false);
                        continue;
                    }
                    match self.keyed.owner(key) {
                        Some(owner) if self.members.has_room(owner) => Some(owner),
                        Some(_) => {
                            self.keyed.hold(key, unacked, false);
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
            self.hand_out(member, unacked, log);
        }
    }

    /// Hands out the held events whose key has none out to their key's member, for each
    /// member that may have room for them (the longest held of each member first): a look
    /// costs what goes, plus one per member that acknowledged since.
    fn dispatch_held(&mut self, log: &mut dyn EventLog, capacity: usize) {
        while self.in_flight < capacity {
            let Some(owner) = self.keyed.next_to_look_at() else {
                return;
            };
            while self.members.has_room(owner) {
                if self.in_flight >= capacity {
                    self.keyed.look_again(owner);
                    return;
                }
                let Some(unacked) = self.keyed.take_waiting(owner) else {
                    break;
                };
                // Marks the key busy: it waits again once this event is acknowledged.
                self.hand_out(owner, unacked, log);
            }
        }
    }

    /// Hands a newly published event to `member`, the group being in turn for it.
    pub(super) fn offer(&mut self, member: u64, event: &Stored, log: &mut dyn EventLog) {
        self.next += 1;
        self.hand_out(member, Unacked::new(event.clone()), log);
    }

    /// Delivers to `member`, first recording (for a first delivery) that the event may have
    /// been handed out.
    fn hand_out(&mut self, member: u64, unacked: Unacked, log: &mut dyn EventLog) {
        if unacked.deliveries == 0 {
            self.marks.announce(&self.name, unacked.event.sequence, log);
        }
        self.deliver(member, unacked);
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
        let turn = self.members.next_turn();
        if let Some(event_key) = unacked.event.key {
            self.keyed.out(event_key, key);
        }
        let member = self.members.get_mut(key).expect("delivering to a member");
        member.turn = turn;
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
                self.members.reindex(key);
                self.keyed.rebuild_live(&self.members);
                return;
            }
        }
        member.unacked.push_back(unacked);
        self.members.reindex(key);
    }

    /// Events `member` acknowledged: no longer in flight, and their keys free for their next.
    pub(super) fn settle(&mut self, member: u64, acked: Vec<Unacked>, journal: &mut Journal) {
        if acked.is_empty() {
            return;
        }
        // Per acknowledgement, not per event: a clock read.
        self.last_acknowledged = Some(Instant::now());
        self.in_flight -= acked.len();
        for unacked in &acked {
            if let Some(key) = unacked.event.key {
                self.keyed.key_settled(key, member);
            }
        }
        journal.push(|| GroupChange::Acked {
            group: self.name.clone(),
            sequences: acked.iter().map(|u| u.event.sequence).collect(),
        });
        self.members.reindex(member);
        self.keyed.look_again(member);
    }

    /// Removes a member; its unacknowledged events go back to the front of the group's queue.
    pub(super) fn release(&mut self, key: u64) {
        let Some(mut member) = self.members.remove(key) else {
            return;
        };
        let unacked = std::mem::take(&mut member.unacked);
        self.in_flight -= unacked.len();
        for unacked in unacked.into_iter().rev() {
            match unacked.event.key {
                // Its key's first: the key had no other event out.
                Some(key) => self.keyed.given_back(key, unacked),
                None => self.again.push_front(unacked),
            }
        }
        self.keyed.rebuild_live(&self.members);
        if self.members.is_empty() {
            self.idle_since = Some(Instant::now());
        }
    }
}
