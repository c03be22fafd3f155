//! The observer runtime: subscribes to an event RPC on every instance of a target and hands
//! each event, in order per instance, to a typed handler.
//!
//! One stream per producer instance, found through discovery (not one instance picked by a
//! balancer): instances that appear are subscribed, instances that disappear are let go. Each
//! stream keeps a cursor, reconnects with backoff and jitter, and resumes after the last event
//! handled. A handler error is retried with backoff a bounded number of times, then the event
//! goes to the dead-letter callback. Gaps the publisher reports go to the gap callback. Nothing
//! is skipped silently.
//!
//! In a consumer group, each producer instance hands each event to one member; the member
//! acknowledges what it handled (see `membership`), and leaves the group when it stops.

mod event;
mod membership;
mod options;
mod run;
mod supervisor;

pub use event::{DeadLetter, Event, Gap, HandlerError};
pub use options::ObserverOptions;
pub use supervisor::{ObserverBuilder, ObserverHandle};
