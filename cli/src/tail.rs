//! `meshless tail`: subscribes to an event RPC on every instance of a target and prints each
//! event as one line of JSON, the `kcat` / `nats sub` of meshless.
//!
//! One task per producer instance holds its stream (a plain `meshless.v1.Subscribe` server
//! stream) and hands the events to the printer over one queue, so events of one producer are
//! printed in the order it published them. A stream that breaks is subscribed again after the
//! last event received (outside a group), with backoff; instances that DNS adds later are
//! subscribed to as well, and those it removes are not subscribed to again.
//!
//! With `--group`, the command is one member of the consumer group on every producer, and
//! acknowledges each event after printing it. Stopping (`--count`, Ctrl-C, or stdout closed
//! by its reader, as `| head -3` does) leaves the group on every producer at once, so the
//! events it held go to the other members without waiting for its lease.
//!
//! Each line: `{"instance": "10.0.0.7:50051", "sequence": 42, "key": "o-1", "event": {...}}`,
//! with `"missed": N` when the producer reports events this subscriber will never see, and
//! `"delivery_count"` in a group. The event is in protobuf's JSON mapping.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meshless::v1::{
    Acknowledgement, Cursor, EventGroupsClient, EventMetadata, StartPosition, Subscribe,
};
use meshless::Channel;
use prost::bytes::Bytes;
use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor, MethodDescriptor};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::args::{From, Headers, TailArgs};
use crate::codec::RawCodec;
use crate::descriptors;
use crate::error::{status_text, Error};
use crate::resolve::{self, channel_to, Change};
use crate::terminal::printable;

/// The response header that names a group member's stream, for its acknowledgements.
const MEMBER_CONNECTION: &str = "meshless-member-connection";
/// The longest pause before subscribing again to an instance whose stream broke.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// An event message's metadata, in the field every event message reserves for it; the
/// message's own fields are skipped as unknown.
#[derive(Clone, PartialEq, Message)]
struct Envelope {
    #[prost(message, optional, tag = "536870000")]
    metadata: Option<EventMetadata>,
}

/// What a producer's task hands the printer.
#[derive(Debug)]
enum Delivery {
    Event {
        instance: SocketAddr,
        metadata: EventMetadata,
        event: serde_json::Value,
        /// The stream's `meshless-member-connection`, for the acknowledgement.
        connection: u64,
    },
    /// The stream broke or could not start; the task tries again.
    Broken { instance: SocketAddr, error: String },
    /// The producer refused the subscription for good (no such event RPC, a bad group...).
    Refused { instance: SocketAddr, error: String },
}

/// What a producer's task needs to subscribe.
#[derive(Debug, Clone)]
struct Subscription {
    path: String,
    request: Subscribe,
    event_type: MessageDescriptor,
    timeout: Duration,
    headers: Headers,
}

/// One producer instance being tailed.
#[derive(Debug)]
struct Producer {
    channel: Channel,
    task: JoinHandle<()>,
    /// Set when DNS no longer lists it: its task does not subscribe again.
    removed: Arc<AtomicBool>,
    /// The last event printed and the stream it came on (groups: what to acknowledge).
    last: Option<(Cursor, u64)>,
    refused: bool,
}

/// Runs `meshless tail` until `--count` events were printed, Ctrl-C, or stdout is closed.
pub(crate) async fn run(args: TailArgs) -> Result<(), Error> {
    let resolved = resolve::resolve(&args.target, args.timeout).await?;
    let first = resolved.instances[0];
    let (pool, source) = match &args.descriptor_set {
        Some(path) => (descriptors::from_file(path)?, path.display().to_string()),
        None => (
            descriptors::from_reflection(
                channel_to(first, args.timeout, &args.headers).await?,
                &first.to_string(),
                &args.method.service,
                args.timeout,
            )
            .await?,
            format!("{first}'s reflection"),
        ),
    };
    let method = descriptors::find_method(&pool, &args.method, &source)?;
    check_event(&method)?;

    let member = args.group.as_ref().map(|_| member_name());
    let subscription = Subscription {
        path: args.method.path(),
        request: Subscribe {
            group: args.group.clone().unwrap_or_default(),
            member: member.clone().unwrap_or_default(),
            start: match args.from {
                From::Oldest => StartPosition::Oldest,
                From::Live => StartPosition::Live,
            } as i32,
            ..Subscribe::default()
        },
        event_type: method.output(),
        timeout: args.timeout,
        headers: args.headers.clone(),
    };

    let (deliveries_tx, mut deliveries) = mpsc::channel(256);
    let mut producers: BTreeMap<SocketAddr, Producer> = BTreeMap::new();
    for addr in resolved.instances {
        let producer = start(addr, &subscription, deliveries_tx.clone()).await?;
        producers.insert(addr, producer);
    }
    let mut changes = resolved.changes;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    let mut printed: u64 = 0;
    let mut outcome = Ok(());
    loop {
        let change = async {
            match changes.as_mut() {
                Some(discover) => resolve::next_change(discover).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut ctrl_c => break,
            change = change => match change {
                Some(Change::Insert(addr)) => {
                    if let Some(producer) = producers.get(&addr) {
                        producer.removed.store(false, Ordering::Relaxed);
                        if !producer.task.is_finished() {
                            continue;
                        }
                    }
                    match start(addr, &subscription, deliveries_tx.clone()).await {
                        Ok(producer) => {
                            if let Some(old) = producers.insert(addr, producer) {
                                old.task.abort();
                            }
                        }
                        Err(error) => eprintln!("meshless: {}", printable(&error.to_string())),
                    }
                }
                Some(Change::Remove(addr)) => {
                    if let Some(producer) = producers.get(&addr) {
                        producer.removed.store(true, Ordering::Relaxed);
                    }
                }
                // Discovery stopped: the instances known go on.
                None => changes = None,
            },
            delivery = deliveries.recv() => match delivery {
                Some(Delivery::Event { instance, metadata, event, connection }) => {
                    if let Err(error) = print_event(instance, &metadata, event, member.is_some()) {
                        // A reader that closed stdout (`| head -3`) has read all it wanted:
                        // stop as on Ctrl-C. The event not printed is not acknowledged.
                        if error.kind() != io::ErrorKind::BrokenPipe {
                            outcome = Err(Error::new(format!("cannot write to stdout: {error}")));
                        }
                        break;
                    }
                    let cursor = Cursor { epoch: metadata.epoch, sequence: metadata.sequence };
                    if let Some(producer) = producers.get_mut(&instance) {
                        producer.last = Some((cursor, connection));
                        if let (Some(group), Some(member)) = (&args.group, &member) {
                            if let Some(request) = acknowledgement(producer, &subscription.path, group, member, false) {
                                acknowledge(instance, producer.channel.clone(), request, args.timeout).await;
                            }
                        }
                    }
                    printed += 1;
                    if args.count.is_some_and(|count| printed >= count) {
                        break;
                    }
                }
                Some(Delivery::Broken { instance, error }) => {
                    eprintln!("meshless: {instance}: {}; subscribing again", printable(&error));
                }
                Some(Delivery::Refused { instance, error }) => {
                    eprintln!("meshless: {instance}: {}", printable(&error));
                    if let Some(producer) = producers.get_mut(&instance) {
                        producer.refused = true;
                    }
                    if producers.values().all(|producer| producer.refused) {
                        outcome = Err(Error::new(format!(
                            "every instance of {} refused the subscription to {}",
                            args.target, args.method
                        )));
                        break;
                    }
                }
                None => break,
            },
        }
    }

    // Stop every stream, then leave the group everywhere so that the events this member held
    // go to the others at once rather than after its lease: on every producer at once, so that
    // stopping takes at most one --timeout however many producers do not answer.
    for producer in producers.values() {
        producer.task.abort();
    }
    if let (Some(group), Some(member)) = (&args.group, &member) {
        let mut leaving = JoinSet::new();
        for (&instance, producer) in producers.iter().filter(|(_, producer)| !producer.refused) {
            if let Some(request) =
                acknowledgement(producer, &subscription.path, group, member, true)
            {
                leaving.spawn(acknowledge(
                    instance,
                    producer.channel.clone(),
                    request,
                    args.timeout,
                ));
            }
        }
        while leaving.join_next().await.is_some() {}
    }
    outcome
}

/// Checks that `method` is an event RPC: server-streaming, taking `meshless.v1.Subscribe`.
fn check_event(method: &MethodDescriptor) -> Result<(), Error> {
    if method.is_server_streaming()
        && !method.is_client_streaming()
        && method.input().full_name() == "meshless.v1.Subscribe"
    {
        return Ok(());
    }
    Err(Error::new(format!(
        "`{}` is not an event RPC (a server-streaming RPC taking meshless.v1.Subscribe){}",
        method.full_name(),
        if method.is_server_streaming() || method.is_client_streaming() {
            ""
        } else {
            ": call it with `meshless call`"
        }
    )))
}

/// A member name unique to this process: `meshless-tail-HOST-PID`.
fn member_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("meshless-tail-{host}-{}", std::process::id())
}

async fn start(
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
fn decode_event(
    event_type: &MessageDescriptor,
    encoded: Bytes,
) -> Result<serde_json::Value, String> {
    let mut event = DynamicMessage::decode(event_type.clone(), encoded)
        .map_err(|error| format!("not a {}: {error}", event_type.full_name()))?;
    // The metadata field is unknown to the descriptor; it is printed apart.
    drop(event.take_unknown_fields());
    serde_json::to_value(&event).map_err(|error| error.to_string())
}

/// Prints one event as a line of JSON, keys in a fixed order.
fn print_event(
    instance: SocketAddr,
    metadata: &EventMetadata,
    event: serde_json::Value,
    in_group: bool,
) -> io::Result<()> {
    use std::io::Write;
    let line = event_line(instance, metadata, &event, in_group);
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{line}").and_then(|()| stdout.flush())
}

fn event_line(
    instance: SocketAddr,
    metadata: &EventMetadata,
    event: &serde_json::Value,
    in_group: bool,
) -> String {
    let string = |text: &str| serde_json::Value::String(text.to_owned()).to_string();
    let key = if metadata.key.is_empty() {
        "null".to_owned()
    } else {
        match std::str::from_utf8(&metadata.key) {
            Ok(text) => string(text),
            Err(_) => string(&base64(&metadata.key)),
        }
    };
    let mut line = format!(
        "{{\"instance\":{},\"sequence\":{},\"key\":{key}",
        string(&instance.to_string()),
        metadata.sequence,
    );
    if metadata.missed > 0 {
        line.push_str(&format!(",\"missed\":{}", metadata.missed));
    }
    if metadata.previous_epoch != 0 {
        line.push_str(&format!(
            ",\"previous_epoch\":\"{:016x}\"",
            metadata.previous_epoch
        ));
    }
    if in_group {
        line.push_str(&format!(",\"delivery_count\":{}", metadata.delivery_count));
    }
    line.push_str(&format!(",\"event\":{event}}}"));
    line
}

/// The acknowledgement of the last event printed from `producer`, or the request to leave the
/// group (acknowledging it too); `None` when there is nothing to acknowledge.
fn acknowledgement(
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
async fn acknowledge(
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

/// Standard base64 with padding, for keys that are not UTF-8 (as protobuf's JSON writes
/// bytes).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn lines_have_a_fixed_shape() {
        let metadata = EventMetadata {
            epoch: 7,
            sequence: 3,
            key: b"o-1".to_vec(),
            ..EventMetadata::default()
        };
        let addr: SocketAddr = "127.0.0.1:50051".parse().expect("an address");
        let event = serde_json::json!({"order": {"id": "o-1"}, "step": "2"});
        assert_eq!(
            event_line(addr, &metadata, &event, false),
            r#"{"instance":"127.0.0.1:50051","sequence":3,"key":"o-1","event":{"order":{"id":"o-1"},"step":"2"}}"#
        );
        let metadata = EventMetadata {
            sequence: 9,
            missed: 4,
            delivery_count: 2,
            key: vec![0xff, 0x00],
            ..EventMetadata::default()
        };
        assert_eq!(
            event_line(addr, &metadata, &serde_json::json!({}), true),
            r#"{"instance":"127.0.0.1:50051","sequence":9,"key":"/wA=","missed":4,"delivery_count":2,"event":{}}"#
        );
        let no_key = EventMetadata::default();
        assert!(event_line(addr, &no_key, &serde_json::json!({}), false).contains(r#""key":null"#));
    }

    #[test]
    fn base64_as_protobuf_json_writes_bytes() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
    }

    #[test]
    fn the_metadata_field_is_read_apart_from_the_event() {
        let metadata = EventMetadata {
            epoch: 5,
            sequence: 11,
            ..EventMetadata::default()
        };
        let encoded = Envelope {
            metadata: Some(metadata.clone()),
        }
        .encode_to_vec();
        let decoded = Envelope::decode(encoded.as_slice()).expect("decodes");
        assert_eq!(decoded.metadata, Some(metadata));
    }
}
