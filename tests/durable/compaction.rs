//! Compaction by key (`OrderState`: a window of 16, `compact_by_key`): the kept events
//! survive a reopen of the producer's directory, and a cursor older than the window resumes
//! from them; consumer groups are refused a start at the latest per key. The subscribers'
//! side is in `latest_per_key`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use meshless::events::{Event, HandlerError, ObserverOptions};
use meshless::v1::{Cursor, EventMetadata, StartPosition, Subscribe};
use meshless::{Request, Response, Server, Status};
use tokio::sync::Notify;
use tokio_stream::StreamExt;

use super::scratch;
use super::support::testing::orders::v1::{
    ChangeReply, ChangeRequest, Order, OrderChangedEvent, OrderStateObserver, OrdersClient,
    OrdersHandler, OrdersObserver, OrdersPublisher, OrdersService,
};
use super::support::{Running, PATIENCE};

/// Answers no calls: only the events are served.
#[derive(Clone)]
struct NoCalls;

impl OrdersHandler for NoCalls {
    async fn change(&self, _: Request<ChangeRequest>) -> Result<Response<ChangeReply>, Status> {
        Err(Status::unimplemented("events only"))
    }
}

pub(super) async fn serve(publisher: OrdersPublisher) -> Running {
    Running::start(Server::builder().add_service(OrdersService::with_publisher(NoCalls, publisher)))
        .await
}

pub(super) fn change(key: usize, step: u64) -> OrderChangedEvent {
    OrderChangedEvent {
        order: Some(Order {
            id: format!("order-{key}"),
        }),
        step,
    }
}

/// What one subscriber got: (order, step, sequence) in arrival order.
#[derive(Clone, Default)]
pub(super) struct Got {
    pub(super) events: Arc<Mutex<Vec<(String, u64, u64)>>>,
    changed: Arc<Notify>,
    /// How a raw stream ended with an error (cut off for falling behind, say).
    failed: Arc<Mutex<Option<Status>>>,
}

impl Got {
    pub(super) fn push(&self, event: &OrderChangedEvent, sequence: u64) {
        let order = event.order.clone().unwrap_or_default().id;
        self.events
            .lock()
            .unwrap()
            .push((order, event.step, sequence));
        self.changed.notify_waiters();
    }

    /// Whether every key of `last` was seen at its last step.
    pub(super) fn has_final(&self, last: &HashMap<String, u64>) -> bool {
        let events = self.events.lock().unwrap();
        let mut seen: HashMap<&str, u64> = HashMap::new();
        for (order, step, _) in events.iter() {
            let at = seen.entry(order).or_default();
            *at = (*at).max(*step);
        }
        last.iter()
            .all(|(order, step)| seen.get(order.as_str()) == Some(step))
    }

    pub(super) async fn until_final(&self, last: &HashMap<String, u64>, who: &str) {
        let waited = tokio::time::timeout(PATIENCE, async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.has_final(last) {
                    return;
                }
                if let Some(status) = &*self.failed.lock().unwrap() {
                    panic!("{who}: the stream failed: {status:?}");
                }
                changed.await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "{who}: not every key's final state within the patience"
        );
    }

    /// Each event at most once, the steps of each key in order (and, when `in_sequence`,
    /// every event in sequence order; when `every_change`, without a gap from the first one
    /// got).
    pub(super) fn check(&self, who: &str, in_sequence: bool, every_change: bool) {
        let events = self.events.lock().unwrap();
        let mut sequences: Vec<u64> = events.iter().map(|(_, _, sequence)| *sequence).collect();
        if in_sequence {
            assert!(
                sequences.windows(2).all(|pair| pair[0] < pair[1]),
                "{who}: events out of sequence order"
            );
        }
        sequences.sort_unstable();
        let before = sequences.len();
        sequences.dedup();
        assert_eq!(before, sequences.len(), "{who}: an event came twice");
        let mut steps: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for (order, step, _) in events.iter() {
            steps.entry(order).or_default().push(*step);
        }
        for (order, steps) in steps {
            assert!(
                steps.windows(2).all(|pair| pair[0] < pair[1]),
                "{who}: the steps of {order} out of order: {steps:?}"
            );
            // From the latest at the start on, every change: none missed.
            assert!(
                !every_change || steps.windows(2).all(|pair| pair[0] + 1 == pair[1]),
                "{who}: the steps of {order} have a gap: {steps:?}"
            );
        }
    }
}

impl OrderStateObserver for Got {
    async fn order_state(&self, event: Event<OrderChangedEvent>) -> Result<(), HandlerError> {
        self.push(event.message(), event.cursor().sequence);
        Ok(())
    }
}

/// A plain gRPC subscription to `OrderState`: every event it gets goes to `got`, and every
/// gap it is told of to `missed`, until the stream is dropped.
pub(super) async fn subscribe_raw(
    target: &str,
    request: Subscribe,
    got: Got,
    missed: Arc<Mutex<u64>>,
) -> tokio::task::JoinHandle<()> {
    let client = OrdersClient::connect(target).await.unwrap();
    let mut stream = client
        .into_tonic()
        .order_state(request)
        .await
        .unwrap()
        .into_inner();
    tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            let item = match item {
                Ok(item) => item,
                Err(status) => {
                    *got.failed.lock().unwrap() = Some(status);
                    got.changed.notify_waiters();
                    return;
                }
            };
            let (event, metadata): (OrderChangedEvent, EventMetadata) = item.into_parts().unwrap();
            *missed.lock().unwrap() += metadata.missed;
            if !metadata.heartbeat {
                got.push(&event, metadata.sequence);
            }
        }
    })
}

pub(super) fn latest_per_key() -> Subscribe {
    Subscribe {
        start: StartPosition::LatestPerKey as i32,
        ..Subscribe::default()
    }
}

#[tokio::test]
async fn kept_events_survive_a_reopen_and_a_cursor_before_the_window_resumes_from_them() {
    const KEYS: usize = 40;
    let dir = scratch();
    let publisher = OrdersPublisher::open(&dir.0).unwrap();
    let mut first = None;
    for step in 0..3 {
        for key in 0..KEYS {
            let cursor = publisher.publish_order_state(change(key, step)).unwrap();
            first.get_or_insert(cursor);
        }
    }
    let first: Cursor = first.unwrap();
    drop(publisher);

    let reopened = OrdersPublisher::open(&dir.0).unwrap();
    let producer = serve(reopened.clone()).await;
    let last: HashMap<String, u64> = (0..KEYS).map(|key| (format!("order-{key}"), 2)).collect();

    // The latest of every key, each once and in sequence order, then what is published next.
    let got = Got::default();
    let missed = Arc::new(Mutex::new(0));
    let task = subscribe_raw(
        &producer.target(),
        latest_per_key(),
        got.clone(),
        missed.clone(),
    )
    .await;
    got.until_final(&last, "latest per key").await;
    assert_eq!(got.events.lock().unwrap().len(), KEYS, "one event per key");
    reopened.publish_order_state(change(0, 3)).unwrap();
    let live: HashMap<String, u64> = [("order-0".to_string(), 3)].into();
    got.until_final(&live, "live").await;
    got.check("latest per key", true, true);
    assert_eq!(got.events.lock().unwrap().len(), KEYS + 1);
    assert_eq!(*missed.lock().unwrap(), 0);
    task.abort();

    // A cursor at the first event (long gone from the window of 16): the kept events after
    // it, then the window; what is not among them was superseded, not missed.
    let resumed = Got::default();
    let missed = Arc::new(Mutex::new(0));
    let request = Subscribe {
        after: Some(first),
        start: StartPosition::Live as i32,
        ..Subscribe::default()
    };
    let task = subscribe_raw(&producer.target(), request, resumed.clone(), missed.clone()).await;
    let mut everything = last.clone();
    everything.insert("order-0".into(), 3);
    resumed.until_final(&everything, "resumed").await;
    resumed.check("resumed", true, true);
    assert_eq!(*missed.lock().unwrap(), 0);
    assert!(
        resumed
            .events
            .lock()
            .unwrap()
            .iter()
            .all(|(_, _, sequence)| *sequence > first.sequence),
        "nothing at or before the cursor"
    );
    task.abort();
    producer.stop().await.unwrap();
}

#[tokio::test]
async fn a_consumer_group_is_refused_a_start_at_the_latest_per_key() {
    let refused = OrdersObserver::new()
        .order_state(Got::default())
        .options(
            ObserverOptions::default()
                .consumer_group("billing")
                .start(StartPosition::LatestPerKey),
        )
        .start("ipv4:127.0.0.1:1")
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("consumer group `billing`"),
        "{refused}"
    );

    // On the wire too.
    let producer = serve(OrdersPublisher::new()).await;
    let client = OrdersClient::connect(producer.target()).await.unwrap();
    let status = client
        .into_tonic()
        .order_state(Subscribe {
            group: "billing".into(),
            member: "m".into(),
            ..latest_per_key()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), meshless::Code::InvalidArgument, "{status:?}");
    producer.stop().await.unwrap();
}

/// Holds the first change of `order-0` until the test opens its gate.
#[derive(Clone)]
struct HeldFirst {
    got: Got,
    gate: super::support::Gate,
}

impl OrderStateObserver for HeldFirst {
    async fn order_state(&self, event: Event<OrderChangedEvent>) -> Result<(), HandlerError> {
        let order = event.message().order.clone().unwrap_or_default().id;
        if order == "order-0" && event.message().step == 0 {
            self.gate.entered_once();
            self.gate.pass().await;
        }
        self.got.push(event.message(), event.cursor().sequence);
        Ok(())
    }
}

#[tokio::test]
async fn a_consumer_group_behind_the_window_reads_the_kept_events() {
    const KEYS: usize = 40;
    let publisher = OrdersPublisher::new();
    let producer = serve(publisher.clone()).await;
    let held = HeldFirst {
        got: Got::default(),
        gate: super::support::Gate::default(),
    };
    let gaps = Arc::new(Mutex::new(0u64));
    let observer = OrdersObserver::new()
        .order_state(held.clone())
        .options(
            ObserverOptions::default()
                .consumer_group("state")
                .max_unacknowledged(4)
                .on_gap({
                    let gaps = gaps.clone();
                    move |gap| *gaps.lock().unwrap() += gap.missed
                }),
        )
        .start(&producer.target())
        .await
        .unwrap();
    publisher.publish_order_state(change(0, 0)).unwrap();
    tokio::time::timeout(PATIENCE, held.gate.entered())
        .await
        .expect("the first change reached the handler");
    // While it is held, 200 changes go out: the group falls behind the window of 16.
    for step in 1..=5 {
        for key in 0..KEYS {
            publisher.publish_order_state(change(key, step)).unwrap();
        }
    }
    held.gate.open();
    let last: HashMap<String, u64> = (0..KEYS).map(|key| (format!("order-{key}"), 5)).collect();
    held.got.until_final(&last, "group member").await;
    held.got.check("group member", false, false);
    let handled = held.got.events.lock().unwrap().len();
    assert!(
        handled < 1 + 5 * KEYS,
        "superseded changes skipped: {handled}"
    );
    assert_eq!(*gaps.lock().unwrap(), 0, "superseded is not missed");
    observer.stop().await;
    producer.stop().await.unwrap();
}
