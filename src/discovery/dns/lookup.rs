//! The lookups of one DNS target: the resolver, made for the target's server and settings,
//! and [`DnsLookup`], which asks it for the target's instances (A/AAAA, or SRV records and the
//! addresses of their targets) and tells an authoritative "none" from a failure.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::{Resolver, TokioResolver};

use super::super::refresh::{Answer, Lookup};
use super::{DnsSettings, IpFamily};
use crate::discovery::Placement;
use crate::Error;

pub(super) fn resolver(
    server: Option<SocketAddr>,
    settings: &DnsSettings,
) -> Result<TokioResolver, Error> {
    let mut builder = match server {
        Some(server) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = server.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = server.port();
            let name_server = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
            let config = ResolverConfig::from_parts(None, vec![], vec![name_server]);
            let mut builder =
                Resolver::builder_with_config(config, TokioRuntimeProvider::default());
            builder.options_mut().use_hosts_file = ResolveHosts::Never;
            builder
        }
        None => TokioResolver::builder_tokio().map_err(|e| {
            Error::unsupported(format!("reading the system's DNS configuration: {e}"))
        })?,
    };
    let options = builder.options_mut();
    options.timeout = settings.timeout;
    options.attempts = settings.retries;
    // Our schedule decides when to ask again: the resolver must not answer from a cache.
    options.cache_size = 0;
    options.ip_strategy = match settings.ip_family {
        IpFamily::Any => LookupIpStrategy::Ipv4AndIpv6,
        IpFamily::V4 => LookupIpStrategy::Ipv4Only,
        IpFamily::V6 => LookupIpStrategy::Ipv6Only,
    };
    builder
        .build()
        .map_err(|e| Error::unsupported(format!("building the DNS resolver: {e}")))
}

pub(super) enum Query {
    Ip { host: String, port: u16 },
    Srv { name: String },
}

pub(super) struct DnsLookup {
    resolver: TokioResolver,
    query: Query,
    /// The addresses SRV targets had when last looked up, for when a lookup fails.
    known_targets: HashMap<Name, Vec<IpAddr>>,
}

impl Lookup for DnsLookup {
    async fn lookup(&mut self) -> Result<Answer, String> {
        match &self.query {
            Query::Ip { host, port } => match self.resolver.lookup_ip(host.as_str()).await {
                Ok(ips) => Ok(Answer::Instances {
                    instances: ips
                        .iter()
                        .take(MAX_INSTANCES_PER_ANSWER)
                        .map(|ip| (SocketAddr::new(ip, *port), Placement::default()))
                        .collect(),
                    ttl: remaining(ips.valid_until()),
                }),
                Err(error) => classify(host, &error),
            },
            Query::Srv { name } => {
                let name = name.clone();
                match self.resolver.srv_lookup(name.as_str()).await {
                    Ok(lookup) => self.srv_instances(&lookup).await,
                    Err(error) => classify(&name, &error),
                }
            }
        }
    }
}

/// How many SRV targets are looked up at once.
const TARGET_LOOKUPS_AT_ONCE: usize = 16;
/// The most instances taken from one answer; the rest are left out, with a warning.
const MAX_INSTANCES_PER_ANSWER: usize = 1024;

impl DnsLookup {
    pub(super) fn new(resolver: TokioResolver, query: Query) -> Self {
        Self {
            resolver,
            query,
            known_targets: HashMap::new(),
        }
    }

    /// The SRV records' targets and ports, with addresses from the additional section or,
    /// where it has none for a target, from a lookup of that target: several at once, each
    /// target once. A target whose lookup fails keeps the addresses it had last, and hides no
    /// other; only when every target fails is the answer a failure.
    async fn srv_instances(
        &mut self,
        lookup: &hickory_resolver::lookup::Lookup,
    ) -> Result<Answer, String> {
        let mut ttl = remaining(lookup.valid_until());
        let records: Vec<_> = lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::SRV(srv) => Some(srv.clone()),
                _ => None,
            })
            .collect();
        let mut addresses: HashMap<Name, Vec<IpAddr>> = HashMap::new();
        for srv in &records {
            let extra: Vec<IpAddr> = lookup
                .additionals()
                .iter()
                .filter(|extra| extra.name == srv.target)
                .filter_map(|extra| extra.data.ip_addr())
                .collect();
            if !extra.is_empty() {
                addresses.insert(srv.target.clone(), extra);
            }
        }
        let mut unresolved: Vec<Name> = records
            .iter()
            .map(|srv| srv.target.clone())
            .filter(|target| !addresses.contains_key(target))
            .collect();
        unresolved.sort();
        unresolved.dedup();

        let mut failures = Vec::new();
        let mut running = tokio::task::JoinSet::new();
        let mut pending = unresolved.into_iter();
        loop {
            while running.len() < TARGET_LOOKUPS_AT_ONCE {
                let Some(target) = pending.next() else { break };
                let resolver = self.resolver.clone();
                running.spawn(async move {
                    let found = resolver.lookup_ip(target.clone()).await;
                    (target, found)
                });
            }
            let Some(done) = running.join_next().await else {
                break;
            };
            let Ok((target, found)) = done else { continue };
            match found {
                Ok(found) => {
                    ttl = ttl.min(remaining(found.valid_until()));
                    let ips: Vec<IpAddr> = found.iter().collect();
                    self.known_targets.insert(target.clone(), ips.clone());
                    addresses.insert(target, ips);
                }
                Err(error) if is_authoritative_empty(&error) => {
                    tracing::warn!(target = %target, "SRV target has no address records; skipped");
                    self.known_targets.remove(&target);
                }
                Err(error) => {
                    let known = self.known_targets.get(&target).cloned().unwrap_or_default();
                    tracing::warn!(target = %target, %error, known = known.len(), "looking up an SRV target failed; keeping the addresses it had");
                    failures.push(format!("looking up SRV target {target}: {error}"));
                    if !known.is_empty() {
                        addresses.insert(target, known);
                    }
                }
            }
        }
        self.known_targets
            .retain(|target, _| records.iter().any(|srv| &srv.target == target));

        let mut instances = Vec::new();
        for srv in &records {
            let placement = Placement {
                priority: srv.priority,
                weight: srv.weight,
            };
            let ips = addresses
                .get(&srv.target)
                .map(Vec::as_slice)
                .unwrap_or_default();
            instances.extend(
                ips.iter()
                    .map(|ip| (SocketAddr::new(*ip, srv.port), placement)),
            );
        }
        if instances.is_empty() && !failures.is_empty() {
            // Nothing resolved, and not for want of records: a failure, not an answer.
            return Err(failures.join("; "));
        }
        if instances.len() > MAX_INSTANCES_PER_ANSWER {
            tracing::warn!(
                instances = instances.len(),
                kept = MAX_INSTANCES_PER_ANSWER,
                "more instances than one answer may bring; the rest are left out"
            );
            instances.truncate(MAX_INSTANCES_PER_ANSWER);
        }
        Ok(Answer::Instances { instances, ttl })
    }
}

fn remaining(valid_until: std::time::Instant) -> Duration {
    valid_until.saturating_duration_since(std::time::Instant::now())
}

fn is_authoritative_empty(error: &NetError) -> bool {
    matches!(error, NetError::Dns(DnsError::NoRecordsFound(NoRecords { response_code, .. }))
        if matches!(*response_code, ResponseCode::NXDomain | ResponseCode::NoError))
}

/// Tells an authoritative "no instance" from a failure that says nothing about instances.
fn classify(name: &str, error: &NetError) -> Result<Answer, String> {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(NoRecords { response_code, .. })) => {
            match *response_code {
                ResponseCode::NXDomain => Ok(Answer::NoInstances {
                    reason: format!("{name} does not exist (NXDOMAIN)"),
                }),
                ResponseCode::NoError => Ok(Answer::NoInstances {
                    reason: format!("{name} has no records of the type asked"),
                }),
                code => Err(format!("{name}: {code}")),
            }
        }
        NetError::Timeout => Err(format!("{name}: the DNS server did not answer in time")),
        other => Err(format!("{name}: {other}")),
    }
}
