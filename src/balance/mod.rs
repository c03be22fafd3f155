//! Client-side load balancing over the instances of one target.
//!
//! Each instance has its own HTTP/2 connection, made and remade by a background task. A call
//! picks among the instances whose connection is up by power of two choices over the number of
//! calls in flight: two instances drawn at random (in proportion to their SRV weights), the
//! less loaded one wins. Unlike tonic's balanced channel, whose load signal is always 0 (so it
//! picks at random), a slow instance accumulates calls in flight and is picked less. Of SRV
//! priorities, only the lowest with a ready instance is used.
//!
//! The per-call path reads a lock-free snapshot of the ready instances and touches only the
//! chosen instance's counters; connection upkeep and membership changes happen elsewhere.

mod connect;
mod instance;
mod ready;
mod set;

pub(crate) use connect::error_chain;
pub(crate) use instance::Placement;
pub(crate) use set::{InstanceSet, Settings};
