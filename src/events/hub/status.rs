//! The hub's part of the admin status of its event RPC: the log's window, where it keeps its
//! events and its last error, the plain subscribers open now and the consumer groups, read
//! under the hub's lock in one look.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use super::Hub;
use crate::admin::v1::{EventRpcStatus, SubscriberStatus};
use crate::events::log::Storage;
use crate::events::wire;

impl Hub {
    /// The status of the event RPC, `bytes_on_disk` left at 0; with the folder of a log in
    /// files, for the caller to measure outside the lock.
    ///
    /// Takes the hub's lock (as a publish does) for a look at the log, the plain subscribers
    /// and every group's events out (see `group::status`); on an admin request only.
    pub(crate) fn status(&self) -> (EventRpcStatus, Option<PathBuf>) {
        let now = tokio::time::Instant::now();
        let mut state = self.lock();
        state
            .log
            .expire(u64::try_from(wire::now_unix_micros()).unwrap_or(0));
        let log = state.log.as_ref();
        let last_sequence = log.latest();
        let oldest = log.oldest();
        let storage = log.storage();
        let folder = match storage {
            Storage::Files(folder) => Some(folder.to_owned()),
            _ => None,
        };
        // Under the lock, no event is published: every cursor is at most `last_sequence`.
        let subscribers = self
            .plain_progress()
            .into_iter()
            .map(|(peer, cursor)| SubscriberStatus {
                peer: peer.map(|peer| peer.to_string()).unwrap_or_default(),
                cursor,
                lag: last_sequence.saturating_sub(cursor),
            })
            .collect();
        let status = EventRpcStatus {
            rpc: format!("/{}", self.method),
            epoch: self.epoch,
            first_sequence: if oldest <= last_sequence { oldest } else { 0 },
            last_sequence,
            storage: storage.name().to_owned(),
            bytes_on_disk: 0,
            subscribers,
            subscribers_cut_off: self.cut_off.load(Ordering::Relaxed),
            groups: state.groups.status(log, now),
            last_error: log.last_error().unwrap_or_default(),
            compacted_keys: log.compacted_keys(),
        };
        (status, folder)
    }
}
