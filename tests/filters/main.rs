//! Filters evaluated by the producer, over real connections on 127.0.0.1: an observer gets
//! exactly the events that match a condition on nested fields, in order; a filter that does not
//! fit the event is refused saying why; a filtered stream broken mid-burst resumes without loss
//! or repeat; heartbeats carry a filtered subscriber's cursor past the events filtered out; a
//! consumer group keeps the filter of its first member.

#[path = "../support/mod.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshless::events::{CursorStore, Event, Filter, HandlerError, ObserverHandle, ObserverOptions};
use meshless::v1::{filter_value, Cursor, FieldFilter, FilterValue, Subscribe};
use meshless::{Code, Server};
use support::testing::shipping::v1::{
    Address, OrderPlacedEvent, OrderPlacedObserver, PlacedOrder, Priority, ShippingClient,
    ShippingHandler, ShippingObserver, ShippingPublisher, ShippingService,
};
use support::{Proxy, Running};
use tokio::sync::Notify;

struct NoCalls;

impl ShippingHandler for NoCalls {}

const REGIONS: [&str; 3] = ["eu", "us", "asia"];

/// The event of step `step`: its region, priority and gift flag cycle with different periods.
fn placed(step: u64) -> OrderPlacedEvent {
    OrderPlacedEvent {
        order: Some(PlacedOrder {
            id: format!("order-{}", step % 7),
            address: Some(Address {
                region: REGIONS[(step % 3) as usize].to_owned(),
                zone: (step % 4) as u32,
            }),
            priority: if step.is_multiple_of(2) {
                Priority::High
            } else {
                Priority::Low
            } as i32,
        }),
        step,
        gift: step.is_multiple_of(5),
    }
}

/// Whether the event of `step` is a high-priority order to Europe.
fn european_high(step: u64) -> bool {
    step.is_multiple_of(3) && step.is_multiple_of(2)
}

fn european_high_filter() -> Filter {
    Filter::new()
        .eq("order.address.region", "eu")
        .not_eq("order.priority", "PRIORITY_LOW")
}

fn publish(publisher: &ShippingPublisher, steps: std::ops::Range<u64>) {
    for step in steps {
        publisher.publish_order_placed(placed(step)).unwrap();
    }
}

async fn producer(publisher: &ShippingPublisher) -> Running {
    Running::start(
        Server::builder().add_service(ShippingService::with_publisher(NoCalls, publisher.clone())),
    )
    .await
}

/// The steps an observer handled, in the order it handled them.
#[derive(Clone, Default)]
struct Steps {
    handled: Arc<Mutex<Vec<u64>>>,
    changed: Arc<Notify>,
}

impl OrderPlacedObserver for Steps {
    async fn order_placed(&self, event: Event<OrderPlacedEvent>) -> Result<(), HandlerError> {
        self.handled.lock().unwrap().push(event.step);
        self.changed.notify_waiters();
        Ok(())
    }
}

impl Steps {
    fn handled(&self) -> Vec<u64> {
        self.handled.lock().unwrap().clone()
    }

    /// Waits until `count` events were handled; fails after [`support::PATIENCE`].
    async fn until(&self, count: usize) {
        let waited = tokio::time::timeout(support::PATIENCE, async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.handled.lock().unwrap().len() >= count {
                    return;
                }
                changed.await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "timed out waiting for {count} events; handled {:?}",
            self.handled()
        );
    }
}

async fn observe(
    steps: &Steps,
    filter: Filter,
    options: ObserverOptions,
    target: &str,
) -> ObserverHandle {
    ShippingObserver::new()
        .order_placed(steps.clone())
        .order_placed_filter(filter)
        .options(options)
        .start(target)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_gets_exactly_the_events_its_filter_matches_in_order() {
    let publisher = ShippingPublisher::new();
    let producer = producer(&publisher).await;
    // Retained before the observer subscribes, then live.
    publish(&publisher, 0..600);
    let steps = Steps::default();
    let observer = observe(
        &steps,
        european_high_filter(),
        ObserverOptions::default(),
        &producer.target(),
    )
    .await;
    publish(&publisher, 600..1200);
    let expected: Vec<u64> = (0..1200).filter(|step| european_high(*step)).collect();
    steps.until(expected.len()).await;
    // A last matching event shows that nothing else was on its way.
    publisher.publish_order_placed(placed(1200)).unwrap();
    steps.until(expected.len() + 1).await;
    let mut all = expected.clone();
    all.push(1200);
    assert_eq!(steps.handled(), all);

    // Set membership, on a bool and an integer of a nested message.
    let gifts = Steps::default();
    let gift_observer = observe(
        &gifts,
        Filter::new()
            .eq("gift", true)
            .any_of("order.address.zone", [1u32, 2]),
        ObserverOptions::default(),
        &producer.target(),
    )
    .await;
    let expected: Vec<u64> = (0..=1200)
        .filter(|step| step % 5 == 0 && matches!(step % 4, 1 | 2))
        .collect();
    gifts.until(expected.len()).await;
    assert_eq!(gifts.handled(), expected);
    observer.stop().await;
    gift_observer.stop().await;
    producer.stop().await.unwrap();
}

fn condition(path: &str, value: filter_value::Value) -> FieldFilter {
    FieldFilter {
        path: path.to_owned(),
        any_of: vec![FilterValue { value: Some(value) }],
        negate: false,
    }
}

#[tokio::test]
async fn a_filter_that_does_not_fit_the_event_is_refused_saying_why() {
    let publisher = ShippingPublisher::new();
    let producer = producer(&publisher).await;
    let client = ShippingClient::connect(producer.target())
        .await
        .unwrap()
        .into_tonic();
    let text = |text: &str| filter_value::Value::Text(text.to_owned());
    for (condition, why) in [
        (
            condition("order.adress.region", text("eu")),
            "has no field `adress`",
        ),
        (
            condition("order.address.region", filter_value::Value::Int(1)),
            "string field",
        ),
        (condition("order.address", text("eu")), "is a message field"),
        (
            condition("order.priority", text("PRIORITY_URGENT")),
            "no value named `PRIORITY_URGENT`",
        ),
        (
            condition("order.address.zone", filter_value::Value::Int(-1)),
            "out of range",
        ),
    ] {
        let subscribe = Subscribe {
            filter: Some(meshless::v1::Filter {
                all_of: vec![condition],
            }),
            ..Subscribe::default()
        };
        let status = client.clone().order_placed(subscribe).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(why),
            "{:?} should say {why:?}",
            status.message()
        );
    }
    // The observer checks its filter when it starts, before subscribing anywhere.
    let error = ShippingObserver::new()
        .order_placed(Steps::default())
        .order_placed_filter(Filter::new().eq("order.address.region", 3i64))
        .start(&producer.target())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("string field"), "{error}");
    drop(client);
    producer.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_stream_broken_mid_burst_resumes_without_loss_or_repeat() {
    let publisher = ShippingPublisher::new();
    let producer = producer(&publisher).await;
    let proxy = Proxy::start(producer.addr).await;
    let steps = Steps::default();
    let options = ObserverOptions::default()
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50));
    let target = format!("ipv4:{}", proxy.addr);
    let observer = observe(&steps, european_high_filter(), options.clone(), &target).await;
    // The same through keyed lanes: orders handled side by side, each in order.
    let laned = Steps::default();
    let laned_options = options.max_concurrent_handlers(4);
    let laned_observer = observe(&laned, european_high_filter(), laned_options, &target).await;
    let mut published = 0;
    for _ in 0..5 {
        publish(&publisher, published..published + 400);
        published += 400;
        let matching = (0..published).filter(|s| european_high(*s)).count();
        // Cut while the observers are still taking the burst, then once they have it all.
        proxy.cut();
        steps.until(matching).await;
        laned.until(matching).await;
        proxy.cut();
    }
    let expected: Vec<u64> = (0..published).filter(|step| european_high(*step)).collect();
    // A last matching event shows that nothing else was on its way.
    let last = published.next_multiple_of(6);
    assert!(european_high(last));
    publisher.publish_order_placed(placed(last)).unwrap();
    steps.until(expected.len() + 1).await;
    laned.until(expected.len() + 1).await;
    let mut all = expected;
    all.push(last);
    assert_eq!(steps.handled(), all, "every matching event once, in order");
    let mut handled = laned.handled();
    for key in 0..7 {
        let of_key: Vec<u64> = handled.iter().copied().filter(|s| s % 7 == key).collect();
        assert!(of_key.is_sorted(), "order {key}: {of_key:?}");
    }
    handled.sort_unstable();
    assert_eq!(handled, all, "every matching event once, through lanes");
    observer.stop().await;
    laned_observer.stop().await;
    producer.stop().await.unwrap();
}

/// The next message of a raw stream, within [`support::PATIENCE`].
async fn next(
    stream: &mut tonic::Streaming<meshless::events::Envelope<OrderPlacedEvent>>,
) -> (OrderPlacedEvent, meshless::v1::EventMetadata) {
    tokio::time::timeout(support::PATIENCE, stream.message())
        .await
        .expect("a message in time")
        .unwrap()
        .unwrap()
        .into_parts()
        .unwrap()
}

#[tokio::test]
async fn heartbeats_carry_a_filtered_subscribers_cursor_past_the_events_filtered_out() {
    let publisher = ShippingPublisher::new();
    let producer = producer(&publisher).await;
    let client = ShippingClient::connect(producer.target())
        .await
        .unwrap()
        .into_tonic();
    // Steps 1, 3, 5, ... are low priority: filtered out.
    for step in (1..100).step_by(2) {
        publisher.publish_order_placed(placed(step)).unwrap();
    }
    let high = meshless::v1::Filter {
        all_of: vec![condition(
            "order.priority",
            filter_value::Value::Text("PRIORITY_HIGH".into()),
        )],
    };
    let subscribe = Subscribe {
        filter: Some(high.clone()),
        heartbeat_interval_ms: 1000,
        ..Subscribe::default()
    };
    let mut stream = client
        .clone()
        .order_placed(subscribe)
        .await
        .unwrap()
        .into_inner();
    let (_, heartbeat) = next(&mut stream).await;
    assert!(heartbeat.heartbeat);
    assert_eq!(
        (heartbeat.sequence, heartbeat.missed),
        (50, 0),
        "all 50 passed over"
    );
    // Resumed after the heartbeat's cursor: the next matching event, nothing missed.
    let resume = Subscribe {
        after: Some(Cursor {
            epoch: heartbeat.epoch,
            sequence: heartbeat.sequence,
        }),
        filter: Some(high),
        ..Subscribe::default()
    };
    let mut resumed = client
        .clone()
        .order_placed(resume)
        .await
        .unwrap()
        .into_inner();
    publisher.publish_order_placed(placed(100)).unwrap();
    let (event, metadata) = next(&mut resumed).await;
    assert_eq!(
        (event.step, metadata.sequence, metadata.missed),
        (100, 51, 0)
    );
    drop((stream, resumed, client));

    // An observer's cursor store is given the cursor the heartbeats carry.
    let store = Recorded::default();
    for step in (101..120).step_by(2) {
        publisher.publish_order_placed(placed(step)).unwrap();
    }
    let steps = Steps::default();
    let options = ObserverOptions::default()
        .heartbeat(Duration::from_secs(1))
        .cursor_store(store.clone());
    let observer = observe(
        &steps,
        Filter::new().eq("order.priority", "PRIORITY_HIGH"),
        options,
        &producer.target(),
    )
    .await;
    steps.until(1).await;
    support::eventually("the cursor past the events filtered out", || {
        store.0.lock().unwrap().last().map(|c| c.sequence) == Some(61)
    })
    .await;
    assert_eq!(steps.handled(), [100]);
    observer.stop().await;
    producer.stop().await.unwrap();
}

/// A cursor store that records every cursor it is given.
#[derive(Clone, Default)]
struct Recorded(Arc<Mutex<Vec<Cursor>>>);

impl CursorStore for Recorded {
    fn load(&self) -> Result<Vec<(String, Cursor)>, meshless::Error> {
        Ok(Vec::new())
    }

    fn handled(&self, _rpc: &str, cursor: Cursor) {
        self.0.lock().unwrap().push(cursor);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_keeps_the_filter_of_its_first_member() {
    let publisher = ShippingPublisher::new();
    let producer = producer(&publisher).await;
    let members = [Steps::default(), Steps::default()];
    let options = ObserverOptions::default().consumer_group("shipping-eu");
    let mut observers = Vec::new();
    for member in &members {
        observers.push(
            observe(
                member,
                european_high_filter(),
                options.clone(),
                &producer.target(),
            )
            .await,
        );
    }
    publish(&publisher, 0..900);
    let expected: Vec<u64> = (0..900).filter(|step| european_high(*step)).collect();
    let count = || members.iter().map(|m| m.handled().len()).sum::<usize>();
    support::eventually("every matching event handled in the group", || {
        count() >= expected.len()
    })
    .await;
    let mut handled: Vec<u64> = members.iter().flat_map(Steps::handled).collect();
    handled.sort_unstable();
    assert_eq!(
        handled, expected,
        "each matching event once, over the members"
    );
    // Per key (order id), in publish order.
    for member in &members {
        for key in 0..7 {
            let of_key: Vec<u64> = member
                .handled()
                .into_iter()
                .filter(|s| s % 7 == key)
                .collect();
            assert!(of_key.is_sorted(), "{of_key:?}");
        }
    }

    // A member asking for another filter is refused, and the group goes on.
    let client = ShippingClient::connect(producer.target())
        .await
        .unwrap()
        .into_tonic();
    let other = Subscribe {
        group: "shipping-eu".into(),
        member: "intruder".into(),
        filter: Some(Filter::new().eq("order.address.region", "us").into()),
        ..Subscribe::default()
    };
    let status = client.clone().order_placed(other).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("another filter"), "{status:?}");
    publish(&publisher, 900..960);
    let expected = (0..960).filter(|step| european_high(*step)).count();
    support::eventually("the group going on", || count() >= expected).await;
    assert_eq!(count(), expected);
    for observer in observers {
        observer.stop().await;
    }
    drop(client);
    producer.stop().await.unwrap();
}
