//! What a log keeping consumer groups records of them: [`GroupChange`]s, and the
//! [`SavedGroup`] they make.

/// A change to a consumer group that a log keeping groups records, so that the group's
/// progress survives a restart of the producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GroupChange {
    /// The group was formed, its first event being `start`.
    Created { group: String, start: u64 },
    /// Its members acknowledged these events.
    Acked { group: String, sequences: Vec<u64> },
    /// Events up to `through` may have been handed to members.
    HandedOut { group: String, through: u64 },
    /// Events owed to the group left the log before they were acknowledged.
    Missed { group: String, events: u64 },
    /// The group was forgotten (without members for too long, or to make room).
    Forgotten { group: String },
}

impl GroupChange {
    /// The group the change is to.
    #[cfg(feature = "postgres")]
    pub(crate) fn group(&self) -> &str {
        match self {
            GroupChange::Created { group, .. }
            | GroupChange::Acked { group, .. }
            | GroupChange::HandedOut { group, .. }
            | GroupChange::Missed { group, .. }
            | GroupChange::Forgotten { group } => group,
        }
    }

    /// What the change does to the groups a log keeps (a change of a group it does not know
    /// does nothing).
    pub(crate) fn apply_to(self, groups: &mut std::collections::BTreeMap<String, SavedGroup>) {
        match self {
            GroupChange::Created { group, start } => {
                groups.insert(
                    group,
                    SavedGroup {
                        start,
                        ..SavedGroup::default()
                    },
                );
            }
            GroupChange::Acked { group, sequences } => {
                if let Some(saved) = groups.get_mut(&group) {
                    saved.acked.extend(sequences);
                }
            }
            GroupChange::Missed { group, events } => {
                if let Some(saved) = groups.get_mut(&group) {
                    saved.missed += events;
                }
            }
            GroupChange::HandedOut { group, through } => {
                if let Some(saved) = groups.get_mut(&group) {
                    saved.handed_out = saved.handed_out.max(through);
                }
            }
            GroupChange::Forgotten { group } => {
                groups.remove(&group);
            }
        }
    }
}

/// A consumer group as a log kept it: the events from `start` on, less those acknowledged,
/// are still owed to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SavedGroup {
    pub(crate) start: u64,
    pub(crate) acked: std::collections::BTreeSet<u64>,
    /// Events owed to it that left the log before it acknowledged them.
    pub(crate) missed: u64,
    /// Events up to this one may have been handed to members.
    pub(crate) handed_out: u64,
}

impl SavedGroup {
    /// Keeps the record small: the events acknowledged from its start on move the start;
    /// what it was owed that is no longer retained (before `oldest`) becomes a count of missed
    /// events.
    pub(crate) fn prune(&mut self, oldest: u64) {
        // An acknowledgement of an event already behind the start (owed, held by a member
        // while it left the log) changes nothing here.
        self.acked = self.acked.split_off(&self.start);
        while self.acked.remove(&self.start) {
            self.start += 1;
        }
        if self.start < oldest {
            let acked_gone = self.acked.range(..oldest).count() as u64;
            self.missed += (oldest - self.start).saturating_sub(acked_gone);
            self.acked = self.acked.split_off(&oldest);
            self.start = oldest;
            while self.acked.remove(&self.start) {
                self.start += 1;
            }
        }
    }
}
