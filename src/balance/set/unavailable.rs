//! [`Unavailable`]: why no instance of a set could be picked, and whether waiting may help:
//! what a call that finds none fails with.

use std::sync::Arc;

use super::super::instance::{Instance, State};
use crate::discovery::DiscoveryStatus;

pub(super) struct Unavailable {
    pub(super) may_change: bool,
    pub(super) message: String,
}

impl Unavailable {
    /// Why none of `all`, the instances of `target`, can be picked, with discovery at `status`.
    pub(super) fn of(target: &str, all: &[Arc<Instance>], status: DiscoveryStatus) -> Self {
        // A connected instance is in the ready snapshot as soon as it is rebuilt (ejected or
        // not: an ejected one is better than none): found here, it connected an instant ago,
        // and the call waits for the snapshot as for a connection being made.
        let connecting = all
            .iter()
            .filter(|i| matches!(i.state(), State::Connecting | State::Ready))
            .count();
        let failing = all.len() - connecting;
        let dns_note = match &status {
            DiscoveryStatus::Failing { error, .. } => format!("; DNS lookups fail: {error}"),
            _ => String::new(),
        };
        if all.is_empty() {
            return match status {
                DiscoveryStatus::Pending => Self {
                    may_change: true,
                    message: format!("no DNS answer for `{target}` in time"),
                },
                // Nothing known, and DNS failing: waiting would only hide why.
                DiscoveryStatus::Failing { error, .. } => Self {
                    may_change: false,
                    message: format!("no instance of `{target}`: DNS lookups fail: {error}"),
                },
                DiscoveryStatus::NoInstances { reason } => Self {
                    may_change: false,
                    message: format!("no instance of `{target}`: {reason}"),
                },
                DiscoveryStatus::Static | DiscoveryStatus::Resolved { .. } => Self {
                    may_change: false,
                    message: format!("no instance of `{target}` is known"),
                },
            };
        }
        if connecting > 0 {
            return Unavailable {
                may_change: true,
                message: format!(
                    "no instance of `{target}` connected in time ({connecting} still connecting, {failing} failing{dns_note})"
                ),
            };
        }
        let last_error = all
            .iter()
            .find_map(|i| i.last_error().map(|e| format!("; {}: {e}", i.key)))
            .unwrap_or_default();
        Unavailable {
            may_change: false,
            message: format!("no instance of `{target}` is reachable ({failing} failing to connect{last_error}{dns_note})"),
        }
    }
}
