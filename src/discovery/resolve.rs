//! [`resolve`]: any [`Target`] as one stream of instance updates, so that the channel and the
//! observer follow every kind of target the same way. A fixed list (`ipv4:`, `ipv6:`,
//! `http://`) is a single answer; a `dns:` or `dns+srv:` target is a DNS refresh loop.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use super::refresh::Update;
use super::{DiscoveryStatus, DnsSettings};
use crate::{Error, Target};

/// Where an instance stands among the others: SRV priority (lower first) and weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placement {
    pub(crate) priority: u16,
    pub(crate) weight: u16,
}

impl Default for Placement {
    fn default() -> Self {
        Self {
            priority: 0,
            weight: 1,
        }
    }
}

/// A change in a target's instances, each named by its authority (`10.0.0.7:50051`,
/// `users.local:50051`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InstanceUpdate {
    /// An instance appeared, or its placement changed.
    Insert(String, Placement),
    /// An instance is gone.
    Remove(String),
    /// What the last answer said; follows the changes of each answer.
    Status(DiscoveryStatus),
}

/// The instances of one target as they come and go.
#[derive(Debug)]
pub(crate) struct Resolution {
    source: Source,
    refresh: Arc<Notify>,
    first_answer_timeout: Duration,
}

#[derive(Debug)]
enum Source {
    /// A fixed list: one answer, then nothing more.
    Fixed(VecDeque<InstanceUpdate>),
    /// DNS lookups, again and again, for as long as the resolution lives.
    Dns(mpsc::Receiver<Update>),
}

/// Starts following `target`'s instances; DNS targets are looked up in the background, as
/// `dns` says. Must run within a Tokio runtime.
pub(crate) fn resolve(target: &Target, dns: &DnsSettings) -> Result<Resolution, Error> {
    let fixed = |authorities: Vec<String>| {
        let mut answer: VecDeque<_> = authorities
            .into_iter()
            .map(|authority| InstanceUpdate::Insert(authority, Placement::default()))
            .collect();
        answer.push_back(InstanceUpdate::Status(DiscoveryStatus::Static));
        Source::Fixed(answer)
    };
    let (source, refresh) = match target {
        Target::Static(addrs) => (
            fixed(addrs.iter().map(ToString::to_string).collect()),
            Arc::new(Notify::new()),
        ),
        Target::Http { host, port } => (
            fixed(vec![format!("{host}:{port}")]),
            Arc::new(Notify::new()),
        ),
        Target::Dns { .. } | Target::DnsSrv { .. } => {
            let (updates, refresh) = super::dns::spawn(target, dns)?;
            (Source::Dns(updates), refresh)
        }
    };
    Ok(Resolution {
        source,
        refresh,
        first_answer_timeout: dns.first_answer_timeout,
    })
}

impl Resolution {
    /// Notified when a connection to an instance failed: discovery looks again soon (at most
    /// once per refresh floor). Does nothing for a fixed list.
    pub(crate) fn refresh(&self) -> Arc<Notify> {
        self.refresh.clone()
    }

    /// The next update; `None` once there will be no more (a fixed list's single answer has
    /// been taken). Cancel-safe.
    pub(crate) async fn next(&mut self) -> Option<InstanceUpdate> {
        match &mut self.source {
            Source::Fixed(answer) => answer.pop_front(),
            Source::Dns(updates) => updates.recv().await.map(|update| match update {
                Update::Insert(addr, placement) => {
                    InstanceUpdate::Insert(addr.to_string(), placement)
                }
                Update::Remove(addr) => InstanceUpdate::Remove(addr.to_string()),
                Update::Status(status) => InstanceUpdate::Status(status),
            }),
        }
    }

    /// Hands `apply` the updates of the first answer, its status last, waiting for it at most
    /// the first-answer timeout of the DNS settings. Returns whether it came in time; what
    /// came of it was applied either way.
    pub(crate) async fn first_answer(&mut self, mut apply: impl FnMut(InstanceUpdate)) -> bool {
        let within = self.first_answer_timeout;
        let answer = async {
            while let Some(update) = self.next().await {
                let complete = matches!(update, InstanceUpdate::Status(_));
                apply(update);
                if complete {
                    return;
                }
            }
        };
        tokio::time::timeout(within, answer).await.is_ok()
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[tokio::test]
    async fn a_fixed_list_is_one_answer_then_nothing_more() {
        let target: Target = "ipv4:127.0.0.1:1,127.0.0.1:2".parse().unwrap();
        let mut resolution = resolve(&target, &DnsSettings::default()).unwrap();
        let mut applied = Vec::new();
        assert!(resolution.first_answer(|u| applied.push(u)).await);
        assert_eq!(
            applied,
            [
                InstanceUpdate::Insert("127.0.0.1:1".into(), Placement::default()),
                InstanceUpdate::Insert("127.0.0.1:2".into(), Placement::default()),
                InstanceUpdate::Status(DiscoveryStatus::Static),
            ]
        );
        assert_eq!(resolution.next().await, None);

        let target: Target = "http://users.local:50051".parse().unwrap();
        let mut resolution = resolve(&target, &DnsSettings::default()).unwrap();
        assert_eq!(
            resolution.next().await,
            Some(InstanceUpdate::Insert(
                "users.local:50051".into(),
                Placement::default()
            ))
        );
    }
}
