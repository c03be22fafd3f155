//! [`DiscoveryStatus`]: what a channel last learned about its target's instances.

/// What a [`Channel`](crate::Channel) last learned about its target's instances; watch it with
/// [`Channel::discovery_status`](crate::Channel::discovery_status).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiscoveryStatus {
    /// Fixed instances (`ipv4:`, `ipv6:`, `http://`): there is nothing to discover.
    Static,
    /// The first DNS answer has not arrived yet.
    Pending,
    /// The last DNS answer listed this many instances.
    Resolved {
        /// How many instances the answer listed.
        instances: usize,
    },
    /// The DNS server said, with authority, that there is no instance: the name does not exist
    /// (NXDOMAIN, which Consul answers when no instance is healthy) or has no records of the
    /// type asked. The channel has no instances, and calls fail at once with `UNAVAILABLE`.
    NoInstances {
        /// What the server answered.
        reason: String,
    },
    /// The last lookup failed (timeout, SERVFAIL, REFUSED, unreachable server). The instances
    /// of the last good answer are kept, and the lookup is retried with backoff.
    Failing {
        /// Why the lookup failed.
        error: String,
        /// How many instances are kept from the last good answer.
        instances: usize,
    },
}
