//! [`PublisherSettings`], and [`EventRpc`]: what the generator says of each event RPC. With them
//! a publisher configures the hub and the log of each event RPC.

use super::hub::HubSettings;
use super::log::Limits;

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
pub(super) const METADATA_ROOM: usize = 1024;

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
