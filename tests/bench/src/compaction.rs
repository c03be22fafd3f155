//! Compaction by key (`--only compaction`): what keeping the latest event of every key costs
//! `publish` (the same keyed events with and without `compact_by_key`, a window of 1,024), and
//! how long a subscriber that starts at the latest event of every key waits for its first
//! event and for all of them, with 100,000 keys kept.

use std::time::{Duration, Instant};

use meshless::events::PublisherSettings;
use meshless::v1::{StartPosition, Subscribe};
use meshless::Server;
use tokio::net::TcpListener;

use crate::keyed::NoCalls;
use crate::proto::mesh::testing::orders::v1::{
    Order, OrderChangedEvent, OrdersClient, OrdersPublisher, OrdersService,
};
use crate::Bench;

const KEYS: usize = 100_000;
const WINDOW: usize = 1024;

fn event(i: usize) -> OrderChangedEvent {
    OrderChangedEvent {
        order: Some(Order {
            id: format!("order-{:06}-{}", i % KEYS, "x".repeat(32)),
        }),
        step: i as u64,
    }
}

/// Publishes `events` on the server thread; the time per publish.
async fn publish(
    bench: &Bench,
    publisher: &OrdersPublisher,
    compact: bool,
    events: usize,
) -> Duration {
    let publisher = publisher.clone();
    bench
        .on_server(async move {
            // Events made ahead, a chunk at a time: only the publishes are timed.
            let mut spent = Duration::ZERO;
            for chunk in (0..events).step_by(KEYS) {
                let made: Vec<_> = (chunk..(chunk + KEYS).min(events)).map(event).collect();
                let started = Instant::now();
                for event in made {
                    if compact {
                        publisher.publish_order_state(event)
                    } else {
                        publisher.publish_order_changed(event)
                    }
                    .expect("a small event");
                }
                spent += started.elapsed();
            }
            spent / u32::try_from(events).unwrap_or(u32::MAX)
        })
        .await
}

pub async fn section(bench: &Bench) {
    let events = if bench.quick { 200_000 } else { 1_000_000 };
    println!(
        "Compaction by key: {events} keyed events of about 64 B over {KEYS} keys, a window of {WINDOW}, no subscriber"
    );
    let settings = PublisherSettings::default()
        .retain("OrderState", WINDOW)
        .retain("OrderChanged", WINDOW);
    let publisher = OrdersPublisher::with_settings(settings);
    // The event encoding is the same for both: the difference is the compaction.
    let plain = publish(bench, &publisher, false, events).await;
    let compacted = publish(bench, &publisher, true, events).await;
    println!("  {:<40} {:>12}", "", "ns/publish");
    println!("  {:<40} {:>12}", "keyed, window only", plain.as_nanos());
    println!(
        "  {:<40} {:>12}   {:.2}x",
        "keyed, latest of every key kept",
        compacted.as_nanos(),
        compacted.as_secs_f64() / plain.as_secs_f64()
    );

    let served = publisher.clone();
    let addr = bench
        .on_server(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("address");
            tokio::spawn(
                Server::builder()
                    .add_service(OrdersService::with_publisher(NoCalls, served))
                    .serve_with_listener(listener, std::future::pending()),
            );
            addr
        })
        .await;
    let client = OrdersClient::connect(format!("ipv4:{addr}"))
        .await
        .expect("client")
        .into_tonic();
    let request = Subscribe {
        start: StartPosition::LatestPerKey as i32,
        ..Subscribe::default()
    };
    let started = Instant::now();
    let mut stream = client
        .clone()
        .order_state(request)
        .await
        .expect("subscribe")
        .into_inner();
    let mut first = None;
    let mut received = 0;
    let complete = tokio::time::timeout(Duration::from_secs(120), async {
        while received < KEYS {
            match stream.message().await {
                Ok(Some(_)) => {
                    first.get_or_insert_with(|| started.elapsed());
                    received += 1;
                }
                _ => return false,
            }
        }
        true
    })
    .await
    .unwrap_or(false);
    let all = started.elapsed();
    println!(
        "  latest of every key, then live: first event after {:.1} ms, all {KEYS} after {:.0} ms{}",
        first.unwrap_or_default().as_secs_f64() * 1000.0,
        all.as_secs_f64() * 1000.0,
        if complete { "" } else { "  (incomplete)" }
    );
    println!();
}
