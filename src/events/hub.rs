//! The hub of one event RPC on a publisher: sequence numbers, the retention ring, live
//! fan-out, and where a new subscription starts.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use tokio::sync::broadcast;

use super::stream::EventStream;
use super::wire::encode_metadata_field;
use crate::v1::{Cursor, EventMetadata, StartPosition, Subscribe};

/// One published event, encoded once with its metadata, shared by every subscriber.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) sequence: u64,
    pub(crate) bytes: Bytes,
}

pub(crate) struct Hub {
    /// `package.Service/Method`, for messages.
    pub(crate) method: String,
    pub(crate) epoch: u64,
    /// Per-subscriber buffer: a subscriber further behind than this is cut off.
    pub(crate) buffer: usize,
    state: Mutex<State>,
    /// The sequence of the latest event, for heartbeats.
    latest: AtomicU64,
    /// How many subscribers were cut off for falling behind.
    pub(crate) cut_off: AtomicU64,
}

struct State {
    /// The sequence the next event gets; the first is 1.
    next: u64,
    ring: VecDeque<Arc<Stored>>,
    retain: usize,
    /// The live fan-out; `None` once closed, which ends every subscriber's stream after the
    /// events already handed to it.
    live: Option<broadcast::Sender<Arc<Stored>>>,
}

/// Where a subscription starts: the retained events it gets first, and how many it missed.
#[derive(Debug)]
pub(crate) struct Start {
    pub(crate) backlog: VecDeque<Arc<Stored>>,
    pub(crate) missed: u64,
    pub(crate) live: broadcast::Receiver<Arc<Stored>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("method", &self.method)
            .field("epoch", &self.epoch)
            .field("latest", &self.latest())
            .finish_non_exhaustive()
    }
}

impl Hub {
    pub(crate) fn new(method: String, epoch: u64, retain: usize, buffer: usize) -> Self {
        let buffer = buffer.max(1);
        Self {
            method,
            epoch,
            buffer,
            state: Mutex::new(State {
                next: 1,
                ring: VecDeque::with_capacity(retain.min(4096)),
                retain,
                live: Some(broadcast::channel(buffer).0),
            }),
            latest: AtomicU64::new(0),
            cut_off: AtomicU64::new(0),
        }
    }

    pub(crate) fn latest(&self) -> u64 {
        self.latest.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update of the state is complete before it can panic; poisoning is harmless.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Publishes an event: never waits for subscribers.
    pub(crate) fn publish(&self, event: &impl Message) -> Cursor {
        // Encoded once, outside the lock; only the small metadata is added under it.
        let mut bytes = BytesMut::with_capacity(event.encoded_len() + 32);
        event.encode_raw(&mut bytes);
        let published_at_unix_micros = unix_micros(SystemTime::now());

        let mut state = self.lock();
        let sequence = state.next;
        state.next += 1;
        let metadata = EventMetadata {
            epoch: self.epoch,
            sequence,
            published_at_unix_micros,
            ..EventMetadata::default()
        };
        bytes.put_slice(&encode_metadata_field(&metadata));
        let stored = Arc::new(Stored {
            sequence,
            bytes: bytes.freeze(),
        });
        if state.retain > 0 {
            if state.ring.len() == state.retain {
                state.ring.pop_front();
            }
            state.ring.push_back(stored.clone());
        }
        if let Some(live) = &state.live {
            // No receiver is fine: nobody is subscribed.
            let _ = live.send(stored);
        }
        self.latest.store(sequence, Ordering::Release);
        drop(state);
        Cursor {
            epoch: self.epoch,
            sequence,
        }
    }

    /// Ends every subscription once it has sent what was already published, and refuses new
    /// ones: for shutdown. Publishing still works (events are retained).
    pub(crate) fn close(&self) {
        self.lock().live = None;
    }

    /// Starts a subscription. Taking the backlog and joining the live fan-out happen under one
    /// lock, so no event falls between them or arrives twice.
    pub(crate) fn start(&self, request: &Subscribe) -> Result<Start, tonic::Status> {
        let state = self.lock();
        let Some(live) = state.live.as_ref().map(broadcast::Sender::subscribe) else {
            return Err(tonic::Status::unavailable(format!(
                "{} is shutting down",
                self.method
            )));
        };
        let latest = state.next - 1;
        let oldest = state.ring.front().map_or(latest + 1, |e| e.sequence);
        let start_live = request.start() == StartPosition::Live;
        let from = |first: u64| {
            state
                .ring
                .iter()
                .filter(|e| e.sequence >= first)
                .cloned()
                .collect()
        };
        let everything = || state.ring.iter().cloned().collect();

        let (backlog, missed) = match request.after.as_ref().filter(|c| c.epoch != 0) {
            Some(cursor) if cursor.epoch == self.epoch => {
                let after = cursor.sequence;
                if after > latest {
                    return Err(tonic::Status::invalid_argument(format!(
                        "cursor (epoch {:#x}, sequence {after}) is ahead of {}'s latest event ({latest}); \
                         resubscribe without a cursor",
                        cursor.epoch, self.method
                    )));
                }
                if after + 1 >= oldest {
                    (from(after + 1), 0)
                } else if start_live {
                    (VecDeque::new(), latest - after)
                } else {
                    (everything(), oldest - after - 1)
                }
            }
            // Another epoch: the publisher restarted. What the old process published after the
            // cursor is gone with it; of this epoch, the events no longer retained are missed.
            Some(_) if start_live => (VecDeque::new(), latest),
            Some(_) => (everything(), oldest - 1),
            None if start_live => (VecDeque::new(), 0),
            None => (everything(), 0),
        };
        Ok(Start {
            backlog,
            missed,
            live,
        })
    }

    pub(crate) fn stream<T>(
        self: &Arc<Self>,
        request: &Subscribe,
    ) -> Result<EventStream<T>, tonic::Status> {
        if !request.group.is_empty() {
            return Err(tonic::Status::unimplemented(format!(
                "consumer groups are not served by this version of meshless (group `{}` on {})",
                request.group, self.method
            )));
        }
        let heartbeat = match request.heartbeat_interval_ms {
            0 => None,
            // Faster than every 10 ms is a mistake, not a liveness check.
            ms => Some(Duration::from_millis(u64::from(ms).max(10))),
        };
        let start = self.start(request)?;
        Ok(EventStream::new(self.clone(), start, heartbeat))
    }

    /// The metadata field of a heartbeat (and of a pending `missed` count).
    pub(crate) fn heartbeat_bytes(&self, missed: u64) -> Bytes {
        encode_metadata_field(&EventMetadata {
            epoch: self.epoch,
            sequence: self.latest(),
            published_at_unix_micros: unix_micros(SystemTime::now()),
            missed,
            heartbeat: true,
            ..EventMetadata::default()
        })
    }
}

fn unix_micros(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
#[path = "hub_test.rs"]
mod test;
