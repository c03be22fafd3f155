//! Client-side load balancing over the instances of one target.
//!
//! Each instance has its own HTTP/2 connection, made and remade by a background task. A call
//! picks among the instances whose connection is up by power of two choices: two instances
//! drawn at random (in proportion to their SRV weights), the less loaded one wins: the one with
//! fewer calls in flight, or, when one answers over 4 times slower than the other (an EWMA of
//! response times, `latency`), the faster, so that a slow instance is avoided once it answers
//! slowly, not only once calls pile up on it. Unlike tonic's balanced channel, whose load
//! signal is always 0 (so it picks at random). Of SRV priorities, only the
//! lowest with a ready instance is used.
//!
//! The per-call path reads a lock-free snapshot of the ready instances and touches only the
//! chosen instance's counters; connection upkeep and membership changes happen elsewhere.

mod connect;
mod connection;
mod failure;
mod instance;
mod latency;
mod ready;
mod set;
mod watched;

pub(crate) use failure::{counts_against, Ejection, Failure};
pub(crate) use instance::{InFlight, Instance, State};
pub(crate) use set::{InstanceSet, Settings};
