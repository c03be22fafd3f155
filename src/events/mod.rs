//! Events: typed publish/subscribe straight from producer instances to observers, over plain
//! gRPC server streams, with no broker.
//!
//! An event RPC (a server-streaming RPC marked `option (meshless.v1.event)`) is served by the
//! framework from a [`Publisher`]: the producer publishes typed events through the generated
//! `{Service}Publisher`, and every subscriber gets them over its own stream.
//!
//! - Each publisher has an epoch (random, drawn at start) and, per event RPC, a sequence: a
//!   cursor is (epoch, sequence).
//! - An event is encoded once, whatever the number of subscribers; `publish` never waits on
//!   them, and refuses an event too large for the streams. A batch (`publish_*_batch`) is
//!   published all or none, under consecutive sequences, with one write and one wake-up. Events are kept in an event log
//!   (`log`: the last `retain`, in memory; `disk`: in files too, for a publisher opened on a
//!   directory, with its epoch and consumer groups) that every subscriber and consumer group
//!   reads by cursor.
//! - A subscriber resuming inside the retained window loses nothing and sees nothing twice;
//!   outside it, the first event it gets says how many it missed, and after a restart (a new
//!   epoch) also that the old epoch's unseen tail is lost. Never a silent gap.
//! - A subscriber that falls further behind than its buffer is cut off with
//!   `RESOURCE_EXHAUSTED`, and resumes from its cursor.
//! - Idle streams carry heartbeats when the subscriber asks for them.
//! - Consumer groups: subscribers that name a group share its events, each event going to one
//!   member, which acknowledges it through `meshless.v1.EventGroups/Acknowledge`; a member that
//!   leaves, or whose stream ends and does not come back within its lease, has its
//!   unacknowledged events handed to the others (see `meshless/v1/meshless.proto`).
//! - Keys: an event RPC may declare a key field (`key` in its option). The publisher sends each
//!   event's key in its metadata; a consumer group gives each key to one member at a time
//!   (rendezvous hashing), one event of a key out at a time; observers may handle keys in
//!   parallel lanes, each key in order (`ObserverOptions::max_concurrent_handlers`).

mod acknowledgements;
mod disk;
mod error;
mod fanout;
mod filter;
mod group;
mod hub;
mod log;
pub mod observer;
#[cfg(feature = "postgres")]
pub mod postgres;
mod protocol;
mod publisher;
mod settings;
mod status;
mod stream;
mod wire;

pub use acknowledgements::Acknowledgements;
pub use error::PublishError;
pub use filter::Filter;
pub use observer::{
    CursorStore, DeadLetter, Event, FileCursors, Gap, HandlerError, ObserverBuilder,
    ObserverHandle, ObserverOptions,
};
pub use publisher::Publisher;
pub use settings::{EventRpc, PublisherSettings, DEFAULT_RETAIN};
pub use stream::EventStream;
pub use wire::{
    Envelope, EPOCH_HEADER, EVENT_METADATA_FIELD, FILTERED_HEADER, MEMBER_CONNECTION_HEADER,
    START_AFTER_HEADER,
};
