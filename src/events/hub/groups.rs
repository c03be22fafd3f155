//! Consumer groups on the hub: joining, acknowledging, a member's stream ending and its lease
//! running out, each under the hub's lock, and what goes to the log and the metrics after.

use std::sync::Arc;

use bytes::Bytes;

use super::{Hub, State};
use crate::events::filter::EventFilter;
use crate::events::group::{Ack, Join, Joined};
use crate::events::protocol::{self, Membership, Refusal, Subscription};
use crate::events::wire;
use crate::peer::PeerIdentity;
use crate::v1::{AcknowledgeResponse, Acknowledgement};

impl Hub {
    /// Joins a member to its consumer group, creating the group, where the request says it
    /// starts, when it is new on this publisher.
    fn join_group(
        &self,
        subscription: &Subscription,
        membership: &Membership,
        filter: Option<EventFilter>,
    ) -> Result<Joined, Refusal> {
        let mut state = self.lock();
        if state.closed {
            return Err(Refusal::ShuttingDown);
        }
        if state.groups.contains(&membership.group) {
            // Only checked: the group already stands somewhere.
            if let Some(cursor) = subscription.after.filter(|c| c.epoch == self.epoch) {
                if cursor.sequence > state.log.latest() {
                    return Err(Refusal::CursorAhead {
                        cursor,
                        latest: state.log.latest(),
                    });
                }
            }
        } else {
            if state.draining {
                return Err(Refusal::ShuttingDown);
            }
            let position = self.position(state.log.as_ref(), subscription)?;
            state
                .groups
                .create(
                    &membership.group,
                    position.next,
                    position.missed,
                    position.previous_epoch,
                )
                .map_err(Refusal::Join)?;
        }
        let handled = subscription
            .after
            .filter(|cursor| cursor.epoch == self.epoch && cursor.sequence > 0)
            .map(|cursor| cursor.sequence);
        let State { groups, log, .. } = &mut *state;
        let joined = groups
            .join(
                Join {
                    group: membership.group.clone(),
                    member: membership.member.clone(),
                    window: membership.window.min(self.buffer),
                    lease: membership.lease,
                    handled,
                    identity: membership.identity.clone(),
                    filter: filter.map(Arc::new),
                    peer: subscription.peer,
                },
                log.as_mut(),
            )
            .map_err(Refusal::Join);
        self.after_group_change(&mut state);
        joined
    }

    /// A member's stream ended: once its lease runs out without it coming back, its
    /// unacknowledged events go to the other members.
    pub(crate) fn member_disconnected(
        self: &Arc<Self>,
        group: &str,
        member: &str,
        connection: u64,
    ) {
        let ran_out = {
            let hub = Arc::downgrade(self);
            let (group, member) = (group.to_owned(), member.to_owned());
            move || {
                if let Some(hub) = hub.upgrade() {
                    hub.lease_ran_out(&group, &member, connection);
                }
            }
        };
        {
            let mut state = self.lock();
            let State { groups, log, .. } = &mut *state;
            groups.disconnect(group, member, connection, log.as_mut(), ran_out);
            self.after_group_change(&mut state);
        }
        self.changed.notify_waiters();
    }

    /// The idle groups' timer fired.
    pub(super) fn sweep_idle_groups(&self) {
        let mut state = self.lock();
        state.groups.sweep();
        self.after_group_change(&mut state);
    }

    /// The lease of a member's connection ran out.
    fn lease_ran_out(&self, group: &str, member: &str, connection: u64) {
        let mut state = self.lock();
        let State { groups, log, .. } = &mut *state;
        let expired = groups.lease_ran_out(group, member, connection, log.as_mut());
        self.after_group_change(&mut state);
        drop(state);
        if expired {
            tracing::debug!(rpc = %self.method, group, member, "member's lease ran out; its events go to the rest of the group");
            self.changed.notify_waiters();
        }
    }

    /// Acknowledges what a group member handled.
    pub(crate) fn acknowledge(
        &self,
        ack: &Acknowledgement,
        identity: Option<&PeerIdentity>,
    ) -> Result<AcknowledgeResponse, tonic::Status> {
        let (handled, handled_each) =
            protocol::handled(&self.method, self.epoch, self.latest(), ack)?;
        let mut state = self.lock();
        let State { groups, log, .. } = &mut *state;
        let result = groups.acknowledge(
            Ack {
                group: &ack.group,
                member: &ack.member,
                handled,
                handled_each: &handled_each,
                leave: ack.leave,
                identity,
                connection: (ack.connection != 0).then_some(ack.connection),
            },
            log.as_mut(),
        );
        self.after_group_change(&mut state);
        drop(state);
        match result {
            Ok(unacknowledged) => {
                self.changed.notify_waiters();
                Ok(AcknowledgeResponse { unacknowledged })
            }
            Err(error) => Err(protocol::ack_refused(&self.method, &error, ack)),
        }
    }

    /// Joins a group member, as the subscription asks.
    pub(crate) fn join(
        &self,
        subscription: &Subscription,
        membership: &Membership,
    ) -> Result<Joined, tonic::Status> {
        let filter = self
            .filters
            .compile(&subscription.filter)
            .map_err(|why| protocol::bad_filter(&self.method, &why))?;
        self.join_group(subscription, membership, filter)
            .map_err(|refusal| protocol::refused(&self.method, &refusal, Some(membership)))
    }

    /// After an operation on groups: counts the deliveries beyond the first it made, and hands
    /// its changes to the log (which keeps them if it keeps groups).
    fn after_group_change(&self, state: &mut State) {
        let redelivered = state.groups.take_redelivered();
        if redelivered > 0 {
            self.metrics.redeliveries.increment(redelivered);
        }
        let changes = state.groups.take_changes();
        if !changes.is_empty() {
            state.log.record_groups(&changes);
        }
    }

    /// The metadata of a delivery to a group member: shared for a first delivery.
    pub(crate) fn delivery_bytes(
        &self,
        delivery_count: u32,
        missed: u64,
        previous_epoch: u64,
    ) -> Bytes {
        if delivery_count == 1 && missed == 0 && previous_epoch == 0 {
            return self.first_delivery.clone();
        }
        wire::delivery_field(delivery_count, missed, previous_epoch)
    }

    #[cfg(test)]
    pub(crate) fn has_group(&self, group: &str) -> bool {
        self.lock().groups.contains(group)
    }

    #[cfg(test)]
    pub(crate) fn key_scores(&self) -> u64 {
        self.lock().groups.key_scores()
    }

    #[cfg(test)]
    pub(crate) fn unacked(&self, group: &str, member: &str) -> Vec<u64> {
        self.lock().groups.unacked(group, member)
    }
}
