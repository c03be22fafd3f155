//! [`Publisher`]: the untyped core of the generated `{Service}Publisher`s.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use prost::Message;

use super::disk;
use super::error::PublishError;
use super::hub::{Hub, HubSettings};
use super::log::{Limits, MemoryLog};
use super::protocol::Subscription;
use super::stream::EventStream;
use super::wire::{
    epoch_header_value, EPOCH_HEADER, FILTERED_HEADER, MEMBER_CONNECTION_HEADER, START_AFTER_HEADER,
};
use crate::peer::PeerIdentity;
use crate::v1::{AcknowledgeResponse, Acknowledgement, Cursor, Subscribe};
use crate::Error;

/// How many events an event RPC keeps when its proto option leaves `retain` at 0.
pub const DEFAULT_RETAIN: usize = 1024;

/// Settings of a publisher. Build from `PublisherSettings::default()`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PublisherSettings {
    /// How far a subscriber may fall behind the latest event before it is cut off with
    /// `RESOURCE_EXHAUSTED` (it then resumes from its cursor). Default: 4096 events.
    pub subscriber_buffer: usize,
    /// How many subscribers without a consumer group one event RPC serves at once; more are
    /// refused with `RESOURCE_EXHAUSTED`. Default: 10,000. (Consumer groups have bounds of their
    /// own: 256 groups per event RPC, 1024 members per group.)
    pub max_subscribers: usize,
    /// The largest event `publish_*` takes, encoded: larger ones are refused with
    /// [`PublishError::TooLarge`](super::PublishError::TooLarge), so that no event can be too large for its streams. Default:
    /// [`DEFAULT_MAX_MESSAGE_SIZE`](crate::DEFAULT_MAX_MESSAGE_SIZE) less 1 KiB for the event's
    /// metadata, which fits the event RPC's default message limit. Raise it together with the
    /// service's `max_encoding_message_size` and the observers' limits.
    pub max_event_size: usize,
    /// At most this many bytes of events are retained per event RPC (encoded, metadata
    /// included), on top of the count: the oldest give way first. Default: none.
    pub max_retained_bytes: Option<u64>,
    /// Events older than this are not retained (checked as events are published and read).
    /// Default: none.
    pub max_retained_age: Option<std::time::Duration>,
    /// For an event RPC with `compact_by_key`: at most this many events are kept past its
    /// retained ones (one per key). Past it, the kept event published first is dropped (each
    /// counted in `meshless_event_compaction_dropped_total`, the first logged), and readers
    /// from before it are told of it as missed. Each kept event costs its encoded size plus
    /// about 150 bytes of memory (and its size on disk, for a publisher with a directory).
    /// Default: 100,000.
    pub max_compacted_keys: usize,
    retain: Vec<(String, usize)>,
}

/// Room left in a message for an event's metadata.
const METADATA_ROOM: usize = 1024;

impl Default for PublisherSettings {
    fn default() -> Self {
        Self {
            subscriber_buffer: 4096,
            max_subscribers: 10_000,
            max_event_size: crate::DEFAULT_MAX_MESSAGE_SIZE - METADATA_ROOM,
            max_retained_bytes: None,
            max_retained_age: None,
            max_compacted_keys: 100_000,
            retain: Vec::new(),
        }
    }
}

impl PublisherSettings {
    /// How many events `rpc` keeps: as set here, else its proto option, else the default.
    pub(super) fn retain_of(&self, rpc: &EventRpc) -> usize {
        self.retain
            .iter()
            .rev()
            .find(|(name, _)| name == rpc.name)
            .map(|(_, events)| *events)
            .unwrap_or(match rpc.retain {
                0 => DEFAULT_RETAIN,
                n => usize::try_from(n).unwrap_or(usize::MAX),
            })
    }

    /// Warns of retention set for event RPCs `service` does not have.
    pub(super) fn check_retain(&self, service: &str, rpcs: &[EventRpc]) {
        for (name, _) in &self.retain {
            if !rpcs.iter().any(|rpc| rpc.name == name) {
                tracing::warn!(service, rpc = %name, "retain set for an event RPC the service does not have");
            }
        }
    }

    /// The settings of the hub of `rpc`, served as `method` in `epoch`.
    pub(super) fn configure(&self, rpc: &EventRpc, method: String, epoch: u64) -> HubSettings {
        HubSettings {
            method,
            epoch,
            retain: self.retain_of(rpc),
            buffer: self.subscriber_buffer,
            max_event_size: self.max_event_size,
            max_subscribers: self.max_subscribers,
            key: rpc.key,
            schema: Some(super::filter::EventSchema {
                descriptors: rpc.descriptors,
                message: rpc.event,
            }),
        }
    }

    /// The log limits of `rpc`.
    pub(super) fn limits(&self, rpc: &EventRpc) -> Limits {
        Limits {
            max_bytes: self.max_retained_bytes,
            max_age: self.max_retained_age,
            compact: (rpc.compact_by_key && rpc.key.is_some()).then_some(self.max_compacted_keys),
        }
    }

    /// Keeps the last `events` events of the event RPC named `rpc` (its name in the proto,
    /// such as `UserSignedUp`), instead of its proto option's `retain`.
    #[must_use]
    pub fn retain(mut self, rpc: &str, events: usize) -> Self {
        self.retain.push((rpc.to_owned(), events));
        self
    }
}

/// One event RPC of a service, as the generator describes it.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct EventRpc {
    /// The RPC's name in the proto, `UserSignedUp`.
    pub name: &'static str,
    /// `retain` from its proto option; 0 for the default.
    pub retain: u64,
    /// Where the event's key is (`key` of its proto option), if it has one.
    pub key: Option<crate::codegen::KeyPath>,
    /// `compact_by_key` from its proto option: keep the latest event of every key.
    pub compact_by_key: bool,
    /// The event message's full name (`.package.Message`), described in `descriptors`: what
    /// subscribers' filters are checked against.
    pub event: &'static str,
    /// The encoded `FileDescriptorSet` of the service's package.
    pub descriptors: &'static [u8],
}

/// Publishes the events of one service instance: per event RPC, a sequence, the retained
/// events, and the subscribers. Cheap to clone; clones publish into the same streams.
///
/// Services use it through their generated `{Service}Publisher`, which has a typed
/// `publish_{event}` method per event RPC, and serve it with their generated service:
///
/// ```no_run
/// mod users {
///     meshless::include_proto!("signup.v1");
/// }
/// use meshless::events::PublisherSettings;
/// use users::{User, UserSignedUpEvent, UsersPublisher};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// // In memory, retaining the proto's `retain` events; or kept in files that survive a
/// // restart: `UsersPublisher::open("/var/lib/users/events")?`.
/// let publisher = UsersPublisher::with_settings(
///     PublisherSettings::default().retain("UserSignedUp", 50_000),
/// );
/// let event = UserSignedUpEvent { user: Some(User { id: 7, ..Default::default() }) };
/// // Returns at once, whatever the subscribers do: the cursor (epoch, sequence) of the event.
/// let cursor = publisher.publish_user_signed_up(event.clone())?;
/// println!("published as {} in epoch {:x}", cursor.sequence, cursor.epoch);
/// // Returns once the event is on stable storage (at once for a publisher in memory).
/// publisher.publish_user_signed_up_durable(event).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Publisher {
    pub(super) hubs: Arc<[Arc<Hub>]>,
    /// For a publisher on Postgres: its stream, which numbers and serves the events that
    /// transactions published.
    #[cfg(feature = "postgres")]
    pub(super) stream: Option<Arc<super::postgres::Stream>>,
}

impl Publisher {
    #[doc(hidden)]
    pub fn new(service: &str, rpcs: &[EventRpc], settings: PublisherSettings) -> Self {
        settings.check_retain(service, rpcs);
        let epoch = new_epoch();
        let hubs = rpcs
            .iter()
            .map(|rpc| {
                let log = MemoryLog::with_limits(settings.retain_of(rpc), settings.limits(rpc));
                let method = format!("{service}/{}", rpc.name);
                let hub = settings.configure(rpc, method, epoch);
                Hub::with_log(hub, Box::new(log), None)
            })
            .collect();
        Self::of(hubs)
    }

    fn of(hubs: Arc<[Arc<Hub>]>) -> Self {
        Self {
            hubs,
            #[cfg(feature = "postgres")]
            stream: None,
        }
    }

    /// A publisher whose events are kept in files under `dir`, one folder per event RPC, and
    /// survive a crash or restart of the process: reopening the directory continues the
    /// epoch and the sequences, so observers resume exactly. After a crash of the machine, or
    /// when a record is torn or corrupt (a disk fault), the events up to the first invalid
    /// record are kept and a new epoch continues them: observers within them resume exactly,
    /// observers past them are told of a gap. One publisher at a time may open a directory: a
    /// second is refused with an error while the first (or anything serving its events) lives.
    #[doc(hidden)]
    pub fn open(
        service: &str,
        rpcs: &[EventRpc],
        settings: PublisherSettings,
        dir: &Path,
    ) -> Result<Self, Error> {
        let io = |what: &str| {
            let what = format!("{what} ({})", dir.display());
            move |error| Error::io(what, error)
        };
        settings.check_retain(service, rpcs);
        if settings.max_event_size > disk::MAX_EVENT - METADATA_ROOM {
            return Err(Error::io(
                format!("opening the event directory ({})", dir.display()),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "max_event_size is {} bytes; an event log in files keeps events of at most {}",
                        settings.max_event_size,
                        disk::MAX_EVENT - METADATA_ROOM
                    ),
                ),
            ));
        }
        let disk_rpcs: Vec<disk::Rpc> = rpcs
            .iter()
            .map(|rpc| disk::Rpc {
                folder: rpc.name,
                method: format!("{service}/{}", rpc.name),
                retain: settings.retain_of(rpc),
                limits: settings.limits(rpc),
            })
            .collect();
        let disk::Opened { epoch, logs } =
            disk::open(dir, &disk_rpcs, new_epoch).map_err(|(what, error)| io(what)(error))?;
        let mut hubs = Vec::with_capacity(rpcs.len());
        for ((rpc, disk_rpc), log) in rpcs.iter().zip(disk_rpcs).zip(logs) {
            let syncer = log.syncer();
            let hub = settings.configure(rpc, disk_rpc.method, epoch);
            hubs.push(Hub::with_log(hub, Box::new(log), Some(syncer)));
        }
        Ok(Self::of(hubs.into()))
    }

    /// The epoch of this publisher: random, drawn when it was created (at process start).
    pub fn epoch(&self) -> u64 {
        self.hubs.first().map_or(0, |hub| hub.epoch)
    }

    /// How many subscribers without a consumer group have a stream open now, over all event
    /// RPCs.
    pub fn subscribers(&self) -> usize {
        self.hubs.iter().map(|hub| hub.plain_subscribers()).sum()
    }

    /// How many subscribers were cut off so far for falling behind, over all event RPCs.
    pub fn subscribers_cut_off(&self) -> u64 {
        self.hubs
            .iter()
            .map(|hub| hub.cut_off.load(Ordering::Relaxed))
            .sum()
    }

    /// Ends every subscriber's stream once it has received what was already published, and
    /// refuses new subscriptions, so that observers move on (to other instances, or to this one
    /// when it comes back). [`drain`](Self::drain) first to lose nothing.
    pub fn close(&self) {
        for hub in self.hubs.iter() {
            hub.close();
        }
    }

    /// Drains, for shutdown: ends the streams of subscribers without a group once they have
    /// been sent every event published, and waits until they have ended and every consumer
    /// group has acknowledged every event, or until `deadline`. Returns whether everything
    /// drained. Publish nothing more once this is called: plain subscribers would not get it.
    ///
    /// Groups without any member (none connected, none within its lease) are not waited for;
    /// their events are logged as lost, and the drain reported as incomplete. `meshless::Server` drains every publisher it serves
    /// when it shuts down, then [`close`](Self::close)s it.
    pub async fn drain(&self, deadline: tokio::time::Instant) -> bool {
        for hub in self.hubs.iter() {
            hub.close_plain();
        }
        let mut drained = true;
        for hub in self.hubs.iter() {
            drained &= hub.wait_drained(deadline).await;
        }
        drained
    }

    /// The gRPC paths of the event RPCs, `/package.Service/Method`.
    pub(crate) fn paths(&self) -> impl Iterator<Item = String> + '_ {
        self.hubs.iter().map(|hub| format!("/{}", hub.method))
    }

    /// Acknowledges what a consumer group member handled, when `ack.rpc` is one of this
    /// publisher's event RPCs; `None` otherwise.
    pub(crate) fn acknowledge(
        &self,
        ack: &Acknowledgement,
        identity: Option<&PeerIdentity>,
    ) -> Option<Result<AcknowledgeResponse, tonic::Status>> {
        let method = ack.rpc.strip_prefix('/').unwrap_or(&ack.rpc);
        let hub = self.hubs.iter().find(|hub| hub.method == method)?;
        Some(hub.acknowledge(ack, identity))
    }

    #[doc(hidden)]
    pub fn publish<T: Message>(&self, rpc: usize, event: &T) -> Result<Cursor, PublishError> {
        let hub = &self.hubs[rpc];
        #[cfg(feature = "postgres")]
        if let Some(stream) = &self.stream {
            return Err(stream.refuse_plain(&hub.method));
        }
        hub.publish(event)
    }

    #[doc(hidden)]
    pub async fn publish_durable<T: Message>(
        &self,
        rpc: usize,
        event: &T,
    ) -> Result<Cursor, PublishError> {
        let cursor = self.publish(rpc, event)?;
        self.hubs[rpc].synced(cursor).await
    }

    /// How many times the event logs were synced to stable storage (`fdatasync`), over all
    /// event RPCs; 0 for a publisher in memory. Durable publishes share syncs.
    pub fn syncs(&self) -> u64 {
        self.hubs.iter().map(|hub| hub.syncs()).sum()
    }

    #[doc(hidden)]
    pub fn subscribe<T>(
        &self,
        rpc: usize,
        request: tonic::Request<Subscribe>,
    ) -> Result<tonic::Response<EventStream<T>>, tonic::Status> {
        let hub = &self.hubs[rpc];
        let mut subscription = Subscription::parse(request.get_ref())?;
        subscription.peer = request.remote_addr();
        if let Some(membership) = &mut subscription.membership {
            membership.identity = PeerIdentity::of(request.extensions());
        }
        let stream = EventStream::open(hub, &subscription)?;
        let filtered = !subscription.filter.all_of.is_empty();
        let start_after = stream.start_after();
        let connection = stream.member_connection();
        let mut response = tonic::Response::new(stream);
        let headers = response.metadata_mut();
        if let Ok(value) = epoch_header_value(hub.epoch).parse() {
            headers.insert(EPOCH_HEADER, value);
        }
        if let Some(Ok(value)) = start_after.map(|sequence| sequence.to_string().parse()) {
            headers.insert(START_AFTER_HEADER, value);
        }
        if let Some(Ok(value)) = connection.map(|connection| connection.to_string().parse()) {
            headers.insert(MEMBER_CONNECTION_HEADER, value);
        }
        if filtered {
            headers.insert(
                FILTERED_HEADER,
                tonic::metadata::MetadataValue::from_static("1"),
            );
        }
        Ok(response)
    }
}

/// A random epoch: zero is "no cursor" on the wire, so an epoch is never zero.
pub(super) fn new_epoch() -> u64 {
    loop {
        let epoch = fastrand::u64(..);
        if epoch != 0 {
            return epoch;
        }
    }
}
