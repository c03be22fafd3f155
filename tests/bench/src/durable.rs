//! Durable events (`--only durable`): what keeping events in files costs `publish`, what a
//! durable publish (waiting for `fdatasync`) costs alone and with others waiting at once, and
//! how long reopening a directory of 1,000,000 events takes.

use std::path::PathBuf;
use std::time::Instant;

use meshless::events::PublisherSettings;

use crate::proto::mesh::testing::v1 as mesh;
use crate::stats::Latencies;
use crate::Bench;

/// A directory of its own under the system's temporary directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("meshless-bench-{:016x}", fastrand_u64()));
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fastrand_u64() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ u64::from(std::process::id()) << 32
}

fn event() -> mesh::EchoedEvent {
    mesh::EchoedEvent {
        message: "x".repeat(60),
    }
}

fn settings(retain: usize) -> PublisherSettings {
    PublisherSettings::default().retain("Echoed", retain)
}

/// Nanoseconds per `publish_echoed` over `count` events.
fn publish_rate(publisher: &mesh::EchoPublisher, count: u64) -> f64 {
    let started = Instant::now();
    for _ in 0..count {
        publisher.publish_echoed(event()).expect("publish");
    }
    started.elapsed().as_nanos() as f64 / count as f64
}

pub async fn section(bench: &Bench) {
    let count: u64 = if bench.quick { 20_000 } else { 200_000 };
    println!(
        "Durable events, 64 B, retain 10000 (the event log in {})",
        std::env::temp_dir().display()
    );

    let memory = mesh::EchoPublisher::with_settings(settings(10_000));
    let in_memory = publish_rate(&memory, count);
    let scratch = Scratch::new();
    let disk = mesh::EchoPublisher::open_with_settings(&scratch.0, settings(10_000)).expect("open");
    let on_disk = publish_rate(&disk, count);
    println!(
        "  publish_*: in memory {in_memory:.0} ns per event, in files {on_disk:.0} ns ({:.2}x; {count} events)",
        on_disk / in_memory
    );

    // One durable publish at a time: each waits for its own sync.
    let alone = if bench.quick { 50 } else { 300 };
    let mut latencies = Latencies::default();
    for _ in 0..alone {
        let started = Instant::now();
        disk.publish_echoed_durable(event())
            .await
            .expect("durable publish");
        latencies.record(started.elapsed());
    }
    println!(
        "  publish_*_durable, one at a time: p50 {:.0} us, p99 {:.0} us ({alone} publishes)",
        latencies.quantile(0.5),
        latencies.quantile(0.99)
    );

    // 64 publishers at once: their waits share syncs.
    let tasks = 64;
    let each = if bench.quick { 20 } else { 100 };
    let syncs_before = disk.as_publisher().syncs();
    let disk_for_tasks = disk.clone();
    let started = Instant::now();
    let latencies = at_once(tasks, each, move || {
        let disk = disk_for_tasks.clone();
        async move {
            disk.publish_echoed_durable(event())
                .await
                .expect("durable publish");
        }
    })
    .await;
    let mut latencies = latencies;
    let elapsed = started.elapsed();
    let published = tasks * each;
    let syncs = disk.as_publisher().syncs() - syncs_before;
    println!(
        "  publish_*_durable, {tasks} at once: {:.0} events/s, p50 {:.0} us, p99 {:.0} us, {:.1} events per sync ({published} publishes, {syncs} syncs)",
        published as f64 / elapsed.as_secs_f64(),
        latencies.quantile(0.5),
        latencies.quantile(0.99),
        published as f64 / syncs.max(1) as f64
    );
    drop(disk);

    jetstream(bench).await;

    // Reopening a directory of 1,000,000 retained events: every record is read and checked.
    let big = if bench.quick { 100_000 } else { 1_000_000 };
    let scratch = Scratch::new();
    let disk = mesh::EchoPublisher::open_with_settings(&scratch.0, settings(big)).expect("open");
    publish_rate(&disk, big as u64);
    drop(disk);
    let started = Instant::now();
    let reopened =
        mesh::EchoPublisher::open_with_settings(&scratch.0, settings(big)).expect("reopen");
    let recovery = started.elapsed();
    drop(reopened);
    println!(
        "  reopening a directory of {big} events: {:.2} s ({:.0} ns per event)\n",
        recovery.as_secs_f64(),
        recovery.as_nanos() as f64 / big as f64
    );
}

/// A nats-server process, killed by its PID when dropped (however the section ends).
struct Nats(std::process::Child);

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// NATS JetStream with file storage, publishing with an acknowledgement (the publisher waits
/// for the server to have stored the message), one at a time and 64 at once. Its default sync
/// policy: stored messages are synced every 2 minutes, so its acknowledgement matches
/// meshless's `publish_*` (written, not synced), not `publish_*_durable`.
async fn jetstream(bench: &Bench) {
    let store = Scratch::new();
    let Some((server, url)) = crate::start_nats_with(&["-js", "-sd", &store.0.to_string_lossy()])
    else {
        println!("  (nats-server not found: JetStream rows skipped)");
        return;
    };
    let server = Nats(server);
    let client = async_nats::connect(url.as_str())
        .await
        .expect("nats connect");
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        max_messages: 10_000,
        ..Default::default()
    })
    .await
    .expect("create stream");
    let payload = bytes::Bytes::from("x".repeat(60));

    let alone = if bench.quick { 500 } else { 5_000 };
    let mut latencies = Latencies::default();
    let started = Instant::now();
    for _ in 0..alone {
        let sent = Instant::now();
        js.publish("bench", payload.clone())
            .await
            .expect("publish")
            .await
            .expect("ack");
        latencies.record(sent.elapsed());
    }
    println!(
        "  JetStream (file storage) publish with ack, one at a time: {:.0} events/s, p50 {:.0} us, p99 {:.0} us",
        alone as f64 / started.elapsed().as_secs_f64(),
        latencies.quantile(0.5),
        latencies.quantile(0.99)
    );

    let tasks = 64;
    let each = if bench.quick { 50 } else { 300 };
    let (js_for_tasks, payload_for_tasks) = (js.clone(), payload.clone());
    let started = Instant::now();
    let mut latencies = at_once(tasks, each, move || {
        let (js, payload) = (js_for_tasks.clone(), payload_for_tasks.clone());
        async move {
            js.publish("bench", payload)
                .await
                .expect("publish")
                .await
                .expect("ack");
        }
    })
    .await;
    println!(
        "  JetStream (file storage) publish with ack, {tasks} at once: {:.0} events/s, p50 {:.0} us, p99 {:.0} us",
        (tasks * each) as f64 / started.elapsed().as_secs_f64(),
        latencies.quantile(0.5),
        latencies.quantile(0.99)
    );
    jetstream_latency(bench, &js).await;
    drop(server);
    jetstream_recovery(bench, &store).await;
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Publish-to-handler latency at 10,000 events/s through JetStream (file storage) to an
/// ordered consumer, as the events section measures meshless.
async fn jetstream_latency(bench: &Bench, js: &async_nats::jetstream::Context) {
    use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    use tokio_stream::StreamExt;

    let stream = js.get_stream("BENCH").await.expect("stream");
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let seconds = if bench.quick { 1 } else { 3 };
    let count = 10_000 * seconds;
    let receiver = tokio::spawn(async move {
        let mut latencies = Latencies::default();
        while latencies.len() < count {
            let Some(Ok(message)) = messages.next().await else {
                break;
            };
            let sent = message
                .payload
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes);
            latencies.record(std::time::Duration::from_micros(
                unix_micros().saturating_sub(sent),
            ));
        }
        latencies
    });
    // Acknowledgements are awaited as they come, a few hundred outstanding at most (the
    // client bounds how many it keeps).
    let mut acks = std::collections::VecDeque::new();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(1));
    for _ in 0..count / 10 {
        tick.tick().await;
        for _ in 0..10 {
            let mut payload = unix_micros().to_le_bytes().to_vec();
            payload.resize(64, b'x');
            acks.push_back(js.publish("bench", payload.into()).await.expect("publish"));
        }
        while acks.len() > 256 {
            if let Some(ack) = acks.pop_front() {
                ack.await.expect("ack");
            }
        }
    }
    for ack in acks {
        ack.await.expect("ack");
    }
    let mut latencies = tokio::time::timeout(std::time::Duration::from_secs(30), receiver)
        .await
        .expect("every message within 30 s")
        .expect("receiver");
    println!(
        "  JetStream (file storage), 10000 events/s to an ordered consumer: publish-to-handler p50 {:.0} us, p99 {:.0} us ({} received)",
        latencies.quantile(0.5),
        latencies.quantile(0.99),
        latencies.len()
    );
}

/// How long a restarted JetStream server takes to serve a stream of 1,000,000 stored messages.
async fn jetstream_recovery(bench: &Bench, store: &Scratch) {
    let big: u64 = if bench.quick { 100_000 } else { 1_000_000 };
    let Some((server, url)) = crate::start_nats_with(&["-js", "-sd", &store.0.to_string_lossy()])
    else {
        return;
    };
    let server = Nats(server);
    let client = async_nats::connect(url.as_str())
        .await
        .expect("nats connect");
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BIG".into(),
        subjects: vec!["big".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("create stream");
    let payload = bytes::Bytes::from("x".repeat(64));
    let mut acks = std::collections::VecDeque::new();
    for _ in 0..big {
        acks.push_back(js.publish("big", payload.clone()).await.expect("publish"));
        while acks.len() > 256 {
            if let Some(ack) = acks.pop_front() {
                ack.await.expect("ack");
            }
        }
    }
    for ack in acks {
        ack.await.expect("ack");
    }
    drop(server);
    let started = Instant::now();
    let Some((server, url)) = crate::start_nats_with(&["-js", "-sd", &store.0.to_string_lossy()])
    else {
        return;
    };
    let server = Nats(server);
    let client = async_nats::connect(url.as_str())
        .await
        .expect("nats connect");
    let js = async_nats::jetstream::new(client);
    let messages = loop {
        if let Ok(stream) = js.get_stream("BIG").await {
            if let Ok(info) = stream.get_info().await {
                break info.state.messages;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    println!(
        "  JetStream (file storage) killed and restarted with {messages} messages: serving the stream after {:.2} s",
        started.elapsed().as_secs_f64()
    );
    drop(server);
}

/// Runs `call` `each` times from each of `tasks` tasks at once; the latency of every call.
async fn at_once<F, Fut>(tasks: usize, each: usize, call: F) -> Latencies
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Latencies::default();
                for _ in 0..each {
                    let started = Instant::now();
                    call().await;
                    latencies.record(started.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Latencies::default();
    for handle in handles {
        latencies.merge(handle.await.expect("publisher task"));
    }
    latencies
}
