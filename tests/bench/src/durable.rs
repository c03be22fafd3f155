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
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let disk = disk.clone();
            tokio::spawn(async move {
                let mut latencies = Latencies::default();
                for _ in 0..each {
                    let started = Instant::now();
                    disk.publish_echoed_durable(event())
                        .await
                        .expect("durable publish");
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

/// NATS JetStream with file storage, publishing with an acknowledgement (the publisher waits
/// for the server to have stored the message), one at a time and 64 at once. Its default sync
/// policy: stored messages are synced every 2 minutes, so its acknowledgement matches
/// meshless's `publish_*` (written, not synced), not `publish_*_durable`.
async fn jetstream(bench: &Bench) {
    let store = Scratch::new();
    let Some((mut server, url)) =
        crate::start_nats_with(&["-js", "-sd", &store.0.to_string_lossy()])
    else {
        println!("  (nats-server not found: JetStream rows skipped)");
        return;
    };
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
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (js, payload) = (js.clone(), payload.clone());
            tokio::spawn(async move {
                let mut latencies = Latencies::default();
                for _ in 0..each {
                    let sent = Instant::now();
                    js.publish("bench", payload.clone())
                        .await
                        .expect("publish")
                        .await
                        .expect("ack");
                    latencies.record(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Latencies::default();
    for handle in handles {
        latencies.merge(handle.await.expect("publisher task"));
    }
    println!(
        "  JetStream (file storage) publish with ack, {tasks} at once: {:.0} events/s, p50 {:.0} us, p99 {:.0} us",
        (tasks * each) as f64 / started.elapsed().as_secs_f64(),
        latencies.quantile(0.5),
        latencies.quantile(0.99)
    );
    let _ = server.kill();
    let _ = server.wait();
}
