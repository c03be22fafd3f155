//! Discovery: finding the instances of a target, through DNS or from a fixed list.
//!
//! `resolve` turns any target into one stream of instance updates (a fixed list is a single
//! answer), which the channel and the observer both follow.
//!
//! `dns:` targets look up A and AAAA records (Kubernetes headless Services, Consul, plain DNS);
//! `dns+srv:` targets look up SRV records, which carry each instance's port, priority and
//! weight (Consul's `users.service.consul`). The answers become a stream of
//! [`Change`](tower::discover::Change)s keyed by instance address, produced by diffing
//! successive answers: a tower `Discover` ([`DnsDiscover`]), which [`Channel`](crate::Channel)
//! consumes to keep its connections.
//!
//! Two kinds of bad news are told apart:
//!
//! - A **failure** (timeout, SERVFAIL, REFUSED, an unreachable server) says nothing about the
//!   instances: the last known good set is kept, the failure is logged, and the lookup is
//!   retried with backoff. Calls keep going to the instances already known.
//! - An **authoritative empty answer** (NXDOMAIN, or no record of the type asked) means there is
//!   no instance: Consul answers NXDOMAIN when no instance is healthy. The set is emptied, and
//!   calls fail at once with `UNAVAILABLE`.
//!
//! Lookups follow the answer's TTL, clamped between a floor and a ceiling (defaults: 1 s and
//! 30 s; Consul answers with TTL 0). The resolver's own cache is off, so an answer is never
//! served past that schedule. A failed connection to an instance asks for a prompt lookup,
//! rate-limited to one per floor.

mod dns;
mod refresh;
mod resolve;
mod status;

pub use dns::{DiscoveredInstance, DnsDiscover, DnsSettings, IpFamily};
pub use status::DiscoveryStatus;

pub(crate) use resolve::{resolve, InstanceUpdate, Placement, Resolution};
