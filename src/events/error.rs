//! [`PublishError`]: why an event was not published. Its gRPC status is built in
//! `protocol.rs`, with every other status the events side sends.

/// Why an event was not published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The event, encoded, is larger than what its event RPC delivers
    /// ([`PublisherSettings::max_event_size`](super::PublisherSettings::max_event_size)). It
    /// was not kept: no subscriber will see it.
    #[error("the {rpc} event is {size} bytes encoded; the event RPC delivers at most {limit}")]
    TooLarge {
        /// The event RPC, `package.Service/Method`.
        rpc: String,
        /// The event's encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A batch (`publish_*_batch`) larger, encoded, than one batch may be (64 MiB, or
    /// [`PublisherSettings::max_event_size`](super::PublisherSettings::max_event_size) when
    /// that is larger): none of it was published. Publish it as several batches.
    #[error("the batch of {events} {rpc} events is {size} bytes encoded; a batch holds at most {limit}: publish it as several")]
    BatchTooLarge {
        /// The event RPC, `package.Service/Method`.
        rpc: String,
        /// How many events the batch holds.
        events: usize,
        /// The batch's encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The event could not be written to the event log's files (a full disk, an I/O error),
    /// or, for a durable publish, synced to stable storage. Not kept when it could not be
    /// written; when only the sync failed, it was published but may not survive a crash of
    /// the machine.
    #[error("the {rpc} event log: {reason}")]
    Io {
        /// The event RPC, `package.Service/Method`.
        rpc: String,
        /// What failed.
        reason: String,
    },
    /// The publisher keeps its events in Postgres (feature `postgres`): its events are
    /// published inside a transaction, with `publish_{event}_in`.
    #[error(
        "the {rpc} events are kept in Postgres: publish them inside a transaction with publish_*_in"
    )]
    InTransaction {
        /// The event RPC, `package.Service/Method`.
        rpc: String,
    },
}
