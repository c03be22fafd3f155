//! Publishing into a hub: each event encoded once outside the lock, then appended to the log
//! under the next sequence, handed to the consumer groups, and the plain streams that wait
//! woken. A batch takes the lock, writes to the log and wakes the streams once for all its
//! events.

use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

use bytes::BytesMut;
use prost::Message;

use super::{Hub, State};
use crate::events::error::PublishError;
use crate::events::fanout;
use crate::events::log::Stored;
use crate::events::wire;
use crate::v1::Cursor;

/// The most bytes of events (encoded) one batch holds, unless one event may be larger.
pub(crate) const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

impl Hub {
    /// Publishes an event: never waits for subscribers. An event too large for the stream's
    /// message limit is refused, so that it can never hold up the events behind it.
    pub(crate) fn publish(&self, event: &impl Message) -> Result<Cursor, PublishError> {
        let encoded = self.encode(event)?;
        self.append(encoded, None)
    }

    /// Publishes `events` under consecutive sequences, all or none: one too large, or all of
    /// them over [`MAX_BATCH_BYTES`], refuses the batch, and a failed write keeps none of it.
    /// Returns the last one's cursor (`None` for no events).
    pub(crate) fn publish_batch<T: Message>(
        &self,
        events: &[T],
    ) -> Result<Option<Cursor>, PublishError> {
        let encoded = events
            .iter()
            .map(|event| self.encode(event))
            .collect::<Result<Vec<_>, _>>()?;
        if encoded.is_empty() {
            return Ok(None);
        }
        // Bounded: it is written (and copied once for that) under the lock, and a segment of
        // the file log holds it whole.
        let size: usize = encoded.iter().map(|encoded| encoded.bytes.len()).sum();
        let limit = MAX_BATCH_BYTES.max(self.max_event_size);
        if size > limit {
            self.metrics.refused.increment(encoded.len() as u64);
            return Err(PublishError::BatchTooLarge {
                rpc: self.method.clone(),
                events: encoded.len(),
                size,
                limit,
            });
        }
        let mut state = self.lock();
        let first = state.log.next_sequence();
        let stored: Vec<Stored> = encoded
            .into_iter()
            .zip(first..)
            .map(|(encoded, sequence)| encoded.stored(self.epoch, sequence))
            .collect();
        if let Err(error) = state.log.append_all(&stored) {
            drop(state);
            return Err(self.write_failed(&error, stored.len()));
        }
        Ok(Some(self.appended(state, &stored)))
    }

    /// Encodes an event for this event RPC, outside any lock: refuses one too large for the
    /// stream's message limit, and takes its key and the publisher's span.
    pub(crate) fn encode(&self, event: &impl Message) -> Result<Encoded, PublishError> {
        let size = event.encoded_len();
        if size > self.max_event_size {
            self.metrics.refused.increment(1);
            return Err(PublishError::TooLarge {
                rpc: self.method.clone(),
                size,
                limit: self.max_event_size,
            });
        }
        // The publisher's span, for the observers' spans to link to (`opentelemetry` feature).
        let (traceparent, tracestate) = crate::trace_context::of_current_span();
        // Encoded once, outside the lock; only the small metadata is added under it.
        let mut bytes =
            BytesMut::with_capacity(size + 32 + traceparent.len() + tracestate.len() + 8);
        event.encode_raw(&mut bytes);
        let key = self.key.map(|path| path.key_of(&bytes));
        Ok(Encoded {
            bytes,
            key,
            traceparent,
            tracestate,
            published_at: wire::now_unix_micros(),
        })
    }

    /// Appends an encoded event under the next sequence (which must be `expected`, when
    /// given), hands it to the groups and wakes the plain streams waiting for it.
    pub(crate) fn append(
        &self,
        encoded: Encoded,
        expected: Option<u64>,
    ) -> Result<Cursor, PublishError> {
        let mut state = self.lock();
        let sequence = state.log.next_sequence();
        if expected.is_some_and(|expected| expected != sequence) {
            drop(state);
            return Err(PublishError::Io {
                rpc: self.method.clone(),
                reason: format!(
                    "the event's sequence is {expected:?}, the log's next is {sequence}"
                ),
            });
        }
        let stored = encoded.stored(self.epoch, sequence);
        if let Err(error) = state.log.append(stored.clone()) {
            drop(state);
            return Err(self.write_failed(&error, 1));
        }
        Ok(self.appended(state, std::slice::from_ref(&stored)))
    }

    fn write_failed(&self, error: &std::io::Error, events: usize) -> PublishError {
        self.metrics.log_errors.increment(1);
        tracing::error!(rpc = %self.method, %error, events, "writing to the event log failed; publish_* returns the error, and none of the events is published");
        PublishError::Io {
            rpc: self.method.clone(),
            reason: format!("writing the event: {error}"),
        }
    }

    /// The rest of a publish, once `stored` is in the log: counts what compaction dropped,
    /// hands the events to the groups, and wakes the plain streams waiting for them (once).
    /// Returns the last one's cursor.
    fn appended(&self, mut state: MutexGuard<'_, State>, stored: &[Stored]) -> Cursor {
        let dropped = state.log.dropped_past_bound();
        if dropped > state.compaction_dropped {
            self.metrics
                .compaction_dropped
                .increment(dropped - state.compaction_dropped);
            if state.compaction_dropped == 0 {
                tracing::warn!(rpc = %self.method, "more keys than `max_compacted_keys` are kept by compaction: the oldest kept events are dropped (counted in meshless_event_compaction_dropped_total; logged once)");
            }
            state.compaction_dropped = dropped;
        }
        // First deliveries only: a group that cannot take an event now reads it from the log
        // later.
        let State { groups, log, .. } = &mut *state;
        for event in stored {
            groups.offer(event, log.as_mut());
        }
        let sequence = stored.last().map_or(0, |event| event.sequence);
        self.latest.store(sequence, Ordering::Release);
        let woken = state.waiters.take();
        drop(state);
        if !woken.is_empty() {
            let emptied = fanout::wake(woken);
            self.lock().waiters.recycle(emptied);
        }
        self.metrics.published.increment(stored.len() as u64);
        Cursor {
            epoch: self.epoch,
            sequence,
        }
    }
}

/// An event encoded for an event RPC, waiting for its sequence.
#[derive(Debug)]
pub(crate) struct Encoded {
    /// The event's message, encoded; its metadata is appended with the sequence.
    pub(crate) bytes: BytesMut,
    /// The event's key, for an event RPC with keys.
    pub(crate) key: Option<Vec<u8>>,
    /// The publisher's span (W3C trace context), empty without one.
    pub(crate) traceparent: String,
    pub(crate) tracestate: String,
    /// Microseconds since the Unix epoch.
    pub(crate) published_at: i64,
}

impl Encoded {
    /// The event as the log keeps it: its metadata appended, under `sequence` of `epoch`.
    pub(crate) fn stored(self, epoch: u64, sequence: u64) -> Stored {
        let Encoded {
            mut bytes,
            key,
            traceparent,
            tracestate,
            published_at,
        } = self;
        // An empty key (a string or bytes key left unset) is no key.
        let key_hash = key
            .as_deref()
            .filter(|key| !key.is_empty())
            .map(crate::keys::hash);
        // Straight into the event's buffer, which has room for it.
        wire::append_published(
            &mut bytes,
            wire::Published {
                epoch,
                sequence,
                published_at,
                traceparent,
                tracestate,
                key: key.unwrap_or_default(),
            },
        );
        Stored {
            sequence,
            published_at: u64::try_from(published_at).unwrap_or(0),
            bytes: bytes.freeze(),
            key: key_hash,
        }
    }
}
