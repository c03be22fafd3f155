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

use meshless::v1::{Cursor, EventMetadata, StartPosition, Subscribe};
use meshless::Channel;
use prost_reflect::{MessageDescriptor, MethodDescriptor};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::args::{From, Headers, TailArgs};
use crate::descriptors;
use crate::error::Error;
use crate::resolve::{self, channel_to, Change};
use crate::terminal::printable;

/// The response header that names a group member's stream, for its acknowledgements.
const MEMBER_CONNECTION: &str = "meshless-member-connection";
/// The longest pause before subscribing again to an instance whose stream broke.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

mod group;
mod line;
mod producer;

use group::{acknowledge, acknowledgement};
use line::print_event;
use producer::start;

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

#[cfg(test)]
mod test;
