//! One producer instance being tailed: its task subscribes, subscribes again after each break
//! (after the last event received, outside a group), and hands the events over in order.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meshless::v1::{Cursor, EventMetadata, Subscribe};
use meshless::Channel;
use prost::bytes::Bytes;
use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tokio::sync::mpsc;

use super::{Delivery, Producer, Subscription, MAX_BACKOFF, MEMBER_CONNECTION};
use crate::codec::RawCodec;
use crate::error::{status_text, Error};
use crate::resolve::channel_to;

/// An event message's metadata, in the field every event message reserves for it; the
/// message's own fields are skipped as unknown.
#[derive(Clone, PartialEq, Message)]
pub(super) struct Envelope {
    #[prost(message, optional, tag = "536870000")]
    pub(super) metadata: Option<EventMetadata>,
}

pub(super) async fn start(
    addr: SocketAddr,
    subscription: &Subscription,
    deliveries: mpsc::Sender<Delivery>,
) -> Result<Producer, Error> {
    let channel = channel_to(addr, subscription.timeout, &subscription.headers).await?;
    let removed = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(follow(
        addr,
        channel.clone(),
        subscription.clone(),
        deliveries,
        removed.clone(),
    ));
    Ok(Producer {
        channel,
        task,
        removed,
        last: None,
        refused: false,
    })
}

/// Subscribes to one producer, again after each break, until told it is removed.
async fn follow(
    instance: SocketAddr,
    channel: Channel,
    subscription: Subscription,
    deliveries: mpsc::Sender<Delivery>,
    removed: Arc<AtomicBool>,
) {
    let mut after: Option<Cursor> = None;
    let mut backoff = Duration::from_millis(250);
    loop {
        let mut request = subscription.request.clone();
        // A group member that comes back gets its unacknowledged events again without it.
        if request.group.is_empty() {
            request.after = after;
        }
        let mut received = false;
        let result = stream(
            instance,
            &channel,
            &subscription,
            request,
            &deliveries,
            &mut after,
            &mut received,
        )
        .await;
        let delivery = match result {
            Ok(()) => Delivery::Broken {
                instance,
                error: "the producer ended the stream".to_owned(),
            },
            Err(status) if refused_for_good(status.code()) => {
                let _ = deliveries
                    .send(Delivery::Refused {
                        instance,
                        error: status_text(&status),
                    })
                    .await;
                return;
            }
            Err(status) => Delivery::Broken {
                instance,
                error: status_text(&status),
            },
        };
        if removed.load(Ordering::Relaxed) || deliveries.send(delivery).await.is_err() {
            return;
        }
        if received {
            backoff = Duration::from_millis(250);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        if removed.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// Statuses that subscribing again will not change.
fn refused_for_good(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unimplemented
            | InvalidArgument
            | NotFound
            | FailedPrecondition
            | PermissionDenied
            | Unauthenticated
    )
}

/// One stream: subscribes and hands every event over until the stream ends.
async fn stream(
    instance: SocketAddr,
    channel: &Channel,
    subscription: &Subscription,
    request: Subscribe,
    deliveries: &mpsc::Sender<Delivery>,
    after: &mut Option<Cursor>,
    received: &mut bool,
) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    let path = subscription
        .path
        .parse()
        .map_err(|_| tonic::Status::invalid_argument("not a valid gRPC path"))?;
    let request = tonic::Request::new(Bytes::from(request.encode_to_vec()));
    let response = tokio::time::timeout(subscription.timeout, async {
        grpc.ready()
            .await
            .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
        grpc.server_streaming(request, path, RawCodec).await
    })
    .await
    .map_err(|_| {
        tonic::Status::deadline_exceeded(format!(
            "no answer to the subscription within {:?}",
            subscription.timeout
        ))
    })??;
    let connection = response
        .metadata()
        .get(MEMBER_CONNECTION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let mut events = response.into_inner();
    while let Some(encoded) = events.message().await? {
        let metadata = Envelope::decode(encoded.clone())
            .ok()
            .and_then(|envelope| envelope.metadata)
            .unwrap_or_default();
        if metadata.heartbeat {
            continue;
        }
        let event = match decode_event(&subscription.event_type, encoded) {
            Ok(event) => event,
            Err(error) => serde_json::json!({ "undecodable": error }),
        };
        *after = Some(Cursor {
            epoch: metadata.epoch,
            sequence: metadata.sequence,
        });
        *received = true;
        let delivery = Delivery::Event {
            instance,
            metadata,
            event,
            connection,
        };
        if deliveries.send(delivery).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// The event, without its metadata, in protobuf's JSON mapping.
pub(super) fn decode_event(
    event_type: &MessageDescriptor,
    encoded: Bytes,
) -> Result<serde_json::Value, String> {
    let mut event = DynamicMessage::decode(event_type.clone(), encoded)
        .map_err(|error| format!("not a {}: {error}", event_type.full_name()))?;
    // The metadata field is unknown to the descriptor; it is printed apart.
    drop(event.take_unknown_fields());
    serde_json::to_value(&event).map_err(|error| error.to_string())
}
