//! The admin status of a publisher's event RPCs (`meshless.admin.v1.EventRpcStatus`, served by
//! the admin service): per event RPC, its retained window, where its log keeps events and the
//! log's last error, its plain subscribers with how far behind each is, and its consumer
//! groups.
//!
//! This module owns the publisher's answer and the one part measured outside every lock (the
//! size of a log's files); each hub gathers the rest under its lock (`hub::status`, with
//! `group::status` for the groups). Gathering happens on an admin request only. What it costs
//! the publish path: one relaxed atomic store per event per plain subscriber (its cursor), and
//! a clock read per acknowledgement (the group's last one); no allocation per event.
//!
//! What is exact and what is not:
//!
//! - Exact at the moment each hub is looked at: the sequences, the groups (see
//!   `group::status` for what `acknowledged_through` and `lag` count), the count of
//!   subscribers cut off, the log's last error and the events kept by compaction.
//! - A plain subscriber's `cursor` is the last sequence its stream handed to the transport (or
//!   passed over by its filter; before any, the one it was told it starts after), not what
//!   reached it: events may still be in the HTTP/2 buffers. Its `lag` counts from there.
//! - `bytes_on_disk` adds up the sizes of the files in the event RPC's folder (segments, events
//!   kept by compaction, the consumer group journal) after the hub's lock is let go: a segment
//!   rolled or removed meanwhile makes it a little off.

use std::path::Path;

use super::Publisher;
use crate::admin::v1::EventRpcStatus;

impl Publisher {
    /// One status per event RPC this publisher serves, by path.
    pub(crate) fn admin_status(&self) -> Vec<EventRpcStatus> {
        let mut rpcs: Vec<EventRpcStatus> = self
            .hubs
            .iter()
            .map(|hub| {
                let (mut status, folder) = hub.status();
                if let Some(folder) = folder {
                    status.bytes_on_disk = bytes_in(&folder);
                }
                status
            })
            .collect();
        rpcs.sort_by(|a, b| a.rpc.cmp(&b.rpc));
        rpcs
    }
}

/// The sizes of the files in `folder`, added up; a file removed while they are read counts
/// as nothing.
fn bytes_in(folder: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.metadata().ok())
        .filter(std::fs::Metadata::is_file)
        .map(|metadata| metadata.len())
        .sum()
}

#[cfg(test)]
mod test;
