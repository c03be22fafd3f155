//! Consumer groups on a publisher: which member gets each event, what each member has not
//! acknowledged yet, and what goes back to its group when a member leaves or its lease runs out.
//!
//! Plain data under the hub's lock. A group reads the event log by cursor, as plain subscribers
//! do, and holds only what it handed out and has not had acknowledged (at most `retain`), and
//! events of keys waiting for their turn. Here is the registry the hub calls ([`Groups`]); the
//! rest is one concern a file:
//!
//! - `dispatch.rs`: one group, and how it hands events out;
//! - `member.rs`: a member, and the index of members with room (handing an event out costs the
//!   same whatever the number of members);
//! - `keyed.rs`: keys, their owners by rendezvous hashing, one event per key out, and the keys
//!   waiting, by owner (with what a publish costs at the documented limits);
//! - `lease.rs`: a member's lease and its timer; `idle.rs`: groups without members;
//! - `journal.rs`: what a log that keeps groups is told, and groups formed again from it;
//! - `status.rs`: the groups as the admin status shows them; `seeded.rs`: the hasher of the
//!   maps keyed by numbers.

use std::collections::{HashMap, VecDeque};

use tokio::time::Instant;

use super::log::{EventLog, GroupChange, SavedGroup, Stored};
use dispatch::Group;
use idle::IdleClock;
pub(crate) use idle::{Sweep, IDLE_GROUP_TTL};
use journal::Journal;
pub(crate) use member::{Ack, AckError, Delivery, Join, JoinError, Joined, MAX_MEMBERS};

mod dispatch;
mod idle;
mod journal;
mod keyed;
mod lease;
mod member;
mod seeded;
mod status;

/// How many consumer groups one event RPC of a publisher serves. Past it, the group that has
/// been without members the longest gives way.
pub(crate) const MAX_GROUPS: usize = 256;

/// The consumer groups of one event RPC, by name.
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
    journal: Journal,
    /// Closed for shutdown: no lease starts.
    closed: bool,
    idle: IdleClock,
}

impl Groups {
    /// No groups yet; each will hold at most `capacity` events unacknowledged.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            by_name: HashMap::new(),
            capacity: capacity.max(1),
            connections: 0,
            scratch: VecDeque::with_capacity(1),
            journal: Journal::default(),
            closed: false,
            idle: IdleClock::default(),
        }
    }

    /// Has groups without members forgotten after [`IDLE_GROUP_TTL`] by a timer that calls
    /// `sweep`, which should call [`sweep`](Self::sweep).
    pub(crate) fn sweep_with(&mut self, sweep: Sweep) {
        self.idle.sweep_with(sweep);
    }

    /// Forgets the groups without members for longer than [`IDLE_GROUP_TTL`] (the timer
    /// fired).
    pub(crate) fn sweep(&mut self) {
        self.idle.fired();
        self.forget_idle(Instant::now());
        self.keep_time();
    }

    /// Sets the timer for the group without members the longest, if one lost its last
    /// member.
    fn keep_time(&mut self) {
        let by_name = &self.by_name;
        self.idle
            .keep(|| by_name.values().filter_map(|group| group.idle_since).min());
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
        self.by_name.insert(
            group.to_owned(),
            Group::new(group.to_owned(), next, missed, previous_epoch),
        );
        self.journal.push(|| GroupChange::Created {
            group: group.to_owned(),
            start: next,
        });
        // Its timer is set once it is left without members: it is joined right away.
        self.idle.went_idle();
        Ok(())
    }

    /// Forms again, without members, the groups a log kept, and journals changes from then
    /// on.
    pub(crate) fn restore(&mut self, saved: Vec<(String, SavedGroup)>, log: &dyn EventLog) {
        for (name, saved) in saved.into_iter().take(MAX_GROUPS) {
            let restored = journal::restore(&name, saved, log, &mut self.scratch);
            self.by_name
                .insert(name.clone(), Group::restored(name, restored));
        }
        self.journal.start();
        self.idle.went_idle();
        self.keep_time();
    }

    /// The changes since the last call, for the log.
    pub(crate) fn take_changes(&mut self) -> Vec<GroupChange> {
        self.journal.take()
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
            self.journal.push(|| GroupChange::Forgotten {
                group: name.to_owned(),
            });
            tracing::info!(group = %crate::text::shown(name), why, "consumer group without members forgotten; what it had yet to deliver is lost");
        }
    }

    /// Joins (or rejoins) a member to an existing group: a rejoining member gets its
    /// unacknowledged events again, after those it says it handled.
    pub(crate) fn join(&mut self, join: Join, log: &mut dyn EventLog) -> Result<Joined, JoinError> {
        let connection = self.connections + 1;
        // The hub creates a group before joining it.
        let group = self
            .by_name
            .get_mut(&join.group)
            .ok_or(JoinError::TooManyGroups)?;
        let (deliveries, superseded) = group.join(&join, connection, &mut self.journal)?;
        self.connections = connection;
        self.journal.write(log);
        group.dispatch(log, self.capacity, &mut self.scratch, &mut self.journal);
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
            if group.passes_over(event, &mut self.journal) {
                continue;
            }
            let in_turn = group.next == event.sequence
                && group.again.is_empty()
                && group.in_flight < self.capacity;
            let to = match event.key {
                _ if !in_turn => None,
                None => group.members.least_loaded(),
                Some(key) => group.keyed.free_owner(key, &group.members),
            };
            match to {
                Some(member) => group.offer(member, event, log),
                // An event with a key waits for nobody's acknowledgement but its key's:
                // behind others that wait, it is read into the held ones now.
                None if event.key.is_some() => {
                    group.dispatch(log, self.capacity, &mut self.scratch, &mut self.journal);
                }
                None => {}
            }
        }
        // Events passed over go to the log with a group's next change, or once many wait.
        if self.journal.is_full() {
            self.journal.write(log);
        }
    }

    /// Acknowledges what `ack` says was handled; with `leave`, then removes the member and
    /// hands its other events to the rest of the group. Returns how many events the member
    /// still has unacknowledged.
    pub(crate) fn acknowledge(
        &mut self,
        ack: Ack<'_>,
        log: &mut dyn EventLog,
    ) -> Result<u64, AckError> {
        let group = self
            .by_name
            .get_mut(ack.group)
            .ok_or(AckError::UnknownGroup)?;
        let key = group
            .members
            .key_of(ack.member)
            .ok_or(AckError::UnknownMember)?;
        let member = group.members.get_mut(key).ok_or(AckError::UnknownMember)?;
        if member.identity.as_ref() != ack.identity {
            return Err(AckError::NotYours);
        }
        if let Some(connection) = ack.connection.filter(|c| *c < member.born_on) {
            return Err(AckError::EarlierLife { connection });
        }
        let mut acked = ack
            .handled
            .map(|handled| member.take_through(handled))
            .unwrap_or_default();
        acked.extend(member.take_each(ack.handled_each));
        group.settle(key, acked, &mut self.journal);
        self.journal.write(log);
        if ack.leave {
            group.release(key);
        }
        group.dispatch(log, self.capacity, &mut self.scratch, &mut self.journal);
        let unacknowledged = group
            .members
            .get(key)
            .map_or(0, |member| member.unacked.len() as u64);
        if group.members.is_empty() {
            self.idle.went_idle();
            self.keep_time();
        }
        Ok(unacknowledged)
    }

    /// The member's stream `connection` ended. When that was the member's current connection,
    /// its lease starts (unless the groups are closed): `ran_out` is called when it has
    /// passed, and should call [`lease_ran_out`](Self::lease_ran_out). A zero lease runs
    /// out at once. Returns whether it was the current connection.
    pub(crate) fn disconnect(
        &mut self,
        group: &str,
        member: &str,
        connection: u64,
        log: &mut dyn EventLog,
        ran_out: impl FnOnce() + Send + 'static,
    ) -> bool {
        let Some(group) = self.by_name.get_mut(group) else {
            return false;
        };
        let Some(key) = group.members.key_of(member) else {
            return false;
        };
        if !group.disconnect(key, connection) {
            return false;
        }
        if !self.closed {
            let started = group
                .members
                .get_mut(key)
                .is_some_and(|member| member.lease.start(ran_out));
            if !started {
                group.release(key);
            }
        }
        group.dispatch(log, self.capacity, &mut self.scratch, &mut self.journal);
        if group.members.is_empty() {
            self.idle.went_idle();
            self.keep_time();
        }
        true
    }

    /// The lease of the member's `connection` ran out: unless it came back meanwhile, its
    /// unacknowledged events go to the other members. Returns whether it was let go.
    pub(crate) fn lease_ran_out(
        &mut self,
        group: &str,
        member: &str,
        connection: u64,
        log: &mut dyn EventLog,
    ) -> bool {
        let Some(group) = self.by_name.get_mut(group) else {
            return false;
        };
        let Some(key) = group.away(member, connection) else {
            return false;
        };
        group.release(key);
        group.dispatch(log, self.capacity, &mut self.scratch, &mut self.journal);
        if group.members.is_empty() {
            self.idle.went_idle();
            self.keep_time();
        }
        true
    }

    /// Ends every member's stream after what was already delivered to it, and cancels every
    /// lease timer: for shutdown.
    pub(crate) fn close(&mut self) {
        self.closed = true;
        self.idle.close();
        for group in self.by_name.values_mut() {
            group.close();
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

    /// Rendezvous scores computed so far, over all groups.
    #[cfg(test)]
    pub(crate) fn key_scores(&self) -> u64 {
        self.by_name.values().map(|g| g.keyed.scores.get()).sum()
    }
}

#[cfg(test)]
mod journal_test;
#[cfg(test)]
mod keyed_model_test;
#[cfg(test)]
mod keyed_test;
#[cfg(test)]
mod lifetime_test;
#[cfg(test)]
mod refusal_test;
#[cfg(test)]
mod test;
