//! The observer runtime: subscribes to an event RPC on every instance of a target and hands
//! each event, in order per instance, to a typed handler.
//!
//! One stream per producer, found through discovery (not one instance picked by a balancer):
//! instances that appear are subscribed; instances that leave discovery are read until their
//! producer ends the stream (within a grace), and not subscribed again. The cursor belongs to
//! the producer (its epoch), not to an address (see `book`): a stream reconnects with backoff
//! and jitter and resumes after the last event handled, whichever address the producer is
//! reached at, and a producer at several addresses is read once. A handler error is retried with backoff a bounded number of times, then the event
//! goes to the dead-letter callback. Gaps the publisher reports go to the gap callback. Nothing
//! is skipped silently.
//!
//! Events with keys may be handled several at once (`max_concurrent_handlers`), in order within
//! a key (see `lanes`).
//!
//! In a consumer group, each producer instance hands each event to one member; the member
//! acknowledges what it handled (see `membership`), and leaves the group when it stops.
//!
//! Where things are: `supervisor` follows discovery and spawns, per instance and event RPC,
//! what `control` describes; `run` is one instance stream's reconnect loop (subscribing
//! through `subscribe`, claiming its producer in `book`); `read` reads one stream, woken by
//! `wakeups`; `handling` calls the handler with retries; `lanes` runs keyed events in parallel;
//! `progress` is where a stream stands, kept across restarts by `cursors`; `metrics` holds the
//! metric handles.

mod book;
mod control;
mod cursors;
mod event;
mod handling;
mod lanes;
mod membership;
mod metrics;
mod options;
mod progress;
mod read;
mod run;
mod subscribe;
mod supervisor;
mod wakeups;

pub use cursors::{CursorStore, FileCursors};
pub use event::{DeadLetter, Event, Gap, HandlerError};
pub use options::ObserverOptions;
pub use supervisor::{ObserverBuilder, ObserverHandle};

#[cfg(test)]
mod test;
