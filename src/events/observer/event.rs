//! What observers receive: [`Event`]s, and reports of [`Gap`]s and [`DeadLetter`]s.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::v1::{Cursor, EventMetadata};

/// The error a handler returns to have an event retried (and, after the last attempt,
/// dead-lettered).
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// One event, as an observer's handler receives it. Cloning is cheap (the event is shared).
#[derive(Debug)]
pub struct Event<T> {
    inner: Arc<Inner<T>>,
}

#[derive(Debug)]
struct Inner<T> {
    message: T,
    metadata: EventMetadata,
    instance: Arc<str>,
    rpc: &'static str,
}

impl<T> Clone for Event<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T> Event<T> {
    pub(crate) fn new(
        message: T,
        metadata: EventMetadata,
        instance: Arc<str>,
        rpc: &'static str,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                message,
                metadata,
                instance,
                rpc,
            }),
        }
    }

    /// The event's message.
    pub fn message(&self) -> &T {
        &self.inner.message
    }

    /// The event's message, taken out (copied if the event is still shared).
    pub fn into_message(self) -> T
    where
        T: Clone,
    {
        Arc::try_unwrap(self.inner)
            .map_or_else(|shared| shared.message.clone(), |inner| inner.message)
    }

    /// Where the event stands in its publisher's stream.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            epoch: self.inner.metadata.epoch,
            sequence: self.inner.metadata.sequence,
        }
    }

    /// The event RPC it came from, `/package.Service/Method`: with [`cursor`](Self::cursor),
    /// what names the event among all that an observer handles.
    pub fn rpc(&self) -> &'static str {
        self.inner.rpc
    }

    /// When it was published, by the publisher's clock.
    pub fn published_at(&self) -> SystemTime {
        let micros = u64::try_from(self.inner.metadata.published_at_unix_micros).unwrap_or(0);
        // A producer's clock may say anything; no time past what this platform holds.
        UNIX_EPOCH
            .checked_add(Duration::from_micros(micros))
            .unwrap_or(UNIX_EPOCH)
    }

    /// The producer instance it came from (`127.0.0.1:50051`).
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// How many times the event was delivered to this observer's consumer group, this time
    /// included: 1 the first time, more when it is redelivered because a member failed before
    /// acknowledging it (it may have been handled already). 0 outside consumer groups.
    pub fn delivery_count(&self) -> u32 {
        self.inner.metadata.delivery_count
    }

    /// The event's key, when its event RPC declares one (`key` in `option (meshless.v1.event)`):
    /// a string or bytes field's bytes, an integer or enum in decimal digits, `true` or `false`.
    /// Empty otherwise.
    pub fn key(&self) -> &[u8] {
        &self.inner.metadata.key
    }

    /// All the metadata that came with it.
    pub fn metadata(&self) -> &EventMetadata {
        &self.inner.metadata
    }
}

impl<T> std::ops::Deref for Event<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.inner.message
    }
}

/// Events an observer will never get from one producer instance: they were no longer
/// retained when it resubscribed, or the producer restarted and lost them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The producer instance.
    pub instance: String,
    /// The event RPC, `/package.Service/Method`.
    pub rpc: &'static str,
    /// How many events of `epoch` were missed: no longer retained when the observer came back.
    pub missed: u64,
    /// The epoch of the events after the gap.
    pub epoch: u64,
    /// Set when the producer restarted (a new epoch) since the observer's cursor: the epoch
    /// before, whose events after the cursor are lost with the old process, in a number nobody
    /// knows (as etcd's `ErrCompacted`). `missed` then counts only the new epoch's events.
    pub previous_epoch: Option<u64>,
}

/// An event whose handler failed on every attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The producer instance.
    pub instance: String,
    /// The event RPC, `/package.Service/Method`.
    pub rpc: &'static str,
    /// The event's cursor.
    pub cursor: Cursor,
    /// How many times the handler was called.
    pub attempts: u32,
    /// The last error.
    pub error: String,
}
