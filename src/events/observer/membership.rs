//! An observer's membership of a consumer group on one producer instance: acknowledging what
//! was handled, batched, and leaving the group when the observer stops.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::backoff::Backoff;
use crate::extra_metadata::ExtraMetadata;
use crate::v1::{AcknowledgeResponse, Acknowledgement, Cursor};

const ACKNOWLEDGE_PATH: &str = "/meshless.v1.EventGroups/Acknowledge";
/// The first and longest pause before an acknowledgement that failed is sent again.
const RETRY_PAUSE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// How long one acknowledgement may take before it is given up and sent again: a producer
/// that takes the call and never answers must not stall the member's acknowledgements.
const ACKNOWLEDGE_TIMEOUT: Duration = Duration::from_secs(10);

/// The membership of one subscription's stream. Acknowledgements are cumulative: the
/// background task sends the latest event handled whenever it changed, one call at a time, so
/// everything handled while a call is on its way is acknowledged by the next one.
pub(crate) struct Membership {
    channel: Channel,
    base: Acknowledgement,
    metadata: ExtraMetadata,
    handled: watch::Sender<Option<Cursor>>,
    task: JoinHandle<()>,
}

impl Membership {
    pub(crate) fn start(channel: Channel, base: Acknowledgement, metadata: ExtraMetadata) -> Self {
        let (handled, updates) = watch::channel(None);
        let task = tokio::spawn(acknowledge_loop(
            channel.clone(),
            base.clone(),
            metadata.clone(),
            updates,
        ));
        Self {
            channel,
            base,
            metadata,
            handled,
            task,
        }
    }

    /// Records an event as handled; it is acknowledged soon after.
    pub(crate) fn handled(&self, cursor: Cursor) {
        self.handled.send_replace(Some(cursor));
    }

    /// Acknowledges everything handled and leaves the group, so that the producer hands the
    /// member's other events to the rest of the group at once. Waits at most `timeout`.
    pub(crate) async fn leave(self, timeout: Duration) {
        self.task.abort();
        let handled = *self.handled.borrow();
        leave(
            self.channel.clone(),
            self.base.clone(),
            &self.metadata,
            handled,
            timeout,
        )
        .await;
    }
}

/// Leaves a group after acknowledging `handled`, waiting at most `timeout`: for a member
/// whose stream is already gone, over a new connection.
pub(crate) async fn leave(
    channel: Channel,
    base: Acknowledgement,
    metadata: &ExtraMetadata,
    handled: Option<Cursor>,
    timeout: Duration,
) {
    let ack = Acknowledgement {
        handled,
        leave: true,
        ..base
    };
    let rpc = ack.rpc.clone();
    match tokio::time::timeout(timeout, acknowledge(channel, ack, metadata)).await {
        Ok(Ok(_)) => tracing::debug!(rpc, "left the consumer group"),
        Ok(Err(status)) => tracing::info!(rpc, code = ?status.code(), message = status.message(), "leaving the consumer group failed; the producer lets the member go when its lease runs out"),
        Err(_) => tracing::info!(rpc, "leaving the consumer group timed out; the producer lets the member go when its lease runs out"),
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn acknowledge_loop(
    channel: Channel,
    base: Acknowledgement,
    metadata: ExtraMetadata,
    mut updates: watch::Receiver<Option<Cursor>>,
) {
    let mut backoff = Backoff::new(RETRY_PAUSE.0, RETRY_PAUSE.1);
    while updates.changed().await.is_ok() {
        let handled = *updates.borrow_and_update();
        let ack = Acknowledgement {
            handled,
            ..base.clone()
        };
        match acknowledge(channel.clone(), ack, &metadata).await {
            Ok(_) => backoff.reset(),
            // The producer will not take it: the member is gone there (its lease ran out, or
            // the producer restarted), or it serves no acknowledgements. The stream ends or
            // carries on as the producer decides; the member rejoins when it resubscribes.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::NotFound
                        | tonic::Code::FailedPrecondition
                        | tonic::Code::InvalidArgument
                        | tonic::Code::Unimplemented
                ) =>
            {
                tracing::warn!(rpc = %base.rpc, group = %base.group, code = ?status.code(), message = status.message(), "acknowledgement refused");
            }
            Err(status) => {
                tracing::debug!(rpc = %base.rpc, code = ?status.code(), message = status.message(), "acknowledgement failed; sending it again");
                tokio::time::sleep(backoff.next_pause()).await;
                updates.mark_changed();
            }
        }
    }
}

async fn acknowledge(
    channel: Channel,
    ack: Acknowledgement,
    metadata: &ExtraMetadata,
) -> Result<AcknowledgeResponse, tonic::Status> {
    let call = async {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<Acknowledgement, AcknowledgeResponse>::default();
        let path = http::uri::PathAndQuery::from_static(ACKNOWLEDGE_PATH);
        let mut request = tonic::Request::new(ack);
        request.set_timeout(ACKNOWLEDGE_TIMEOUT);
        metadata.add_to(request.metadata_mut().as_mut());
        grpc.unary(request, path, codec)
            .await
            .map(tonic::Response::into_inner)
    };
    tokio::time::timeout(ACKNOWLEDGE_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(format!(
                "no answer to an acknowledgement within {ACKNOWLEDGE_TIMEOUT:?}"
            )))
        })
}
