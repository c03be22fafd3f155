//! A plain observer with keyed lanes loses nothing and repeats nothing: when its producer
//! drains after leaving discovery, after its stream breaks, and across a stop and a restart on
//! a cursor file.

use std::sync::atomic::{AtomicBool, Ordering};

use meshless::events::FileCursors;
use meshless::testing::TestDns;

use super::*;

/// Holds the first event of key `key` (at the gate, or by failing its first attempt), and
/// records every event handled.
#[derive(Clone)]
struct HoldsFirst {
    ledger: Ledger,
    gate: Gate,
    key: &'static str,
    /// Fail the first attempt instead of waiting at the gate.
    fail: bool,
    failed: Arc<AtomicBool>,
}

impl HoldsFirst {
    fn new(key: &'static str, fail: bool) -> Self {
        Self {
            ledger: Ledger::default(),
            gate: Gate::default(),
            key,
            fail,
            failed: Arc::default(),
        }
    }

    async fn entered(&self) {
        tokio::time::timeout(support::PATIENCE, self.gate.entered())
            .await
            .expect("the held event reached its handler in time");
    }

    /// The steps handled of `key`, by every producer, in the order their handling ended.
    fn steps(&self, key: &str) -> Vec<u64> {
        let handled = self.ledger.handled.lock().unwrap();
        handled
            .iter()
            .filter(|((_, id), _)| id == key)
            .flat_map(|(_, h)| h.iter().map(|h| h.step))
            .collect()
    }
}

impl OrderChangedObserver for HoldsFirst {
    async fn order_changed(&self, event: Event<OrderChangedEvent>) -> Result<(), HandlerError> {
        if event.key() == self.key.as_bytes() && event.message().step == 0 {
            if !self.fail {
                self.gate.entered_once();
                self.gate.pass().await;
            } else if !self.failed.swap(true, Ordering::SeqCst) {
                self.gate.entered_once();
                return Err("the first attempt fails".into());
            }
        }
        self.ledger.record(&event, 0);
        Ok(())
    }
}

async fn observe(handler: HoldsFirst, options: ObserverOptions, target: &str) -> ObserverHandle {
    OrdersObserver::new()
        .order_changed(handler)
        .options(options.max_concurrent_handlers(2))
        .start(target)
        .await
        .unwrap()
}

fn publish_one(publisher: &OrdersPublisher, key: &str, step: u64) {
    publisher
        .publish_order_changed(OrderChangedEvent {
            order: order(key),
            step,
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_lanes_handle_every_event_of_a_producer_that_left_discovery_and_drained() {
    let dns = TestDns::start("service.test").await.unwrap();
    dns.add_ip("node.service.test", "127.0.0.1".parse().unwrap())
        .await
        .unwrap();
    let publisher = OrdersPublisher::new();
    let producer = producer(publisher.clone()).await;
    let port = producer.addr.port();
    dns.add_srv("orders.service.test", 1, 1, port, "node.service.test")
        .await
        .unwrap();
    let handler = HoldsFirst::new("o1", false);
    let gaps = Arc::new(Mutex::new(0));
    let counted = gaps.clone();
    let options = ObserverOptions::default()
        .dns(support::quick_dns())
        .on_gap(move |_| *counted.lock().unwrap() += 1);
    let observer = observe(
        handler.clone(),
        options,
        &dns.srv_target("orders.service.test"),
    )
    .await;
    support::eventually("the producer is read", || {
        publisher.as_publisher().subscribers() == 1
    })
    .await;

    // Twenty events of one key: the first is held, the others wait behind it in its lane.
    for step in 0..20 {
        publish_one(&publisher, "o1", step);
    }
    handler.entered().await;

    // A rolling deploy: out of DNS, then a graceful stop, which ends the stream once it has
    // sent everything.
    dns.remove_srv("orders.service.test", port, "node.service.test")
        .await
        .unwrap();
    support::eventually("the instance gone from discovery", || {
        observer.instances().is_empty()
    })
    .await;
    tokio::time::timeout(support::PATIENCE, producer.stop())
        .await
        .expect("the producer drained in time")
        .unwrap();
    handler.gate.open();

    // Every event that reached the observer is handled, in order.
    handler
        .ledger
        .until("every event of the drained producer", |handled| {
            handled.values().flatten().count() == 20
        })
        .await;
    assert_eq!(handler.steps("o1"), (0..20).collect::<Vec<_>>());
    assert_eq!(*gaps.lock().unwrap(), 0);
    observer.stop().await;
    dns.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stream_with_keyed_lanes_resumes_without_repeats() {
    let publisher = OrdersPublisher::new();
    let producer = producer(publisher.clone()).await;
    let proxy = support::Proxy::start(producer.addr).await;
    let handler = HoldsFirst::new("slow", false);
    let options = ObserverOptions::default()
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100));
    let observer = observe(handler.clone(), options, &format!("ipv4:{}", proxy.addr)).await;

    publish_one(&publisher, "slow", 0);
    publish_one(&publisher, "slow", 1);
    for key in ["a", "b", "c"] {
        publish_one(&publisher, key, 0);
    }
    handler.entered().await;
    handler
        .ledger
        .until("a, b and c", |handled| {
            handled.values().flatten().count() == 3
        })
        .await;

    // The stream breaks while `slow` 0 is being handled and `slow` 1 waits behind it.
    proxy.cut();
    support::eventually("the producer sees the stream gone", || {
        publisher.as_publisher().subscribers() == 0
    })
    .await;
    handler.gate.open();
    support::eventually("the observer back", || {
        publisher.as_publisher().subscribers() == 1
    })
    .await;
    publish_one(&publisher, "z", 0);
    handler
        .ledger
        .until("z", |handled| handled.keys().any(|(_, key)| key == "z"))
        .await;
    // Every event before `z` started before it: stopping lets them finish.
    observer.stop().await;
    assert_eq!(handler.steps("slow"), [0, 1]);
    for key in ["a", "b", "c", "z"] {
        assert_eq!(handler.steps(key), [0], "{key} handled once");
    }
    producer.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_observer_with_keyed_lanes_resumes_exactly() {
    let publisher = OrdersPublisher::new();
    let producer = producer(publisher.clone()).await;
    let dir =
        Scratch(std::env::temp_dir().join(format!("meshless-lanes-{:016x}", fastrand::u64(..))));
    std::fs::create_dir_all(&dir.0).unwrap();
    let cursors = dir.0.join("cursors");
    // A failed attempt waits a long backoff: the stop finds `slow` 0 unhandled.
    let options = || {
        ObserverOptions::default()
            .handler_retries(3, Duration::from_secs(3600))
            .cursor_store(FileCursors::open(&cursors).unwrap())
    };
    let first = HoldsFirst::new("slow", true);
    let observer = observe(first.clone(), options(), &producer.target()).await;
    publish_one(&publisher, "slow", 0);
    publish_one(&publisher, "slow", 1);
    for key in ["a", "b", "c"] {
        publish_one(&publisher, key, 0);
    }
    first.entered().await;
    first
        .ledger
        .until("a, b and c", |handled| {
            handled.values().flatten().count() == 3
        })
        .await;
    tokio::time::timeout(support::PATIENCE, observer.stop())
        .await
        .expect("stopped in time");
    assert!(first.steps("slow").is_empty());

    // Restarted on the same cursor file: the two events of `slow`, and nothing handled before.
    let second = HoldsFirst::new("none", false);
    let observer = observe(second.clone(), options(), &producer.target()).await;
    publish_one(&publisher, "z", 0);
    second
        .ledger
        .until("slow and z", |handled| {
            let count = |key: &str| {
                handled
                    .iter()
                    .filter(|((_, k), _)| k == key)
                    .map(|(_, h)| h.len())
                    .sum::<usize>()
            };
            count("slow") == 2 && count("z") == 1
        })
        .await;
    // Every event before `z` started before it: stopping lets them finish.
    observer.stop().await;
    assert_eq!(second.steps("slow"), [0, 1]);
    assert_eq!(second.steps("z"), [0]);
    for key in ["a", "b", "c"] {
        assert!(second.steps(key).is_empty(), "{key} handled again");
    }
    producer.stop().await.unwrap();
}
