//! DNS lookups with hickory-resolver, and [`DnsDiscover`], the tower `Discover` over them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tower::discover::Change;

use super::refresh::{self, Schedule, Update};
use lookup::{resolver, DnsLookup, Query};

mod lookup;
use super::DiscoveryStatus;
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
    let lookup = DnsLookup::new(resolver, query);
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
