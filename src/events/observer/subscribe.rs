//! Opening a subscription: the [`Source`] an instance stream subscribes through, and
//! [`Remote`], the one over the network (connect, `Subscribe` with the observer's metadata,
//! the consumer group's [`Membership`], the epoch and start headers of the answer).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use prost::Message;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Endpoint;

use super::membership::{self, Membership};
use crate::events::wire::{
    parse_epoch_header, EventCodec, EPOCH_HEADER, FILTERED_HEADER, MEMBER_CONNECTION_HEADER,
    START_AFTER_HEADER,
};
use crate::extra_metadata::ExtraMetadata;
use crate::v1::{Acknowledgement, Cursor, EventMetadata, Subscribe};

/// The events of one subscription, decoded, with their metadata.
pub(crate) type Events<T> =
    Pin<Box<dyn Stream<Item = Result<(T, EventMetadata), tonic::Status>> + Send>>;

/// A future a [`Source`] returns.
pub(crate) type Pending<'a, R> = Pin<Box<dyn Future<Output = R> + Send + 'a>>;

/// A subscription the producer accepted.
pub(crate) struct Subscribed<T> {
    pub(crate) events: Events<T>,
    /// The producer's epoch, when it said.
    pub(crate) epoch: Option<u64>,
    pub(crate) start_after: Option<u64>,
    pub(crate) membership: Option<Membership>,
    /// Whether the producer said it applies the subscription's filter.
    pub(crate) filtered: bool,
}

/// Where one instance stream subscribes: the producer instance ([`Remote`]), or in tests, a
/// script.
pub(crate) trait Source<T>: Send + Sync + 'static {
    /// Subscribes with `request`. A consumer group member passes its acknowledgement to fill
    /// in (`member`), for the [`Membership`] of the subscription. Errs with why it failed.
    fn subscribe(
        &self,
        request: Subscribe,
        member: Option<Acknowledgement>,
    ) -> Pending<'_, Result<Subscribed<T>, String>>;

    /// Leaves the consumer group after acknowledging `handled`, over a new connection: for a
    /// member whose stream is already gone.
    fn leave(&self, member: Acknowledgement, handled: Option<Cursor>) -> Pending<'_, ()>;
}

/// A producer instance, over the network.
pub(crate) struct Remote {
    pub(crate) rpc: &'static str,
    pub(crate) endpoint: Endpoint,
    pub(crate) metadata: ExtraMetadata,
    pub(crate) connect_timeout: Duration,
}

impl<T> Source<T> for Remote
where
    T: Message + Default + Send + Sync + 'static,
{
    fn subscribe(
        &self,
        request: Subscribe,
        member: Option<Acknowledgement>,
    ) -> Pending<'_, Result<Subscribed<T>, String>> {
        Box::pin(async move {
            let channel = self
                .endpoint
                .connect()
                .await
                .map_err(|error| crate::text::error_chain(&error))?;
            let membership = member
                .map(|member| Membership::start(channel.clone(), member, self.metadata.clone()));
            let mut grpc = tonic::client::Grpc::new(channel);
            let path = http::uri::PathAndQuery::from_static(self.rpc);
            let codec = EventCodec::<T>::default();
            let failed =
                |status: tonic::Status| format!("{:?}: {}", status.code(), status.message());
            grpc.ready().await.map_err(|e| e.to_string())?;
            let mut request = tonic::Request::new(request);
            self.metadata.add_to(request.metadata_mut().as_mut());
            let response = grpc
                .server_streaming(request, path, codec)
                .await
                .map_err(failed)?;
            let header = |name| {
                response
                    .metadata()
                    .get(name)
                    .and_then(|value| value.to_str().ok())
            };
            let epoch = header(EPOCH_HEADER).and_then(parse_epoch_header);
            let start_after = header(START_AFTER_HEADER).and_then(|value| value.parse().ok());
            let filtered = header(FILTERED_HEADER) == Some("1");
            if let (Some(membership), Some(connection)) = (
                &membership,
                header(MEMBER_CONNECTION_HEADER).and_then(|value| value.parse().ok()),
            ) {
                membership.set_connection(connection);
            }
            // Outgoing envelopes never come in; skipped, as they carry nothing decoded.
            let events = response.into_inner().filter_map(|item| match item {
                Ok(envelope) => envelope.into_parts().map(Ok),
                Err(status) => Some(Err(status)),
            });
            Ok(Subscribed {
                events: Box::pin(events),
                epoch,
                start_after,
                membership,
                filtered,
            })
        })
    }

    fn leave(&self, member: Acknowledgement, handled: Option<Cursor>) -> Pending<'_, ()> {
        Box::pin(async move {
            if let Ok(Ok(channel)) =
                tokio::time::timeout(self.connect_timeout, self.endpoint.connect()).await
            {
                membership::leave(
                    channel,
                    member,
                    &self.metadata,
                    handled,
                    self.connect_timeout,
                )
                .await;
            }
        })
    }
}
