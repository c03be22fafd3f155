//! Consumer group membership: acknowledging what was printed, and leaving.

use std::net::SocketAddr;
use std::time::Duration;

use meshless::v1::{Acknowledgement, EventGroupsClient};
use meshless::Channel;

use super::Producer;
use crate::error::status_text;
use crate::terminal::printable;

/// The acknowledgement of the last event printed from `producer`, or the request to leave the
/// group (acknowledging it too); `None` when there is nothing to acknowledge.
pub(super) fn acknowledgement(
    producer: &Producer,
    path: &str,
    group: &str,
    member: &str,
    leave: bool,
) -> Option<Acknowledgement> {
    let (handled, connection) = match producer.last {
        Some((cursor, connection)) => (Some(cursor), connection),
        None if leave => (None, 0),
        None => return None,
    };
    Some(Acknowledgement {
        rpc: path.to_owned(),
        group: group.to_owned(),
        member: member.to_owned(),
        handled,
        leave,
        connection,
        ..Acknowledgement::default()
    })
}

/// Sends `request` to a producer, waiting at most `timeout`. A failure is reported and
/// otherwise ignored: the producer gives the event out again.
pub(super) async fn acknowledge(
    instance: SocketAddr,
    channel: Channel,
    request: Acknowledgement,
    timeout: Duration,
) {
    let leave = request.leave;
    let client = EventGroupsClient::new(channel);
    let what = if leave {
        "leaving the group"
    } else {
        "acknowledging"
    };
    match tokio::time::timeout(timeout, client.acknowledge(request)).await {
        Ok(Ok(_)) => {}
        // A member that had nothing yet may be unknown to a producer: nothing to leave.
        Ok(Err(status)) if leave && status.code() == tonic::Code::NotFound => {}
        Ok(Err(status)) => {
            eprintln!(
                "meshless: {instance}: {what} failed: {}",
                printable(&status_text(&status))
            )
        }
        Err(_) => eprintln!("meshless: {instance}: {what} took more than {timeout:?}"),
    }
}
