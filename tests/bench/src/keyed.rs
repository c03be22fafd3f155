//! Keyed events: a consumer group whose events have keys against the same group whose events
//! have none, and a plain observer handling keys in parallel lanes against one at a time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use meshless::events::{Event, HandlerError, ObserverHandle, ObserverOptions};
use meshless::v1::StartPosition;
use meshless::{Request, Response, Server, Status};
use tokio::sync::Notify;

use crate::proto::mesh::testing::orders::v1::{
    ChangeReply, ChangeRequest, Order, OrderChangedEvent, OrderChangedObserver,
    OrderLoggedObserver, OrdersHandler, OrdersObserver, OrdersPublisher, OrdersService,
};
use crate::stats::Latencies;
use crate::Bench;

const MEMBERS: usize = 4;
const GROUP_KEYS: usize = 1000;
const LANE_KEYS: usize = 100;

/// Counts handled events, and records their latency from publish when asked.
#[derive(Clone, Default)]
struct Count {
    handled: Arc<AtomicU64>,
    changed: Arc<Notify>,
    latencies: Arc<Mutex<Option<Latencies>>>,
    /// Time each event takes to handle.
    work: Duration,
}

impl Count {
    async fn handle(&self, event: Event<OrderChangedEvent>) -> Result<(), HandlerError> {
        if !self.work.is_zero() {
            tokio::time::sleep(self.work).await;
        }
        if let Some(latencies) = self.latencies.lock().unwrap().as_mut() {
            if let Ok(latency) = SystemTime::now().duration_since(event.published_at()) {
                latencies.record(latency);
            }
        }
        self.handled.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
        Ok(())
    }

    /// Waits until `count` events were handled in all; false after a minute.
    async fn until(&self, count: u64) -> bool {
        let waited = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.handled.load(Ordering::Relaxed) >= count {
                    return;
                }
                changed.await;
            }
        })
        .await;
        waited.is_ok()
    }
}

impl OrderChangedObserver for Count {
    async fn order_changed(&self, event: Event<OrderChangedEvent>) -> Result<(), HandlerError> {
        self.handle(event).await
    }
}

impl OrderLoggedObserver for Count {
    async fn order_logged(&self, event: Event<OrderChangedEvent>) -> Result<(), HandlerError> {
        self.handle(event).await
    }
}

pub(crate) struct NoCalls;

impl OrdersHandler for NoCalls {
    async fn change(&self, _: Request<ChangeRequest>) -> Result<Response<ChangeReply>, Status> {
        Ok(Response::new(ChangeReply::default()))
    }
}

fn event(i: usize, keys: usize) -> OrderChangedEvent {
    OrderChangedEvent {
        // 64 B encoded, with the metadata as every event carries it.
        order: Some(Order {
            id: format!("order-{:05}-{}", i % keys, "x".repeat(40)),
        }),
        step: i as u64,
    }
}

async fn observe(
    count: &Count,
    keyed: bool,
    options: ObserverOptions,
    addr: SocketAddr,
) -> ObserverHandle {
    let observer = OrdersObserver::new().options(options.start(StartPosition::Live));
    let observer = if keyed {
        observer.order_changed(count.clone())
    } else {
        observer.order_logged(count.clone())
    };
    observer
        .start(format!("ipv4:{addr}"))
        .await
        .expect("observer")
}

/// Publishes `events` on the server thread, at once or at `rate` per second.
async fn publish(
    bench: &Bench,
    publisher: &OrdersPublisher,
    keyed: bool,
    events: usize,
    keys: usize,
    rate: Option<u64>,
) {
    let publisher = publisher.clone();
    bench
        .on_server(async move {
            let mut tick = rate.map(|rate| {
                let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                tick
            });
            for i in 0..events {
                if let Some(tick) = &mut tick {
                    tick.tick().await;
                }
                let event = event(i, keys);
                if keyed {
                    publisher.publish_order_changed(event)
                } else {
                    publisher.publish_order_logged(event)
                }
                .expect("a small event");
            }
        })
        .await;
}

struct GroupRow {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    complete: bool,
}

async fn group_row(
    bench: &Bench,
    publisher: &OrdersPublisher,
    addr: SocketAddr,
    keyed: bool,
    events: usize,
) -> GroupRow {
    let count = Count::default();
    let options = ObserverOptions::default().consumer_group(format!("bench-{keyed}"));
    let mut members = Vec::new();
    for _ in 0..MEMBERS {
        members.push(observe(&count, keyed, options.clone(), addr).await);
    }
    // Every member subscribed before the first event.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let started = Instant::now();
    publish(bench, publisher, keyed, events, GROUP_KEYS, None).await;
    let mut complete = count.until(events as u64).await;
    let per_second = events as f64 / started.elapsed().as_secs_f64();

    // Latency at a rate each row sustains: a fifth of the slower one's throughput, as measured
    // on this machine before (about 10k/s for the keyed group).
    *count.latencies.lock().unwrap() = Some(Latencies::default());
    let rate = 2_000;
    let timed = if bench.quick {
        rate as usize
    } else {
        3 * rate as usize
    };
    publish(bench, publisher, keyed, timed, GROUP_KEYS, Some(rate)).await;
    complete &= count.until((events + timed) as u64).await;
    let mut latencies = count.latencies.lock().unwrap().take().unwrap_or_default();
    for member in members {
        member.stop().await;
    }
    GroupRow {
        per_second,
        p50_ms: latencies.quantile(0.5) / 1000.0,
        p99_ms: latencies.quantile(0.99) / 1000.0,
        complete,
    }
}

/// Events per second handled by one plain observer whose handler takes `work`, in `lanes`
/// keyed lanes.
async fn lanes_row(
    bench: &Bench,
    publisher: &OrdersPublisher,
    addr: SocketAddr,
    lanes: usize,
    events: usize,
    work: Duration,
) -> (f64, bool) {
    let count = Count {
        work,
        ..Count::default()
    };
    let options = ObserverOptions::default().max_concurrent_handlers(lanes);
    let observer = observe(&count, true, options, addr).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    publish(bench, publisher, true, events, LANE_KEYS, None).await;
    let complete = count.until(events as u64).await;
    let per_second = events as f64 / started.elapsed().as_secs_f64();
    observer.stop().await;
    (per_second, complete)
}

/// Serves `publisher` on the server thread.
pub(crate) async fn serve(bench: &Bench, publisher: &OrdersPublisher) -> SocketAddr {
    let publisher = publisher.clone();
    bench
        .on_server(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("address");
            tokio::spawn(
                Server::builder()
                    .add_service(OrdersService::with_publisher(NoCalls, publisher))
                    .serve_with_listener(listener, std::future::pending()),
            );
            addr
        })
        .await
}

pub async fn section(bench: &Bench) {
    let publisher = OrdersPublisher::new();
    let addr = serve(bench, &publisher).await;

    let events = if bench.quick { 20_000 } else { 100_000 };
    println!(
        "Keyed events: a consumer group of {MEMBERS} members, 1 producer, {events} events of 64 B over {GROUP_KEYS} keys at once, then 2,000/s for latency"
    );
    println!(
        "  {:<28} {:>11} {:>12} {:>9} {:>9}",
        "", "events/s", "x unkeyed", "p50 ms", "p99 ms"
    );
    let mut unkeyed_rate = f64::NAN;
    for keyed in [false, true] {
        let row = group_row(bench, &publisher, addr, keyed, events).await;
        if !keyed {
            unkeyed_rate = row.per_second;
        }
        println!(
            "  {:<28} {:>11.0} {:>12.2} {:>9.2} {:>9.2}{}",
            if keyed {
                "keyed (one per key out)"
            } else {
                "unkeyed (least loaded)"
            },
            row.per_second,
            row.per_second / unkeyed_rate,
            row.p50_ms,
            row.p99_ms,
            if row.complete { "" } else { "  (incomplete)" }
        );
    }
    println!();

    let work = Duration::from_millis(1);
    let events = if bench.quick { 1_000 } else { 4_000 };
    println!(
        "Keyed lanes: one plain observer, a handler that takes {} ms, {events} events over {LANE_KEYS} keys",
        work.as_millis()
    );
    println!("  {:<28} {:>11} {:>12}", "", "events/s", "x 1 lane");
    let mut one_lane = f64::NAN;
    for lanes in [1, 8] {
        let (rate, complete) = lanes_row(bench, &publisher, addr, lanes, events, work).await;
        if lanes == 1 {
            one_lane = rate;
        }
        println!(
            "  {:<28} {:>11.0} {:>12.2}{}",
            format!("max_concurrent_handlers({lanes})"),
            rate,
            rate / one_lane,
            if complete { "" } else { "  (incomplete)" }
        );
    }
    println!();
}
