//! DNS lookups with hickory-resolver, and [`DnsDiscover`], the tower `Discover` over them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::{Resolver, TokioResolver};
use tokio::sync::{mpsc, Notify};
use tower::discover::Change;

use super::refresh::{self, Answer, Lookup, Schedule, Update};
use super::DiscoveryStatus;
use super::Placement;
use crate::{Error, Target};

/// Which address records a `dns:` target looks up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum IpFamily {
    /// A and AAAA records (the default).
    #[default]
    Any,
    /// A records only.
    V4,
    /// AAAA records only.
    V6,
}

/// How DNS discovery looks targets up. Build it from `DnsSettings::default()` and change
/// the fields that matter.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DnsSettings {
    /// The shortest time between two lookups, whatever the TTL says, and the rate limit of
    /// the prompt lookups that connection failures ask for. Default: 1 s.
    pub refresh_floor: Duration,
    /// The longest time between two lookups, whatever the TTL says. Default: 30 s.
    pub refresh_ceiling: Duration,
    /// How long one query may take. Default: 2 s.
    pub timeout: Duration,
    /// How many times a failed query is retried before the lookup counts as failed.
    /// Default: 1.
    pub retries: usize,
    /// The first pause after a failed lookup; it doubles up to `refresh_ceiling`.
    /// Default: 250 ms.
    pub retry_backoff: Duration,
    /// The address records of `dns:` targets. Default: [`IpFamily::Any`].
    pub ip_family: IpFamily,
    /// How long a channel or an observer waits for the first answer before it is handed out
    /// anyway. Past it, the channel's status is `Failing` ("no answer from DNS") and calls
    /// fail at once with `UNAVAILABLE` saying so, until an answer arrives (the lookup goes on
    /// in the background). Default: 5 s.
    pub first_answer_timeout: Duration,
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            refresh_floor: Duration::from_secs(1),
            refresh_ceiling: Duration::from_secs(30),
            timeout: Duration::from_secs(2),
            retries: 1,
            retry_backoff: Duration::from_millis(250),
            ip_family: IpFamily::Any,
            first_answer_timeout: Duration::from_secs(5),
        }
    }
}

/// One instance found through DNS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DiscoveredInstance {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The SRV priority (0 for A/AAAA answers): lower is preferred.
    pub priority: u16,
    /// The SRV weight (1 for A/AAAA answers): the share of calls within a priority.
    pub weight: u16,
}

/// The instances of a `dns:` or `dns+srv:` target, as a tower `Discover`: a stream of
/// [`Change`]s keyed by instance address, produced by diffing successive answers.
///
/// Lookups run in a background task that ends when this is dropped. Must be created within a
/// Tokio runtime.
///
/// ```no_run
/// # async fn run() -> Result<(), meshless::Error> {
/// use meshless::discovery::{DnsDiscover, DnsSettings};
/// use tokio_stream::StreamExt;
///
/// let mut instances = DnsDiscover::new("dns+srv://127.0.0.1:8600/users.service.consul", DnsSettings::default())?;
/// while let Some(Ok(change)) = instances.next().await {
///     println!("{change:?}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct DnsDiscover {
    updates: mpsc::Receiver<Update>,
    refresh: Arc<Notify>,
    status: DiscoveryStatus,
}

impl DnsDiscover {
    /// Starts looking `target` up; fails for targets that are not `dns:` or `dns+srv:`.
    pub fn new(target: &str, settings: DnsSettings) -> Result<Self, Error> {
        let (updates, refresh) = spawn(&target.parse()?, &settings)?;
        Ok(Self {
            updates,
            refresh,
            status: DiscoveryStatus::Pending,
        })
    }

    /// What the last lookup found.
    pub fn status(&self) -> &DiscoveryStatus {
        &self.status
    }

    /// Asks for a lookup now (rate-limited to one per `refresh_floor`).
    pub fn refresh_now(&self) {
        self.refresh.notify_one();
    }
}

impl tokio_stream::Stream for DnsDiscover {
    type Item = Result<Change<SocketAddr, DiscoveredInstance>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match self.updates.poll_recv(cx) {
                Poll::Ready(Some(Update::Status(status))) => self.status = status,
                Poll::Ready(Some(Update::Insert(addr, placement))) => {
                    let instance = DiscoveredInstance {
                        addr,
                        priority: placement.priority,
                        weight: placement.weight,
                    };
                    return Poll::Ready(Some(Ok(Change::Insert(addr, instance))));
                }
                Poll::Ready(Some(Update::Remove(addr))) => {
                    return Poll::Ready(Some(Ok(Change::Remove(addr))))
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Starts the refresh loop of a DNS target; returns its updates and the handle that asks for
/// a prompt lookup.
pub(crate) fn spawn(
    target: &Target,
    settings: &DnsSettings,
) -> Result<(mpsc::Receiver<Update>, Arc<Notify>), Error> {
    let (server, query) = match target {
        Target::Dns { server, host, port } => (
            *server,
            Query::Ip {
                host: host.clone(),
                port: *port,
            },
        ),
        Target::DnsSrv { server, name } => (*server, Query::Srv { name: name.clone() }),
        other => return Err(Error::unsupported(format!("`{other}` is not a DNS target"))),
    };
    let resolver = resolver(server, settings)?;
    let lookup = DnsLookup {
        resolver,
        query,
        known_targets: HashMap::new(),
    };
    let schedule = Schedule {
        floor: settings.refresh_floor,
        ceiling: settings.refresh_ceiling.max(settings.refresh_floor),
        retry: settings.retry_backoff,
    };
    let (updates_tx, updates) = mpsc::channel(64);
    let refresh = Arc::new(Notify::new());
    tokio::spawn(refresh::run(lookup, schedule, refresh.clone(), updates_tx));
    Ok((updates, refresh))
}

fn resolver(server: Option<SocketAddr>, settings: &DnsSettings) -> Result<TokioResolver, Error> {
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

enum Query {
    Ip { host: String, port: u16 },
    Srv { name: String },
}

struct DnsLookup {
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
pub(crate) const MAX_INSTANCES_PER_ANSWER: usize = 1024;

impl DnsLookup {
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
