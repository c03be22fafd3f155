//! The refresh loop: looks the target up again and again, diffs successive answers into
//! instance changes, and reports what it learned.
//!
//! Lookups follow the answer's TTL, clamped between a floor and a ceiling (Consul answers with
//! TTL 0). A failed lookup keeps the instances already known and is retried with backoff; an
//! authoritative empty answer (NXDOMAIN, no records) removes them all. A connection failure
//! asks for a prompt lookup, rate-limited to one per floor.

use crate::backoff::Backoff;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::DiscoveryStatus;
use super::Placement;

/// One answer of a lookup that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The instances found, and how long the answer may be trusted.
    Instances {
        instances: Vec<(SocketAddr, Placement)>,
        ttl: Duration,
    },
    /// An authoritative answer that there is no instance.
    NoInstances { reason: String },
}

/// Something that looks a target up: DNS in production, a script in tests.
pub(crate) trait Lookup: Send + 'static {
    /// Looks once; `Err` is a failure (timeout, SERVFAIL, ...) with its description.
    fn lookup(&mut self) -> impl Future<Output = Result<Answer, String>> + Send;
}

/// What the refresh loop tells its consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Update {
    /// An instance appeared, or its placement changed.
    Insert(SocketAddr, Placement),
    /// An instance is gone.
    Remove(SocketAddr),
    /// What the lookup found; sent after the changes of each lookup.
    Status(DiscoveryStatus),
}

/// When to look again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    /// The shortest time between lookups, whatever the TTL (and the rate limit of prompt
    /// lookups after connection failures).
    pub(crate) floor: Duration,
    /// The longest time between lookups, whatever the TTL.
    pub(crate) ceiling: Duration,
    /// The first pause after a failed lookup; it doubles up to `ceiling`.
    pub(crate) retry: Duration,
}

/// Runs until the receiver of `updates` is dropped.
pub(crate) async fn run(
    mut lookup: impl Lookup,
    schedule: Schedule,
    refresh: Arc<Notify>,
    updates: mpsc::Sender<Update>,
) {
    let mut known: HashMap<SocketAddr, Placement> = HashMap::new();
    let mut retry = Backoff::exact(schedule.retry, schedule.ceiling);
    loop {
        let started = Instant::now();
        let (changes, status, wait) = match lookup.lookup().await {
            Ok(Answer::Instances { instances, ttl }) => {
                let fresh: HashMap<_, _> = instances.into_iter().collect();
                let changes = diff(&known, &fresh);
                known = fresh;
                retry.reset();
                let status = DiscoveryStatus::Resolved {
                    instances: known.len(),
                };
                (changes, status, ttl.clamp(schedule.floor, schedule.ceiling))
            }
            Ok(Answer::NoInstances { reason }) => {
                let changes = diff(&known, &HashMap::new());
                known.clear();
                retry.reset();
                (
                    changes,
                    DiscoveryStatus::NoInstances { reason },
                    schedule.floor,
                )
            }
            Err(error) => {
                let wait = retry.next_pause();
                let status = DiscoveryStatus::Failing {
                    error,
                    instances: known.len(),
                };
                (Vec::new(), status, wait)
            }
        };
        for change in changes {
            if updates.send(change).await.is_err() {
                return;
            }
        }
        if updates.send(Update::Status(status)).await.is_err() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = refresh.notified() => {
                tokio::select! {
                    () = tokio::time::sleep_until(started + schedule.floor) => {}
                    () = updates.closed() => return,
                }
            }
            () = updates.closed() => return,
        }
    }
}

/// The changes that turn `old` into `new`: insertions and updates first, then removals, so
/// that an answer replacing every address never leaves the set empty in between (a call
/// picking then would fail at once, the set known and empty).
fn diff(old: &HashMap<SocketAddr, Placement>, new: &HashMap<SocketAddr, Placement>) -> Vec<Update> {
    let mut changes: Vec<_> = new
        .iter()
        .filter(|(addr, placement)| old.get(addr) != Some(placement))
        .map(|(addr, placement)| Update::Insert(*addr, *placement))
        .collect();
    changes.extend(
        old.keys()
            .filter(|addr| !new.contains_key(addr))
            .map(|addr| Update::Remove(*addr)),
    );
    changes
}

#[cfg(test)]
mod test;
