//! Resolving a target to its instances as a meshless client would, and a channel to one
//! instance.
//!
//! `dns:` and `dns+srv:` targets are looked up by meshless's own discovery
//! ([`DnsDiscover`]): the first answer is awaited (with a timeout), and its changes can be
//! followed after it (`tail` subscribes to instances that appear later). `ipv4:`/`ipv6:` lists
//! are their addresses; `http://host:port` is looked up once by the system.
//!
//! An authoritative empty answer (NXDOMAIN, no records) and a failed lookup are both errors
//! here, each saying which it was: a command about instances has nothing to do without any.

use std::collections::BTreeSet;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use meshless::discovery::{DiscoveryStatus, DnsDiscover, DnsSettings};
use meshless::{Channel, Target};
use tokio::time::Instant;
use tokio_stream::Stream;

use crate::args::Headers;
use crate::error::Error;

/// A target's instances: the first answer, and for DNS targets the lookups that follow.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// The instances of the first answer, sorted.
    pub(crate) instances: Vec<SocketAddr>,
    /// For `dns:` and `dns+srv:` targets: the changes after the first answer.
    pub(crate) changes: Option<DnsDiscover>,
}

/// Parses `target` and finds its instances, waiting at most `timeout` for DNS.
pub(crate) async fn resolve(target: &str, timeout: Duration) -> Result<Resolved, Error> {
    let parsed: Target = target
        .parse()
        .map_err(|error| Error::new(format!("{error}")))?;
    match parsed {
        Target::Static(addrs) => Ok(Resolved {
            instances: sorted(addrs),
            changes: None,
        }),
        Target::Http { host, port } => {
            let found =
                tokio::time::timeout(timeout, tokio::net::lookup_host((host.as_str(), port)))
                    .await
                    .map_err(|_| {
                        Error::new(format!(
                            "{target}: looking up {host} took more than {timeout:?}"
                        ))
                    })?
                    .map_err(|error| {
                        Error::new(format!("{target}: looking up {host} failed: {error}"))
                    })?;
            // One host, one instance: the first address the system gives, as a connection
            // would use.
            let first = found.into_iter().next().ok_or_else(|| {
                Error::new(format!(
                    "{target} resolved to no instance: {host} has no address"
                ))
            })?;
            Ok(Resolved {
                instances: vec![first],
                changes: None,
            })
        }
        _ => resolve_dns(target, timeout).await,
    }
}

/// DNS lookups that give up on the first answer after `timeout`, each query after at most
/// that too: the commands' `--timeout` covers DNS.
pub(crate) fn dns_settings(timeout: Duration) -> DnsSettings {
    let mut settings = DnsSettings::default();
    settings.first_answer_timeout = timeout;
    settings.timeout = settings.timeout.min(timeout);
    settings
}

async fn resolve_dns(target: &str, timeout: Duration) -> Result<Resolved, Error> {
    let mut discover = DnsDiscover::new(target, dns_settings(timeout))
        .map_err(|error| Error::new(format!("{target}: {error}")))?;
    let deadline = Instant::now() + timeout;
    let mut instances = BTreeSet::new();
    loop {
        // The changes of one lookup come first, then its status: the first answer is complete
        // once the status is no longer pending and no change is waiting.
        let next = poll_fn(|cx| match poll_next_change(&mut discover, cx) {
            Poll::Ready(change) => Poll::Ready(Some(change)),
            Poll::Pending if *discover.status() != DiscoveryStatus::Pending => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        });
        match tokio::time::timeout_at(deadline, next).await {
            Err(_) => {
                return Err(Error::new(format!(
                    "{target}: no answer from DNS within {timeout:?}"
                )))
            }
            Ok(Some(Some(Change::Insert(addr)))) => {
                instances.insert(addr);
            }
            Ok(Some(Some(Change::Remove(addr)))) => {
                instances.remove(&addr);
            }
            Ok(Some(None)) => {
                return Err(Error::new(format!(
                    "{target}: DNS discovery stopped before its first answer"
                )))
            }
            Ok(None) => break,
        }
    }
    match discover.status().clone() {
        DiscoveryStatus::NoInstances { reason } => Err(Error::new(format!(
            "{target} resolved to no instance: {reason}"
        ))),
        DiscoveryStatus::Failing { error, .. } => Err(Error::new(format!(
            "{target}: the DNS lookup failed: {error}"
        ))),
        _ if instances.is_empty() => Err(Error::new(format!("{target} resolved to no instance"))),
        _ => Ok(Resolved {
            instances: instances.into_iter().collect(),
            changes: Some(discover),
        }),
    }
}

/// One change of a target's instances, by address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// An instance appeared (or its SRV placement changed).
    Insert(SocketAddr),
    /// An instance is gone.
    Remove(SocketAddr),
}

/// [`DnsDiscover`]'s next change, without tower's types; `Ready(None)` when discovery
/// stopped.
fn poll_next_change(
    discover: &mut DnsDiscover,
    cx: &mut std::task::Context<'_>,
) -> Poll<Option<Change>> {
    Pin::new(discover).poll_next(cx).map(|change| {
        change.map(|change| match change {
            Ok(tower::discover::Change::Insert(addr, _)) => Change::Insert(addr),
            Ok(tower::discover::Change::Remove(addr)) => Change::Remove(addr),
            Err(never) => match never {},
        })
    })
}

/// The next change of a DNS target's instances; `None` when discovery stopped.
pub(crate) async fn next_change(discover: &mut DnsDiscover) -> Option<Change> {
    poll_fn(|cx| poll_next_change(discover, cx)).await
}

fn sorted(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let set: BTreeSet<SocketAddr> = addrs.into_iter().collect();
    set.into_iter().collect()
}

/// A channel to exactly one instance, whose calls fail (not wait) soon when it is down, and
/// carry `headers`.
pub(crate) async fn channel_to(
    addr: SocketAddr,
    timeout: Duration,
    headers: &Headers,
) -> Result<Channel, Error> {
    let target = match addr {
        SocketAddr::V4(_) => format!("ipv4:{addr}"),
        SocketAddr::V6(_) => format!("ipv6:{addr}"),
    };
    headers
        .apply(Channel::builder())
        .connect_timeout(timeout)
        .wait_timeout(timeout)
        .timeout(Some(timeout))
        .attempts(1)
        .connect(&target)
        .await
        .map_err(|error| Error::new(format!("{addr}: {error}")))
}
