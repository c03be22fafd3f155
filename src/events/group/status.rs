//! The consumer groups of one event RPC as the admin status shows them: their members, what
//! is out and not acknowledged, how far every event is acknowledged, and how far behind each
//! group is.
//!
//! Read under the hub's lock, on an admin request only: a look at every event out, given
//! back or held (at most the event RPC's `retain` per group). Nothing here runs per event.

use std::time::Duration;

use tokio::time::Instant;

use super::dispatch::Group;
use super::Groups;
use crate::admin::v1::{GroupMemberStatus, GroupStatus};
use crate::events::log::EventLog;
use crate::peer::PeerIdentity;

impl Groups {
    /// Every group, by name, as it stands at `now` over `log`.
    pub(crate) fn status(&self, log: &dyn EventLog, now: Instant) -> Vec<GroupStatus> {
        let mut groups: Vec<GroupStatus> = self
            .by_name
            .values()
            .map(|group| group.status(log, now))
            .collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        groups
    }
}

impl Group {
    /// The group's status. All of it is exact at the moment of the look (under the hub's
    /// lock), with these meanings:
    ///
    /// - `acknowledged_through`: the sequence before the first event the group still owes or
    ///   awaits an acknowledgement for (out to a member, given back, held for its key's turn,
    ///   or not read from the log yet). Events from before the group's start, events its
    ///   filter passed over, and events that left the log before the group read them (it is
    ///   told of those as a gap, and never owes them) count as settled.
    /// - `lag`: how many events the group still owes or awaits: `last_sequence -
    ///   acknowledged_through`, less those settled out of order. Events not read from the
    ///   log yet count even if the group's filter will pass over them; with compaction by
    ///   key, events kept past the window that a group behind it will still read do not.
    /// - `last_acknowledgement_ms_ago`: since a member last acknowledged at least one event
    ///   (an `Acknowledge`, or a rejoin saying what it handled).
    fn status(&self, log: &dyn EventLog, now: Instant) -> GroupStatus {
        let mut members: Vec<(&str, GroupMemberStatus)> = self
            .members
            .iter()
            .map(|(_, member)| {
                let status = GroupMemberStatus {
                    peer: member.peer.map(|peer| peer.to_string()).unwrap_or_default(),
                    identity: member.identity.as_ref().map(text).unwrap_or_default(),
                    lease_ms: millis(member.lease.length),
                    unacknowledged: member.unacked.len() as u64,
                    member: member.id.clone(),
                };
                (member.id.as_str(), status)
            })
            .collect();
        // By member id: a stable order.
        members.sort_by(|a, b| a.0.cmp(b.0));
        let unacknowledged = members.iter().map(|(_, m)| m.unacknowledged).sum::<u64>();
        // Where the group reads the log next; what left the log before is missed, not owed.
        let next = self.next.max(log.oldest());
        let first_open = (self.members.iter())
            .flat_map(|(_, member)| member.unacked.iter())
            .chain(self.again.iter())
            .map(|unacked| unacked.event.sequence)
            .chain(self.keyed.oldest_held())
            .fold(next, u64::min);
        let unread = (log.latest() + 1).saturating_sub(next);
        GroupStatus {
            name: self.name.clone(),
            members: members.into_iter().map(|(_, status)| status).collect(),
            unacknowledged,
            held_keys: self.keyed.busy_count() as u64,
            // Sequences start at 1: `first_open` is never 0.
            acknowledged_through: first_open - 1,
            lag: unacknowledged + (self.again.len() + self.keyed.held_count()) as u64 + unread,
            last_acknowledgement_ms_ago: self
                .last_acknowledged
                .map(|at| millis(now.saturating_duration_since(at))),
        }
    }
}

/// An identity as text: the name a layer gave, else what it is (a client certificate).
fn text(identity: &PeerIdentity) -> String {
    match identity.name() {
        Some(name) => crate::text::shown(name),
        None => identity.to_string(),
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
