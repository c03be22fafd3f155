//! Events from one producer to N observers: throughput with cursors and no loss, latency at a
//! fixed rate, producer CPU per event. Against a hand-written tonic stream fed by
//! `tokio::sync::broadcast`, and NATS core pub/sub.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshless::events::{Event, HandlerError, ObserverOptions, PublisherSettings};
use tokio::sync::{broadcast, Notify};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;

use crate::proto::mesh::testing::v1 as mesh;
use crate::proto::plain::testing::v1 as plain;
use crate::servers::{start_echo, Echo};
use crate::stats::{thread_cpu_time, Latencies};
use crate::Bench;

pub struct Throughput {
    pub name: &'static str,
    pub observers: usize,
    pub size: usize,
    pub per_second: f64,
    pub delivered: u64,
    pub expected: u64,
    pub producer_cpu_per_event: Duration,
}

/// Counts deliveries; records latencies when messages carry a timestamp.
#[derive(Clone, Default)]
pub struct Counter {
    delivered: Arc<AtomicU64>,
    changed: Arc<Notify>,
    latencies: Option<Arc<Mutex<Latencies>>>,
}

impl Counter {
    fn deliver(&self, message: &str) {
        if let Some(latencies) = &self.latencies {
            if let Some(sent) = message
                .split(' ')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
            {
                let now = crate::since_start().as_nanos() as u64;
                latencies
                    .lock()
                    .unwrap()
                    .record(Duration::from_nanos(now.saturating_sub(sent)));
            }
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    fn count(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Waits until `target` deliveries, or until nothing arrives for 2 s (NATS core drops
    /// messages for slow consumers), or `limit`; returns whether they all came.
    async fn until(&self, target: u64, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.count() >= target {
                return true;
            }
            let stall = (tokio::time::Instant::now() + Duration::from_secs(2)).min(deadline);
            if tokio::time::timeout_at(stall, changed).await.is_err() {
                return self.count() >= target;
            }
        }
    }
}

impl mesh::EchoedObserver for Counter {
    async fn echoed(&self, event: Event<mesh::EchoedEvent>) -> Result<(), HandlerError> {
        self.deliver(&event.message);
        Ok(())
    }
}

/// A message of about `size` bytes on the wire, starting with the send time.
fn message(size: usize) -> String {
    let stamp = crate::since_start().as_nanos().to_string();
    let pad = size.saturating_sub(stamp.len() + 3);
    format!("{stamp} {}", "x".repeat(pad))
}

/// The producer of one contender: publishes `count` events of `size` bytes.
#[derive(Clone)]
pub enum Producer {
    Meshless(mesh::EchoPublisher),
    /// Publishes with `publish_echoed_batch`, this many events at a time.
    MeshlessBatches(mesh::EchoPublisher, usize),
    Raw(broadcast::Sender<plain::EchoedEvent>),
    Nats(async_nats::Client),
}

impl Producer {
    async fn publish(&self, count: u64, size: usize, per_second: Option<u64>) {
        if let Producer::MeshlessBatches(publisher, batch) = self {
            let mut events = Vec::with_capacity(*batch);
            let mut left = count;
            while left > 0 {
                let take = left.min(*batch as u64);
                events.clear();
                events.extend((0..take).map(|_| mesh::EchoedEvent {
                    message: message(size),
                }));
                publisher
                    .publish_echoed_batch(&events)
                    .expect("small events");
                left -= take;
                // Let the runtime's other tasks (the streams) run, as one at a time does.
                if (count - left) % 1024 < take {
                    tokio::task::yield_now().await;
                }
            }
            return;
        }
        // At a rate, each event goes out at its own time, not in bursts.
        let started = Instant::now();
        for i in 0..count {
            if let Some(rate) = per_second {
                crate::floor::pace_until(started + Duration::from_secs_f64(i as f64 / rate as f64))
                    .await;
            }
            let message = message(size);
            match self {
                Producer::Meshless(publisher) | Producer::MeshlessBatches(publisher, _) => {
                    publisher
                        .publish_echoed(mesh::EchoedEvent { message })
                        .expect("a small event");
                }
                Producer::Raw(sender) => {
                    let _ = sender.send(plain::EchoedEvent { message });
                }
                Producer::Nats(client) => {
                    let _ = client.publish("bench", message.into()).await;
                }
            }
            if i % 1024 == 1023 && per_second.is_none() {
                // Let the runtime's other tasks (the streams) run: publishing never waits.
                tokio::task::yield_now().await;
            }
        }
        if let Producer::Nats(client) = self {
            let _ = client.flush().await;
        }
    }
}

/// A hand-written tonic event stream, fed by `tokio::sync::broadcast`.
struct RawEvents {
    sender: broadcast::Sender<plain::EchoedEvent>,
}

#[tonic::async_trait]
impl plain::echo_server::Echo for RawEvents {
    async fn echoed(
        &self,
        _: tonic::Request<crate::proto::plain::meshless::v1::Subscribe>,
    ) -> Result<tonic::Response<tonic::codegen::BoxStream<plain::EchoedEvent>>, tonic::Status> {
        let stream = BroadcastStream::new(self.sender.subscribe())
            .map(|event| event.map_err(|_| tonic::Status::resource_exhausted("lagged")));
        Ok(tonic::Response::new(Box::pin(stream) as Pin<Box<_>>))
    }
}

async fn start_raw(capacity: usize) -> (SocketAddr, broadcast::Sender<plain::EchoedEvent>) {
    let (sender, _) = broadcast::channel(capacity);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let service = plain::echo_server::EchoServer::new(RawEvents {
        sender: sender.clone(),
    });
    // With TCP_NODELAY, as meshless's server has: a fair baseline.
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|stream| {
        let stream = stream?;
        stream.set_nodelay(true)?;
        Ok::<_, std::io::Error>(stream)
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming),
    );
    (addr, sender)
}

/// Subscribes `observers` observers of one contender; returns what stops them.
async fn subscribe(
    contender: &Contender,
    observers: usize,
    counter: &Counter,
) -> Vec<Box<dyn FnOnce() + Send>> {
    let mut stops: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
    for _ in 0..observers {
        match contender {
            Contender::Meshless(addr) => {
                // Live, as the other contenders: no backlog from earlier rows.
                let options = ObserverOptions::default()
                    .heartbeat(Duration::from_secs(30))
                    .start(meshless::v1::StartPosition::Live);
                let handle = mesh::EchoObserver::new()
                    .echoed(counter.clone())
                    .options(options)
                    .start(format!("ipv4:{addr}"))
                    .await
                    .expect("observer");
                stops.push(Box::new(move || drop(handle)));
            }
            Contender::Raw(addr) => {
                let mut client = plain::echo_client::EchoClient::connect(format!("http://{addr}"))
                    .await
                    .expect("connect");
                let live = crate::proto::plain::meshless::v1::Subscribe {
                    start: 2,
                    ..Default::default()
                };
                let mut stream = client.echoed(live).await.expect("subscribe").into_inner();
                let counter = counter.clone();
                let task = tokio::spawn(async move {
                    while let Ok(Some(event)) = stream.message().await {
                        counter.deliver(&event.message);
                    }
                });
                stops.push(Box::new(move || task.abort()));
            }
            Contender::Nats { url, capacity } => {
                let mut options = async_nats::ConnectOptions::new();
                if let Some(capacity) = capacity {
                    options = options.subscription_capacity(*capacity);
                }
                let client = options.connect(url.as_str()).await.expect("nats connect");
                let mut subscriber = client.subscribe("bench").await.expect("nats subscribe");
                client.flush().await.expect("nats flush");
                let counter = counter.clone();
                let task = tokio::spawn(async move {
                    while let Some(message) = subscriber.next().await {
                        counter.deliver(std::str::from_utf8(&message.payload).unwrap_or(""));
                    }
                });
                stops.push(Box::new(move || task.abort()));
            }
        }
    }
    stops
}

pub enum Contender {
    Meshless(SocketAddr),
    Raw(SocketAddr),
    /// A NATS core subscriber; with a `capacity`, its client's pending-message limit raised
    /// to that (the default, 65,536 messages, is what makes it drop a burst as a slow consumer).
    Nats {
        url: String,
        capacity: Option<usize>,
    },
}

/// How many events the batch rows publish at a time (`publish_*_batch`).
const BATCH: usize = 100;

/// Where the producer with its log in files keeps it: removed by the events section.
pub fn durable_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("meshless-bench-events-{}", std::process::id()))
}

/// Starts a producer of each kind on the server runtime.
pub async fn producers(
    bench: &Bench,
    capacity: usize,
    nats: Option<&str>,
) -> Vec<(&'static str, Contender, Producer)> {
    let settings = PublisherSettings::default().retain("Echoed", capacity);
    let mut settings = settings;
    settings.subscriber_buffer = capacity;
    let durable = mesh::EchoPublisher::open_with_settings(durable_dir(), settings.clone())
        .expect("an event directory");
    let publisher = mesh::EchoPublisher::with_settings(settings);
    let echo = Echo {
        name: "events",
        delay: Duration::ZERO,
        broken: false,
    };
    let mesh_addr = bench
        .on_server({
            let publisher = publisher.clone();
            async move { start_echo(echo, publisher).await }
        })
        .await;
    let durable_addr = bench
        .on_server({
            let durable = durable.clone();
            let echo = Echo {
                name: "events",
                delay: Duration::ZERO,
                broken: false,
            };
            async move { start_echo(echo, durable).await }
        })
        .await;
    let (raw_addr, sender) = bench
        .on_server(async move { start_raw(capacity).await })
        .await;
    let mut all = vec![
        (
            "raw tonic + broadcast",
            Contender::Raw(raw_addr),
            Producer::Raw(sender),
        ),
        (
            "meshless",
            Contender::Meshless(mesh_addr),
            Producer::Meshless(publisher.clone()),
        ),
        (
            "meshless, log in files",
            Contender::Meshless(durable_addr),
            Producer::Meshless(durable.clone()),
        ),
        (
            "meshless, batches of 100",
            Contender::Meshless(mesh_addr),
            Producer::MeshlessBatches(publisher, BATCH),
        ),
        (
            "meshless, files, batches of 100",
            Contender::Meshless(durable_addr),
            Producer::MeshlessBatches(durable, BATCH),
        ),
    ];
    if let Some(url) = nats {
        let url = url.to_owned();
        let client = bench
            .on_server({
                let url = url.clone();
                async move {
                    async_nats::connect(url.as_str())
                        .await
                        .expect("nats connect")
                }
            })
            .await;
        let flood = Contender::Nats {
            url: url.clone(),
            capacity: None,
        };
        all.push(("NATS core, flood", flood, Producer::Nats(client.clone())));
        // What a user would configure to take a burst: the subscriber's pending limit raised
        // to hold all of it, so that nothing is dropped as a slow consumer.
        let kept_up = Contender::Nats {
            url,
            capacity: Some(capacity),
        };
        all.push(("NATS core, limit raised", kept_up, Producer::Nats(client)));
    }
    all
}

pub async fn throughput(
    bench: &Bench,
    name: &'static str,
    contender: &Contender,
    producer: &Producer,
    observers: usize,
    size: usize,
    count: u64,
) -> Throughput {
    let counter = Counter::default();
    let stops = subscribe(contender, observers, &counter).await;
    // Warm up, and make sure every observer is subscribed.
    let warm = producer.clone();
    bench
        .on_server(async move { warm.publish(1, size, None).await })
        .await;
    counter
        .until(observers as u64, Duration::from_secs(30))
        .await;
    let base = counter.count();

    // Everything the producer's thread does, publishing and sending to every stream.
    let cpu_before = bench.on_server(async { thread_cpu_time() }).await;
    let started = Instant::now();
    let producer = producer.clone();
    bench
        .on_server(async move { producer.publish(count, size, None).await })
        .await;
    let expected = count * observers as u64;
    counter
        .until(base + expected, Duration::from_secs(120))
        .await;
    let elapsed = started.elapsed();
    let cpu = bench
        .on_server(async { thread_cpu_time() })
        .await
        .saturating_sub(cpu_before);
    let delivered = counter.count() - base;
    for stop in stops {
        stop();
    }
    Throughput {
        name,
        observers,
        size,
        per_second: delivered as f64 / elapsed.as_secs_f64(),
        delivered,
        expected,
        producer_cpu_per_event: cpu / u32::try_from(count).unwrap_or(u32::MAX),
    }
}

/// p50 and p99 publish-to-handler latency at a fixed rate.
pub async fn latency(
    bench: &Bench,
    contender: &Contender,
    producer: &Producer,
    observers: usize,
    rate: u64,
    duration: Duration,
) -> (f64, f64, u64) {
    let latencies = Arc::new(Mutex::new(Latencies::default()));
    let counter = Counter {
        latencies: Some(latencies.clone()),
        ..Counter::default()
    };
    let stops = subscribe(contender, observers, &counter).await;
    let warm = producer.clone();
    bench
        .on_server(async move { warm.publish(1, 64, None).await })
        .await;
    counter
        .until(observers as u64, Duration::from_secs(30))
        .await;
    latencies.lock().unwrap().clear();
    let base = counter.count();

    let count = (rate as f64 * duration.as_secs_f64()) as u64;
    let producer = producer.clone();
    bench
        .on_server(async move { producer.publish(count, 64, Some(rate)).await })
        .await;
    counter
        .until(base + count * observers as u64, Duration::from_secs(30))
        .await;
    for stop in stops {
        stop();
    }
    let mut latencies = latencies.lock().unwrap();
    let delivered = latencies.len() as u64;
    (latencies.quantile(0.5), latencies.quantile(0.99), delivered)
}
