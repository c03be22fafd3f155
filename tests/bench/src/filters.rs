//! Filters (`--only filters`): one plain observer that wants 1% of the events, filtering at the
//! producer (`{event}_filter`) against the same observer filtering in its handler. Bytes on the
//! wire (counted by a proxy between them) and producer CPU per event published, in one run.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshless::events::{Event, Filter, HandlerError, ObserverOptions};
use meshless::v1::StartPosition;
use meshless::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::proto::mesh::testing::shipping::v1::{
    Address, OrderPlacedEvent, OrderPlacedObserver, PlacedOrder, ShippingHandler, ShippingObserver,
    ShippingPublisher, ShippingService,
};
use crate::stats::thread_cpu_time;
use crate::Bench;

/// One event in this many matches.
const ONE_IN: u64 = 100;
/// Events published at once: within a subscriber's buffer (4,096), a multiple of [`ONE_IN`].
const BURST: u64 = 2_000;

struct NoCalls;

impl ShippingHandler for NoCalls {}

/// Event `step`: to region `eu` for one step in [`ONE_IN`], `us` otherwise; 64 B or so.
fn event(step: u64) -> OrderPlacedEvent {
    OrderPlacedEvent {
        order: Some(PlacedOrder {
            id: format!("order-{step:08}-{}", "x".repeat(24)),
            address: Some(Address {
                region: if step.is_multiple_of(ONE_IN) {
                    "eu"
                } else {
                    "us"
                }
                .into(),
                zone: 1,
            }),
            priority: 1,
        }),
        step,
        gift: false,
    }
}

/// Counts the `eu` events handled; the handler of the unfiltered observer drops the others.
#[derive(Clone, Default)]
struct Wanted {
    handled: Arc<AtomicU64>,
    changed: Arc<Notify>,
}

impl OrderPlacedObserver for Wanted {
    async fn order_placed(&self, event: Event<OrderPlacedEvent>) -> Result<(), HandlerError> {
        let region = event
            .order
            .as_ref()
            .and_then(|order| order.address.as_ref())
            .map_or("", |address| address.region.as_str());
        if region == "eu" {
            self.handled.fetch_add(1, Ordering::Relaxed);
            self.changed.notify_waiters();
        }
        Ok(())
    }
}

impl Wanted {
    async fn until(&self, count: u64) -> bool {
        tokio::time::timeout(Duration::from_secs(120), async {
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
        .await
        .is_ok()
    }
}

/// A TCP proxy that counts the bytes from the producer to the observer.
async fn counting_proxy(backend: SocketAddr, to_observer: Arc<AtomicU64>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(backend).await else {
                continue;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (mut in_read, mut in_write) = inbound.into_split();
            let (mut out_read, mut out_write) = outbound.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut in_read, &mut out_write).await;
            });
            let counted = to_observer.clone();
            tokio::spawn(async move {
                let mut buf = vec![0; 64 * 1024];
                while let Ok(n) = out_read.read(&mut buf).await {
                    if n == 0 || in_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    counted.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
    });
    addr
}

struct Row {
    per_second: f64,
    bytes_per_event: f64,
    cpu_per_event: Duration,
    complete: bool,
}

async fn row(bench: &Bench, filtered: bool, events: u64) -> Row {
    let publisher = ShippingPublisher::new();
    let served = publisher.clone();
    let backend = bench
        .on_server(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("address");
            tokio::spawn(
                Server::builder()
                    .add_service(ShippingService::with_publisher(NoCalls, served))
                    .serve_with_listener(listener, std::future::pending()),
            );
            addr
        })
        .await;
    let bytes = Arc::new(AtomicU64::new(0));
    let proxy = counting_proxy(backend, bytes.clone()).await;
    let wanted = Wanted::default();
    let observer = ShippingObserver::new()
        .order_placed(wanted.clone())
        .options(ObserverOptions::default().start(StartPosition::Oldest));
    let observer = if filtered {
        observer.order_placed_filter(Filter::new().eq("order.address.region", "eu"))
    } else {
        observer
    };
    let observer = observer
        .start(format!("ipv4:{proxy}"))
        .await
        .expect("observer");
    // Subscribed (from the oldest event), and past the first event.
    let first = publisher.clone();
    bench
        .on_server(async move { first.publish_order_placed(event(0)).expect("an event") })
        .await;
    let mut complete = wanted.until(1).await;

    let bytes_before = bytes.load(Ordering::Relaxed);
    let cpu_before = bench.on_server(async { thread_cpu_time() }).await;
    let started = Instant::now();
    // In bursts a subscriber's buffer holds, each ending with a wanted event, and the next
    // once that one is handled.
    let mut published = 0;
    while published < events && complete {
        let publishing = publisher.clone();
        let from = published + 1;
        published = (published + BURST).min(events);
        let to = published;
        bench
            .on_server(async move {
                for step in from..=to {
                    publishing
                        .publish_order_placed(event(step))
                        .expect("an event");
                }
            })
            .await;
        complete &= wanted.until(1 + published / ONE_IN).await;
    }
    let elapsed = started.elapsed();
    let cpu = bench
        .on_server(async { thread_cpu_time() })
        .await
        .saturating_sub(cpu_before);
    let sent = bytes.load(Ordering::Relaxed) - bytes_before;
    observer.stop().await;
    Row {
        per_second: events as f64 / elapsed.as_secs_f64(),
        bytes_per_event: sent as f64 / events as f64,
        cpu_per_event: cpu / u32::try_from(events).unwrap_or(u32::MAX),
        complete,
    }
}

pub async fn section(bench: &Bench) {
    let events = if bench.quick { 20_000 } else { 200_000 };
    println!(
        "Filters: one plain observer wants 1 event in {ONE_IN} ({events} events of about 64 B, in bursts of {BURST})"
    );
    println!(
        "  {:<30} {:>11} {:>14} {:>14} {:>10}",
        "", "events/s", "wire B/event", "cpu/event ns", "x handler"
    );
    let mut in_handler_cpu = Duration::ZERO;
    for filtered in [false, true] {
        let row = row(bench, filtered, events).await;
        if !filtered {
            in_handler_cpu = row.cpu_per_event;
        }
        println!(
            "  {:<30} {:>11.0} {:>14.1} {:>14} {:>10.2}{}",
            if filtered {
                "filter at the producer"
            } else {
                "filter in the handler"
            },
            row.per_second,
            row.bytes_per_event,
            row.cpu_per_event.as_nanos(),
            row.cpu_per_event.as_secs_f64() / in_handler_cpu.as_secs_f64(),
            if row.complete { "" } else { "  (incomplete)" }
        );
    }
    println!();
}
