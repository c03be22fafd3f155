//! Keyed events and calls routed by key, over real connections on 127.0.0.1: per-key order in
//! a consumer group whose members join, leave and are killed; keyed lanes that keep a slow or
//! failing key from holding up the others; calls that keep to one instance per key.

#[path = "../support/mod.rs"]
mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshless::events::{Event, HandlerError, ObserverHandle, ObserverOptions};
use meshless::{Channel, Request, Response, Server, Status};
use support::testing::orders::v1::{
    ChangeReply, ChangeRequest, Order, OrderChangedEvent, OrderChangedObserver, OrdersClient,
    OrdersHandler, OrdersObserver, OrdersPublisher, OrdersService,
};
use support::{Gate, KillableObserver, Running};
use tokio::sync::Notify;

/// One handling of one event.
#[derive(Debug, Clone)]
struct Handled {
    step: u64,
    delivery_count: u32,
    member: usize,
}

/// Handlings by (producer instance, order id), in the order they ended.
type Handlings = HashMap<(String, String), Vec<Handled>>;

#[derive(Clone, Default)]
struct Ledger {
    handled: Arc<Mutex<Handlings>>,
    changed: Arc<Notify>,
}

impl Ledger {
    fn record(&self, event: &Event<OrderChangedEvent>, member: usize) {
        let order = event.message().order.clone().unwrap_or_default();
        self.handled
            .lock()
            .unwrap()
            .entry((event.instance().to_owned(), order.id))
            .or_default()
            .push(Handled {
                step: event.message().step,
                delivery_count: event.delivery_count(),
                member,
            });
        self.changed.notify_waiters();
    }

    /// Waits until `done` holds for what was handled; fails the test after
    /// [`support::PATIENCE`].
    async fn until(&self, what: &str, done: impl Fn(&Handlings) -> bool) {
        let waited = tokio::time::timeout(support::PATIENCE, async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if done(&self.handled.lock().unwrap()) {
                    return;
                }
                changed.await;
            }
        })
        .await;
        assert!(waited.is_ok(), "timed out waiting for {what}");
    }

    /// Waits until every step below `steps[key]` of every key of every producer was handled.
    async fn until_all(&self, producers: &[String], steps: &HashMap<String, u64>) {
        self.until("every event", |handled| {
            producers.iter().all(|producer| {
                steps.iter().all(|(key, &count)| {
                    handled
                        .get(&(producer.clone(), key.clone()))
                        .is_some_and(|h| {
                            h.iter().map(|h| h.step).collect::<HashSet<_>>().len() as u64 == count
                        })
                })
            })
        })
        .await;
    }

    fn count_by(&self, member: usize) -> usize {
        count_by(&self.handled.lock().unwrap(), member)
    }
}

fn count_by(handled: &Handlings, member: usize) -> usize {
    handled
        .values()
        .flatten()
        .filter(|h| h.member == member)
        .count()
}

/// A group member's handler.
#[derive(Clone)]
struct Member {
    ledger: Ledger,
    member: usize,
}

impl OrderChangedObserver for Member {
    async fn order_changed(&self, event: Event<OrderChangedEvent>) -> Result<(), HandlerError> {
        // Long enough for events of other keys to overtake.
        if event.message().step.is_multiple_of(7) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.ledger.record(&event, self.member);
        Ok(())
    }
}

fn member_options(lanes: Option<usize>) -> ObserverOptions {
    let options = ObserverOptions::default()
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .consumer_group("shipping")
        .member_lease(Duration::from_millis(300))
        .max_unacknowledged(32);
    match lanes {
        Some(lanes) => options.max_concurrent_handlers(lanes),
        None => options,
    }
}

async fn start_member(member: Member, options: ObserverOptions, target: &str) -> ObserverHandle {
    OrdersObserver::new()
        .order_changed(member)
        .options(options)
        .start(target)
        .await
        .unwrap()
}

/// Answers every call with its name.
#[derive(Clone)]
struct Named(String);

impl OrdersHandler for Named {
    async fn change(&self, _: Request<ChangeRequest>) -> Result<Response<ChangeReply>, Status> {
        Ok(Response::new(ChangeReply {
            served_by: self.0.clone(),
        }))
    }
}

async fn producer(publisher: OrdersPublisher) -> Running {
    Running::start(Server::builder().add_service(OrdersService::with_publisher(
        Named("producer".into()),
        publisher,
    )))
    .await
}

fn order(id: &str) -> Option<Order> {
    Some(Order { id: id.into() })
}

/// Publishes `count` events round the keys `order-0` .. `order-{keys - 1}` on every publisher,
/// each event numbered by its step within its key.
fn publish(
    publishers: &[OrdersPublisher],
    steps: &mut HashMap<String, u64>,
    keys: usize,
    count: usize,
) {
    for i in 0..count {
        let key = format!("order-{}", (i * 37 + count) % keys);
        let step = steps.entry(key.clone()).or_default();
        for publisher in publishers {
            publisher
                .publish_order_changed(OrderChangedEvent {
                    order: order(&key),
                    step: *step,
                })
                .unwrap();
        }
        *step += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_handles_each_key_in_publish_order_while_members_join_leave_and_die() {
    const KEYS: usize = 100;
    const EVENTS: usize = 10_000;
    let publishers = [OrdersPublisher::new(), OrdersPublisher::new()];
    let producers = [
        producer(publishers[0].clone()).await,
        producer(publishers[1].clone()).await,
    ];
    let target = format!("ipv4:{},{}", producers[0].addr, producers[1].addr);
    let instances: Vec<String> = producers.iter().map(|p| p.addr.to_string()).collect();
    let ledger = Ledger::default();
    let member = |member| Member {
        ledger: ledger.clone(),
        member,
    };
    let mut steps = HashMap::new();

    // Two members with keyed lanes (acknowledging events one by one), one handling one event
    // at a time (acknowledging cumulatively); the last will be killed.
    let first = start_member(member(0), member_options(Some(8)), &target).await;
    let leaving = start_member(member(1), member_options(None), &target).await;
    let (victim, victim_target) = (member(2), target.clone());
    let victim = KillableObserver::start(async move {
        start_member(victim, member_options(Some(4)), &victim_target).await
    })
    .await;

    publish(&publishers, &mut steps, KEYS, EVENTS / 5);
    ledger
        .until("the victim to take part", |handled| {
            count_by(handled, 2) >= 200
        })
        .await;
    victim.kill();
    publish(&publishers, &mut steps, KEYS, EVENTS / 5);

    // A member joins: keys move to it as their events are acknowledged.
    let joining = start_member(member(3), member_options(Some(8)), &target).await;
    publish(&publishers, &mut steps, KEYS, EVENTS / 5);
    ledger
        .until("the new member to take part", |handled| {
            count_by(handled, 3) >= 200
        })
        .await;

    // A member leaves: what it has not handled goes to the others.
    leaving.stop().await;
    publish(&publishers, &mut steps, KEYS, 2 * EVENTS / 5);
    ledger.until_all(&instances, &steps).await;
    first.stop().await;
    joining.stop().await;

    let handled = ledger.handled.lock().unwrap().clone();
    let mut repeats = 0;
    for (key, handlings) in &handled {
        // Per key and producer: each event after the one before it, or that one again when it
        // is redelivered (after a kill), saying so.
        let mut last: Option<u64> = None;
        for h in handlings {
            match last {
                Some(step) if h.step == step => {
                    repeats += 1;
                    assert!(
                        h.delivery_count >= 2,
                        "{key:?}: unmarked repeat in {handlings:?}"
                    );
                }
                _ => assert_eq!(
                    h.step,
                    last.map_or(0, |step| step + 1),
                    "{key:?}: out of order: {handlings:?}"
                ),
            }
            last = Some(h.step);
        }
        assert_eq!(last.map(|step| step + 1), steps.get(&key.1).copied());
    }
    assert_eq!(handled.len(), 2 * KEYS);
    // The victim had at most its window of events out with each producer.
    assert!(repeats <= 2 * 32, "{repeats} repeats");
    let by_member: Vec<usize> = (0..4).map(|m| ledger.count_by(m)).collect();
    eprintln!("handled by member: {by_member:?}; repeats: {repeats}");
    assert!(by_member.iter().all(|&n| n > 0), "{by_member:?}");
    for producer in producers {
        producer.stop().await.unwrap();
    }
}

/// A plain observer's handler: one key waits at a gate, one always fails.
#[derive(Clone)]
struct Picky {
    ledger: Ledger,
    gate: Gate,
}

impl OrderChangedObserver for Picky {
    async fn order_changed(&self, event: Event<OrderChangedEvent>) -> Result<(), HandlerError> {
        match event.key() {
            b"slow" => {
                self.gate.entered_once();
                self.gate.pass().await;
            }
            b"failing" => return Err("this key always fails".into()),
            _ => {}
        }
        self.ledger.record(&event, 0);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_key_and_a_failing_key_do_not_hold_up_the_others() {
    let publisher = OrdersPublisher::new();
    let producer = producer(publisher.clone()).await;
    let ledger = Ledger::default();
    let gate = Gate::default();
    let dead = Arc::new(Mutex::new(Vec::new()));
    let dead_letters = dead.clone();
    let options = ObserverOptions::default()
        .max_concurrent_handlers(4)
        .handler_retries(3, Duration::from_millis(5))
        .on_dead_letter(move |letter| dead_letters.lock().unwrap().push(letter.cursor.sequence));
    let observer = OrdersObserver::new()
        .order_changed(Picky {
            ledger: ledger.clone(),
            gate: gate.clone(),
        })
        .options(options)
        .start(producer.target())
        .await
        .unwrap();

    let publish = |key: &str, step| {
        publisher
            .publish_order_changed(OrderChangedEvent {
                order: order(key),
                step,
            })
            .unwrap()
            .sequence
    };
    publish("slow", 0);
    let failing = [publish("failing", 0), publish("failing", 1)];
    let mut steps = HashMap::new();
    for step in 0..20 {
        for key in ["a", "b", "c"] {
            publish(key, step);
            steps.insert(key.to_owned(), step + 1);
        }
    }
    publish("slow", 1);

    // The slow key is stuck at its first event; every other key is handled meanwhile, and
    // the failing key's events are dead-lettered, each after its attempts.
    gate.entered().await;
    ledger.until_all(&[producer.addr.to_string()], &steps).await;
    support::eventually("both failing events dead-lettered", || {
        dead.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(*dead.lock().unwrap(), failing);
    let slow = (producer.addr.to_string(), "slow".to_owned());
    assert!(!ledger.handled.lock().unwrap().contains_key(&slow));

    // Let go, the slow key's events are handled in order.
    gate.open();
    ledger
        .until("the slow key", |handled| {
            handled.get(&slow).is_some_and(|h| h.len() == 2)
        })
        .await;
    let steps: Vec<u64> = ledger.handled.lock().unwrap()[&slow]
        .iter()
        .map(|h| h.step)
        .collect();
    assert_eq!(steps, [0, 1]);
    observer.stop().await;
    producer.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_with_a_key_keep_to_one_instance_and_only_a_removed_instances_keys_move() {
    const KEYS: usize = 300;
    let mut servers = Vec::new();
    for name in ["s0", "s1", "s2"] {
        servers.push(
            Running::start(Server::builder().add_service(OrdersService::new(Named(name.into()))))
                .await,
        );
    }
    let target = format!(
        "ipv4:{}",
        servers
            .iter()
            .map(|s| s.addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let served = |client: OrdersClient| async move {
        let mut by_key = HashMap::new();
        for key in 0..KEYS {
            for step in 0..2 {
                let reply = client
                    .change(ChangeRequest {
                        order: order(&format!("order-{key}")),
                        step,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let previous = by_key.insert(key, reply.served_by.clone());
                assert!(
                    previous.is_none_or(|previous| previous == reply.served_by),
                    "order-{key} went to two instances"
                );
            }
        }
        by_key
    };

    // Until an instance is connected, its keys go to the next in rank.
    let connected = |channel: Channel| async move {
        support::eventually("every instance connected", || {
            channel.ready_instances() == 3
        })
        .await;
        OrdersClient::new(channel)
    };
    let channel = Channel::connect(&target).await.unwrap();
    let before = served(connected(channel.clone()).await).await;
    // Another client, with its own channel, sends every key where the first did.
    let other = served(connected(Channel::connect(&target).await.unwrap()).await).await;
    assert_eq!(before, other);
    let counts = |by_key: &HashMap<usize, String>| {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for server in by_key.values() {
            *counts.entry(server.clone()).or_default() += 1;
        }
        counts
    };
    let spread = counts(&before);
    assert_eq!(spread.len(), 3, "{spread:?}");
    assert!(spread.values().all(|&n| n >= KEYS / 6), "{spread:?}");

    // One instance goes: only its keys move, each to another instance.
    servers.pop().unwrap().stop().await.unwrap();
    support::eventually("the channel to see the instance gone", || {
        channel.ready_instances() == 2
    })
    .await;
    let after = served(OrdersClient::new(channel.clone())).await;
    let moved: Vec<usize> = (0..KEYS).filter(|k| before[k] != after[k]).collect();
    for key in &moved {
        assert_eq!(
            before[key], "s2",
            "order-{key} moved though its instance stayed"
        );
    }
    assert_eq!(moved.len(), spread["s2"]);
    eprintln!("moved {} of {KEYS} keys", moved.len());
    assert!(
        (KEYS / 5..KEYS / 2).contains(&moved.len()),
        "about a third of the keys move: {}",
        moved.len()
    );
    for server in servers {
        server.stop().await.unwrap();
    }
}

/// A folder removed when the test ends.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_producer_keeps_the_keys_of_its_events_across_a_restart() {
    use meshless::v1::Subscribe;
    use tokio_stream::StreamExt;

    let dir =
        Scratch(std::env::temp_dir().join(format!("meshless-keyed-{:016x}", fastrand::u64(..))));
    let publish = |publisher: &OrdersPublisher, key: &str, step| {
        publisher
            .publish_order_changed(OrderChangedEvent {
                order: order(key),
                step,
            })
            .unwrap();
    };
    {
        let publisher = OrdersPublisher::open(&dir.0).unwrap();
        publish(&publisher, "a", 0);
        publish(&publisher, "a", 1);
        publish(&publisher, "b", 0);
    }

    // Reopened, the log's events still have their keys: a group member gets one event of a
    // key at a time, whatever its window.
    let publisher = OrdersPublisher::open(&dir.0).unwrap();
    let producer = producer(publisher.clone()).await;
    let mut client = OrdersClient::connect(&producer.target())
        .await
        .unwrap()
        .into_tonic();
    let mut stream = client
        .order_changed(Subscribe {
            group: "g".into(),
            member: "raw".into(),
            max_unacknowledged: 100,
            ..Subscribe::default()
        })
        .await
        .unwrap()
        .into_inner();
    publish(&publisher, "c", 0);
    let mut delivered = Vec::new();
    for _ in 0..3 {
        let (event, metadata) = tokio::time::timeout(support::PATIENCE, stream.next())
            .await
            .expect("an event in time")
            .expect("the stream open")
            .unwrap()
            .into_parts()
            .unwrap();
        let id = event.order.unwrap().id;
        // The key travels in the metadata, for any client to see.
        assert_eq!(metadata.key, id.as_bytes());
        delivered.push((id, event.step));
    }
    // `a`'s second event waits for its first to be acknowledged; `c`'s, published later, does not.
    assert_eq!(
        delivered,
        [
            ("a".to_owned(), 0),
            ("b".to_owned(), 0),
            ("c".to_owned(), 0)
        ]
    );
    drop(stream);
    producer.stop().await.unwrap();
}

mod plain_lanes;
