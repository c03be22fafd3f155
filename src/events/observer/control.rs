//! What the supervisor tells each instance stream ([`Instance`]) and gives all of them
//! ([`Shared`]).

use tokio::sync::Semaphore;
use tokio::time::Instant;

use std::sync::Arc;

use super::book::Book;
use super::options::ObserverOptions;

/// What one subscription needs, shared by its instances.
pub(crate) struct Shared {
    pub(crate) options: ObserverOptions,
    pub(crate) handlers: Option<Arc<Semaphore>>,
    /// This observer's name in its consumer group, the same on every producer instance.
    pub(crate) member: String,
    /// Where this observer stands with each producer (plain subscriptions).
    pub(crate) book: Book,
}

/// What the supervisor says of one producer instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Instance {
    /// In discovery: subscribe, and resubscribe whenever the stream ends.
    Active,
    /// Gone from discovery: read the stream until the producer ends it or it breaks, but at
    /// most until then; never subscribe again.
    Retired(Instant),
    /// The observer stops.
    Stopped,
}
