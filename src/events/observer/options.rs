//! [`ObserverOptions`]: retries, reconnection, heartbeats, callbacks.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::cursors::CursorStore;
use super::event::{DeadLetter, Gap};
use crate::discovery::DnsSettings;
use crate::extra_metadata::ExtraMetadata;
use crate::v1::StartPosition;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};

type Callback<T> = Arc<dyn Fn(&T) + Send + Sync>;

/// How an observer subscribes and handles events. Start from `ObserverOptions::default()`.
///
/// ```no_run
/// use std::time::Duration;
///
/// use meshless::events::{FileCursors, ObserverOptions};
/// use meshless::v1::StartPosition;
///
/// # fn options() -> Result<(), meshless::Error> {
/// // A plain observer: every event from every producer instance, from the oldest retained
/// // one on the first start, then from where it stopped (cursors kept in a file).
/// let plain = ObserverOptions::default()
///     .start(StartPosition::Oldest)
///     .cursor_store(FileCursors::open("feed.cursors")?)
///     .handler_retries(5, Duration::from_millis(200))
///     .on_gap(|gap| eprintln!("missed events: {gap:?}"));
///
/// // A member of a consumer group: each event is handled by one member of "billing", up to
/// // 8 at a time (in order per key, for events with a key).
/// let member = ObserverOptions::default()
///     .consumer_group("billing")
///     .max_concurrent_handlers(8);
/// # let _ = (plain, member);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct ObserverOptions {
    pub(crate) handler_attempts: u32,
    pub(crate) retry_backoff: Duration,
    pub(crate) reconnect_backoff: Duration,
    pub(crate) reconnect_backoff_max: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) keepalive: (Duration, Duration),
    pub(crate) heartbeat: Duration,
    pub(crate) removal_grace: Duration,
    pub(crate) start: StartPosition,
    /// With [`StartPosition::Time`].
    pub(crate) start_time: std::time::SystemTime,
    pub(crate) max_concurrent_handlers: Option<usize>,
    pub(crate) dns: DnsSettings,
    pub(crate) group: Option<String>,
    pub(crate) metadata: ExtraMetadata,
    pub(crate) cursor_store: Option<Arc<dyn CursorStore>>,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::tls::ClientTls>,
    /// Zero: the producer's default.
    pub(crate) member_lease: Duration,
    /// Zero: the producer's default.
    pub(crate) max_unacknowledged: u32,
    pub(crate) on_gap: Callback<Gap>,
    pub(crate) on_dead_letter: Callback<DeadLetter>,
}

impl fmt::Debug for ObserverOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObserverOptions")
            .field("handler_attempts", &self.handler_attempts)
            .field("retry_backoff", &self.retry_backoff)
            .field("reconnect_backoff", &self.reconnect_backoff)
            .field("heartbeat", &self.heartbeat)
            .field("removal_grace", &self.removal_grace)
            .field("start", &self.start)
            .field("start_time", &self.start_time)
            .field("max_concurrent_handlers", &self.max_concurrent_handlers)
            .field("group", &self.group)
            .field("metadata", &self.metadata)
            .field("cursor_store", &self.cursor_store.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for ObserverOptions {
    fn default() -> Self {
        Self {
            handler_attempts: 3,
            retry_backoff: Duration::from_millis(100),
            reconnect_backoff: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            keepalive: (
                crate::DEFAULT_KEEPALIVE_INTERVAL,
                crate::DEFAULT_KEEPALIVE_TIMEOUT,
            ),
            heartbeat: Duration::from_secs(5),
            removal_grace: Duration::from_secs(30),
            start: StartPosition::Oldest,
            start_time: std::time::UNIX_EPOCH,
            max_concurrent_handlers: None,
            dns: DnsSettings::default(),
            group: None,
            metadata: ExtraMetadata::default(),
            cursor_store: None,
            #[cfg(feature = "tls")]
            tls: None,
            member_lease: Duration::ZERO,
            max_unacknowledged: 0,
            on_gap: Arc::new(|gap: &Gap| {
                tracing::warn!(instance = %gap.instance, rpc = gap.rpc, missed = gap.missed, epoch = gap.epoch, "events missed");
            }),
            on_dead_letter: Arc::new(|dead: &DeadLetter| {
                tracing::error!(
                    instance = %dead.instance, rpc = dead.rpc, epoch = dead.cursor.epoch, sequence = dead.cursor.sequence,
                    attempts = dead.attempts, error = %dead.error, "event handler failed on every attempt; event dead-lettered"
                );
            }),
        }
    }
}

impl ObserverOptions {
    /// How many times a handler is called for one event before the event is dead-lettered,
    /// with exponential backoff from `backoff` between attempts (doubling up to 30 s, or
    /// `backoff` if longer). Default: 3 and 100 ms.
    pub fn handler_retries(mut self, attempts: u32, backoff: Duration) -> Self {
        self.handler_attempts = attempts.max(1);
        self.retry_backoff = backoff;
        self
    }

    /// The first and longest pause before resubscribing after a stream broke; doubles after
    /// each failed attempt, with up to 20% jitter. Default: 100 ms and 10 s.
    pub fn reconnect_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.reconnect_backoff = first;
        self.reconnect_backoff_max = max.max(first);
        self
    }

    /// How often an idle stream carries a heartbeat; a stream silent for three of these is
    /// taken for dead and resubscribed. Default: 5 s; at least 1 s (producers send none more
    /// often).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every.max(Duration::from_secs(1));
        self
    }

    /// How long the stream of a producer instance that left discovery is still read: leaving
    /// discovery means "do not subscribe again", not "drop now", so that what the producer
    /// sends until its drain ends the stream (a rolling deploy removes an instance from DNS
    /// and then stops it) is handled, and a group member stays a member meanwhile. Past the
    /// grace, the stream is let go (a group member leaves the group). An instance back in
    /// discovery within it keeps its stream. Default: 30 s.
    pub fn removal_grace(mut self, grace: Duration) -> Self {
        self.removal_grace = grace;
        self
    }

    /// Where a first subscription starts: the oldest retained event (the default), or live.
    /// For a time, see [`start_at`](Self::start_at).
    ///
    /// [`StartPosition::LatestPerKey`]: the latest event of every key each producer has (with
    /// `compact_by_key`, also those kept past its retained events), in sequence order, then
    /// every event published after, none left out and none twice. Events superseded by a later
    /// event of their key are skipped, not reported as a gap. For an event RPC without a key,
    /// every event is its own key (the same as the oldest). Consumer groups refuse it
    /// (`INVALID_ARGUMENT`; `start` of an observer with a group returns an error): a group
    /// stands at one place in each producer's log.
    pub fn start(mut self, start: StartPosition) -> Self {
        self.start = start;
        self
    }

    /// A first subscription starts at the first event published at or after `time`, by
    /// each producer's clock ("replay everything since 14:00"), then goes on live. Events
    /// retained from before it are skipped. Where a producer no longer retains every event
    /// that may be from after it, the observer starts at the oldest retained event and is
    /// told of a gap. As with [`start`](Self::start), a cursor (from the cursor store, or of
    /// a stream that broke) comes first.
    pub fn start_at(mut self, time: std::time::SystemTime) -> Self {
        self.start = StartPosition::Time;
        self.start_time = time;
        self
    }

    /// At most this many handler calls at once, over all producer instances. Default: no
    /// limit (one call at a time per instance and event RPC, as order requires).
    ///
    /// Above 1, the events of an event RPC with a key (`key` in `option (meshless.v1.event)`)
    /// are handled in keyed lanes: up to `limit` at once per producer instance, of different
    /// keys, and the events of one key one after another, in order. A key that is slow or
    /// keeps failing holds up only its own events. Events without a key stay one at a time.
    pub fn max_concurrent_handlers(mut self, limit: usize) -> Self {
        self.max_concurrent_handlers = Some(limit.max(1));
        self
    }

    /// Joins the consumer group `name`: of all the observers started with the same group name
    /// (typically the instances of one service), each event is handled by one. Every producer
    /// instance gives each event to the member with the fewest unacknowledged events; a member
    /// acknowledges events once handled, and when it stops, leaves so that the events it had not
    /// handled go to the others at once. A member that dies has its unacknowledged events
    /// redelivered to the others once its lease runs out; a redelivered event says so in
    /// [`Event::delivery_count`](super::Event::delivery_count). Delivery is at least once:
    /// handlers should tolerate the (rare) duplicate.
    pub fn consumer_group(mut self, name: impl Into<String>) -> Self {
        self.group = Some(name.into());
        self
    }

    /// Within a consumer group: how long a producer waits for this member to resubscribe
    /// after its stream broke before handing its unacknowledged events to other members.
    /// Default: 5 s; at most 10 minutes.
    pub fn member_lease(mut self, lease: Duration) -> Self {
        self.member_lease = lease.max(Duration::from_millis(1));
        self
    }

    /// Within a consumer group: how many events a producer may deliver to this member before
    /// it has acknowledged them. A member that dies may have these handled twice. Default: 256.
    /// At most the producer's per-subscriber buffer.
    pub fn max_unacknowledged(mut self, events: u32) -> Self {
        self.max_unacknowledged = events.max(1);
        self
    }

    /// Subscribes over TLS (or mutual TLS), verifying every producer instance's certificate
    /// against the target's DNS name, or the name `tls` sets. See [`crate::tls`].
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::tls::ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sends `key: value` with every subscription and acknowledgement (a bearer token, say).
    /// May be called for several keys; the last value of a key wins.
    pub fn metadata(mut self, key: AsciiMetadataKey, value: AsciiMetadataValue) -> Self {
        self.metadata.insert(key, value);
        self
    }

    /// Keeps the last event handled of each producer in `store` (for example
    /// [`FileCursors`](super::FileCursors)), and starts from what it holds: an observer process
    /// that restarts resumes right after the last event it handled, from producers whose epoch
    /// survived too (opened on a directory). Plain observers only: a consumer group's position
    /// is kept by the producer. Default: none (a new observer starts at its start position).
    pub fn cursor_store(mut self, store: impl CursorStore) -> Self {
        self.cursor_store = Some(Arc::new(store));
        self
    }

    /// How `dns:` and `dns+srv:` targets are looked up.
    pub fn dns(mut self, settings: DnsSettings) -> Self {
        self.dns = settings;
        self
    }

    /// How long one connection attempt may take. Default: 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// HTTP/2 keepalive of the connections to producers, as for a channel
    /// ([`ChannelBuilder::keepalive`](crate::ChannelBuilder::keepalive)): a connection with
    /// streams open that has been quiet for `interval` is pinged, and taken for dead when the
    /// ping goes unanswered for `timeout`. Default: 5 minutes and 20 s, within what gRPC servers
    /// allow; heartbeats ([`heartbeat`](Self::heartbeat)) notice a dead producer sooner.
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keepalive = (interval, timeout);
        self
    }

    /// Called when a producer instance reports missed events (default: a warning log).
    pub fn on_gap(mut self, callback: impl Fn(&Gap) + Send + Sync + 'static) -> Self {
        self.on_gap = Arc::new(callback);
        self
    }

    /// Called with an event whose handler failed on every attempt (default: an error log with
    /// the event's cursor).
    pub fn on_dead_letter(
        mut self,
        callback: impl Fn(&DeadLetter) + Send + Sync + 'static,
    ) -> Self {
        self.on_dead_letter = Arc::new(callback);
        self
    }
}
