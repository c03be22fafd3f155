//! [`Channel`]: one client-side view of all the instances of a target.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::call::CallPolicy;
use crate::endpoint::Connector;
use tokio::sync::{oneshot, watch};
use tonic::body::Body;

use crate::balance::{Ejection, InstanceSet, Settings};
use crate::discovery::{self, DiscoveryStatus, DnsSettings, InstanceUpdate, Resolution};
use crate::extra_metadata::ExtraMetadata;
use crate::{Error, Target};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The future of a call through a [`Channel`].
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send + 'static>>;

/// Calls to a target, spread over its instances.
///
/// A `Channel` keeps one HTTP/2 connection per instance of its [`Target`] and sends each call
/// to one ready instance, chosen by power of two choices over the calls in flight. An
/// instance whose connection fails is not picked until it has reconnected.
///
/// When no instance is ready, a call waits for one while connections are still being made,
/// at most its own deadline or [`ChannelBuilder::wait_timeout`], and then fails with
/// `UNAVAILABLE`, naming the target and why. It never hangs.
///
/// Generated clients take a `Channel`; it is also a tower `Service` usable with any tonic
/// client. Clones are cheap and share the connections.
///
/// ```no_run
/// # async fn run() -> Result<(), meshless::Error> {
/// let channel = meshless::Channel::connect("ipv4:10.0.0.1:50051,10.0.0.2:50051").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Channel {
    instances: Arc<InstanceSet>,
    policy: Arc<CallPolicy>,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("target", &self.instances.target())
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// A channel to `target` with the default settings. See [`ChannelBuilder`].
    pub async fn connect(target: &str) -> Result<Self, Error> {
        Self::builder().connect(target).await
    }

    /// Settings for a channel.
    pub fn builder() -> ChannelBuilder {
        ChannelBuilder::default()
    }

    /// The target this channel calls, as it was given.
    pub fn target(&self) -> &str {
        self.instances.target()
    }

    /// What discovery last learned about the target's instances, as a watch that changes
    /// with every lookup ([`DiscoveryStatus::Static`] for fixed targets).
    pub fn discovery_status(&self) -> watch::Receiver<DiscoveryStatus> {
        self.instances.discovery_status()
    }

    /// How many instances calls can be sent to now: connected, answering, not ejected, and
    /// of the lowest SRV priority that has any (as the `meshless_client_ready_instances`
    /// gauge).
    pub fn ready_instances(&self) -> usize {
        self.instances.ready_count()
    }
}

/// The timeout of unary calls that set none, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of a [`Channel`]; start with [`Channel::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ChannelBuilder {
    connector: Connector,
    timeout: Option<Duration>,
    attempts: u32,
    wait_timeout: Duration,
    reconnect_backoff: Duration,
    reconnect_backoff_max: Duration,
    ejection: Ejection,
    dns: DnsSettings,
    metadata: ExtraMetadata,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::ClientTls>,
}

impl Default for ChannelBuilder {
    fn default() -> Self {
        Self {
            connector: Connector::default(),
            timeout: Some(DEFAULT_TIMEOUT),
            attempts: 3,
            wait_timeout: Duration::from_secs(10),
            reconnect_backoff: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(5),
            ejection: Ejection::default(),
            dns: DnsSettings::default(),
            metadata: ExtraMetadata::default(),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl ChannelBuilder {
    /// How long one connection attempt to an instance may take. Default: 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connector.connect_timeout = timeout;
        self
    }

    /// The timeout of unary and client-streaming calls that set none of their own
    /// (`Request::set_timeout`): past it the call fails with `DEADLINE_EXCEEDED`, and the server
    /// is told (`grpc-timeout`) so that it can stop too. `None`: no default. Default: 30 s.
    /// Streaming responses get no default: they may rightly last for hours.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many times a call may be sent, the first included, when sending it again is safe:
    /// it never reached a server, or its method is idempotent and failed with `UNAVAILABLE`.
    /// Retries are bounded by a budget of 20% of recent calls plus 10 per second. 1: never
    /// retry. Default: 3.
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// HTTP/2 keepalive: a connection with calls or streams open that has been quiet for
    /// `interval` is pinged, and taken for dead (its calls fail, the instance reconnects) when
    /// the ping goes unanswered for `timeout`; a connection without calls is never pinged.
    /// Default: 5 minutes and 20 s, as the gRPC keepalive guide asks of clients: gRPC servers
    /// (C-core, Go, Java) by default close, with GOAWAY `too_many_pings`, connections whose
    /// client pings more often than every 5 minutes. Lower it only for servers that allow it.
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.connector.keepalive_interval = interval;
        self.connector.keepalive_timeout = timeout;
        self
    }

    /// Sends `key: value` with every call (a bearer token, say), unless the call's request
    /// sets `key` itself. May be called for several keys; the last value of a key wins.
    ///
    /// ```
    /// # fn build() -> meshless::ChannelBuilder {
    /// meshless::Channel::builder().metadata(
    ///     meshless::metadata::AsciiMetadataKey::from_static("authorization"),
    ///     meshless::metadata::AsciiMetadataValue::from_static("Bearer billing-secret"),
    /// )
    /// # }
    /// ```
    pub fn metadata(mut self, key: AsciiMetadataKey, value: AsciiMetadataValue) -> Self {
        self.metadata.insert(key, value);
        self
    }

    /// Connects with TLS (or mutual TLS), verifying every instance's certificate against the
    /// target's DNS name (`users.service.consul`), or the name `tls` sets. See
    /// [`crate::tls`].
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::tls::ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// How long a call waits for an instance to become ready when none is, if its own
    /// deadline does not come first. Default: 10 s.
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = timeout;
        self
    }

    /// How long an instance that failed 5 calls in a row (`UNAVAILABLE`, `INTERNAL`,
    /// `UNKNOWN`, `DATA_LOSS`, `RESOURCE_EXHAUSTED`, `DEADLINE_EXCEEDED` or a broken
    /// connection) is left out: `first` the first time, doubling with each ejection that
    /// follows, up to `longest`; 100 successes in a row make the next one a first again. At
    /// most half the connected instances are ejected at once. Default: 1 s and 30 s.
    pub fn ejection(mut self, first: Duration, longest: Duration) -> Self {
        self.ejection = Ejection {
            first,
            longest: longest.max(first),
        };
        self
    }

    /// The first and the longest pause between attempts to reconnect a failed instance; the
    /// pause doubles after each failed attempt, with up to 20% jitter. Default: 100 ms and 5 s.
    pub fn reconnect_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.reconnect_backoff = first;
        self.reconnect_backoff_max = max.max(first);
        self
    }

    /// How `dns:` and `dns+srv:` targets are looked up: refresh floor and ceiling, query
    /// timeout, address family. See [`DnsSettings`] for the defaults.
    pub fn dns(mut self, settings: DnsSettings) -> Self {
        self.dns = settings;
        self
    }

    /// Builds the channel and starts connecting to the target's instances in the background.
    /// For `dns:` and `dns+srv:` targets it waits for the first DNS answer (or failure, then
    /// retried in the background), so that the first call is routed by it; it does not wait
    /// for connections. Must run within a Tokio runtime.
    ///
    /// Fails when the target does not parse, or the DNS resolver cannot be set up.
    pub async fn connect(self, target: &str) -> Result<Channel, Error> {
        let parsed: Target = target.parse()?;
        #[cfg(feature = "tls")]
        let connector = self
            .connector
            .with_tls(self.tls.as_ref(), parsed.server_name());
        #[cfg(not(feature = "tls"))]
        let connector = self.connector;
        let settings = Settings {
            connector,
            wait_timeout: self.wait_timeout,
            reconnect_backoff: self.reconnect_backoff,
            reconnect_backoff_max: self.reconnect_backoff_max,
            ejection: self.ejection,
        };
        let mut resolution = discovery::resolve(&parsed, &self.dns)?;
        let (instances, stopped) =
            InstanceSet::new(target.to_owned(), settings, resolution.refresh());
        // The first answer is applied before the channel is handed out, if it comes in time.
        if !resolution
            .first_answer(|update| apply(&instances, update))
            .await
        {
            let waited = self.dns.first_answer_timeout;
            tracing::warn!(
                target,
                ?waited,
                "no answer from DNS yet; calls fail until one comes"
            );
            instances.set_discovery_status(DiscoveryStatus::Failing {
                error: format!("no answer from DNS within {waited:?}"),
                instances: 0,
            });
        }
        tokio::spawn(follow_discovery(
            resolution,
            Arc::downgrade(&instances),
            stopped,
        ));
        let policy = Arc::new(CallPolicy::new(
            instances.target_name(),
            self.timeout,
            self.attempts,
            self.metadata,
        ));
        crate::admin::registry::register_channel(&instances, policy.metrics.counts.clone());
        Ok(Channel { instances, policy })
    }
}

/// Applies discovery's updates to the instances until the channel is gone.
async fn follow_discovery(
    mut resolution: Resolution,
    instances: std::sync::Weak<InstanceSet>,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            update = resolution.next() => {
                let (Some(update), Some(instances)) = (update, instances.upgrade()) else { return };
                apply(&instances, update);
            }
            _ = &mut stopped => return,
        }
    }
}

fn apply(instances: &Arc<InstanceSet>, update: InstanceUpdate) {
    match update {
        InstanceUpdate::Insert(authority, placement) => {
            if let Err(error) = instances.upsert(authority.clone(), placement) {
                tracing::warn!(target = %instances.target(), instance = %authority, %error, "instance not added");
            }
        }
        InstanceUpdate::Remove(authority) => instances.remove(&authority),
        InstanceUpdate::Status(status) => {
            match &status {
                DiscoveryStatus::Failing {
                    error,
                    instances: kept,
                } => {
                    tracing::warn!(target = %instances.target(), %error, kept, "DNS lookup failed; keeping the known instances");
                }
                DiscoveryStatus::NoInstances { reason } => {
                    tracing::warn!(target = %instances.target(), %reason, "no instances");
                }
                _ => {}
            }
            instances.set_discovery_status(status);
        }
    }
}

impl tower_service::Service<http::Request<Body>> for Channel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is decided per call, when an instance is picked.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(super::call::call(
            self.instances.clone(),
            self.policy.clone(),
            request,
        ))
    }
}
