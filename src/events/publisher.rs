//! [`Publisher`]: the untyped core of the generated `{Service}Publisher`s: publishing, one
//! event or a batch, and subscribing. Its settings are in `settings.rs`.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use prost::Message;

use super::disk;
use super::error::PublishError;
use super::hub::Hub;
use super::log::MemoryLog;
use super::protocol::Subscription;
use super::settings::{EventRpc, PublisherSettings, METADATA_ROOM};
use super::stream::EventStream;
use super::wire::{
    epoch_header_value, EPOCH_HEADER, FILTERED_HEADER, MEMBER_CONNECTION_HEADER, START_AFTER_HEADER,
};
use crate::peer::PeerIdentity;
use crate::v1::{AcknowledgeResponse, Acknowledgement, Cursor, Subscribe};
use crate::Error;

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
    pub fn publish_batch<T: Message>(
        &self,
        rpc: usize,
        events: &[T],
    ) -> Result<Option<Cursor>, PublishError> {
        let hub = &self.hubs[rpc];
        #[cfg(feature = "postgres")]
        if let Some(stream) = &self.stream {
            return Err(stream.refuse_plain(&hub.method));
        }
        hub.publish_batch(events)
    }

    #[doc(hidden)]
    pub async fn publish_batch_durable<T: Message>(
        &self,
        rpc: usize,
        events: &[T],
    ) -> Result<Option<Cursor>, PublishError> {
        match self.publish_batch(rpc, events)? {
            Some(last) => self.hubs[rpc].synced(last).await.map(Some),
            None => Ok(None),
        }
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
