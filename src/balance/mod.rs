//! Client-side load balancing over the instances of one target.
//!
//! Each instance has its own HTTP/2 connection, made and remade by a background task. A call
//! picks among the instances whose connection is up by power of two choices over the number of
//! calls in flight: two instances at random, the less loaded one wins. Unlike tonic's balanced
//! channel, whose load signal is always 0 (so it picks at random), a slow instance accumulates
//! calls in flight and is picked less.
//!
//! The per-call path reads a lock-free snapshot of the ready instances and touches only the
//! chosen instance's counters; connection upkeep and set changes happen elsewhere.

mod instance;
mod set;

pub(crate) use set::{error_chain, InstanceSet, Settings};
