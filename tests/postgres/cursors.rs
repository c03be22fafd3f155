//! `PgCursors`: observers whose handlers write their effects in the transaction that records the
//! event as handled, stopped or crashed mid-stream and restarted, with failing transactions and
//! keyed lanes: every event's effect exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshless::events::postgres::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use meshless::events::postgres::sqlx::{self, PgPool};
use meshless::events::postgres::PgCursors;
use meshless::events::{Event, HandlerError, ObserverHandle, ObserverOptions};
use meshless::Server;
use tokio::sync::{watch, Notify};

use super::support::testing::orders::v1::{
    Order, OrderChangedEvent, OrderChangedObserver, OrdersObserver, OrdersPublisher, OrdersService,
};
use super::support::testing::v1::EchoObserver;
use super::support::{EchoedEvent, EchoedObserver, Running, PATIENCE};
use super::{open, publish_committed, serve, until_notified, within, Cluster, NoCalls};

/// What a retry of a failed event found in the database before handling it again: the event,
/// its effects, its records, and whether a cursor passed it.
type Retried = (String, i64, i64, bool);

/// The handler of the tests: inserts one row into `effects` per event, in the transaction
/// `PgCursors::begin` gives it.
#[derive(Clone)]
struct Effects {
    observer: &'static str,
    cursors: PgCursors,
    pool: PgPool,
    /// Handler calls.
    calls: Arc<AtomicUsize>,
    committed: Arc<Counter>,
    hold: Option<Arc<Hold>>,
    /// Events whose first attempt fails after its insert: by dropping its transaction, or by
    /// rolling it back (`true`).
    fail_once: Arc<Mutex<BTreeMap<String, bool>>>,
    /// Events whose attempt failed so, until retried.
    failed: Arc<Mutex<BTreeSet<String>>>,
    retried: Arc<Mutex<Vec<Retried>>>,
}

impl Effects {
    async fn open(pool: &PgPool, observer: &'static str) -> Self {
        Self {
            observer,
            cursors: PgCursors::open(pool, observer)
                .await
                .expect("cursors in Postgres"),
            pool: pool.clone(),
            calls: Arc::default(),
            committed: Arc::default(),
            hold: None,
            fail_once: Arc::default(),
            failed: Arc::default(),
            retried: Arc::default(),
        }
    }

    async fn effect<T>(&self, event: &Event<T>, what: String) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.hold.as_ref().is_some_and(|hold| hold.is_released()) {
            return Err("stopping".into());
        }
        let fails = self.fail_once.lock().unwrap().remove(&what);
        if fails.is_none() && self.failed.lock().unwrap().remove(&what) {
            self.look_before_retry(event, &what).await;
        }
        let Some(mut tx) = self.cursors.begin(event).await? else {
            return Ok(());
        };
        sqlx::query("INSERT INTO effects (observer, what) VALUES ($1, $2)")
            .bind(self.observer)
            .bind(&what)
            .execute(&mut *tx)
            .await?;
        if let Some(hold) = self.hold.as_ref().filter(|hold| hold.at == what) {
            hold.reach_and_wait().await;
            return Err("stopping".into());
        }
        if let Some(rollback) = fails {
            self.failed.lock().unwrap().insert(what.clone());
            if rollback {
                tx.rollback().await?;
            }
            return Err(format!("{what} fails once").into());
        }
        tx.commit().await?;
        self.committed.bump();
        Ok(())
    }

    /// Records what the database holds of `event` before it is retried.
    async fn look_before_retry<T>(&self, event: &Event<T>, what: &str) {
        let effects: i64 =
            sqlx::query_scalar("SELECT count(*) FROM effects WHERE observer = $1 AND what = $2")
                .bind(self.observer)
                .bind(what)
                .fetch_one(&self.pool)
                .await
                .unwrap();
        let cursor = event.cursor();
        let records: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM meshless.observer_handled
             WHERE observer = $1 AND rpc = $2 AND sequence = $3",
        )
        .bind(self.observer)
        .bind(event.rpc())
        .bind(cursor.sequence as i64)
        .fetch_one(&self.pool)
        .await
        .unwrap();
        let passed: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM meshless.observer_cursors
                            WHERE observer = $1 AND rpc = $2 AND sequence >= $3)",
        )
        .bind(self.observer)
        .bind(event.rpc())
        .bind(cursor.sequence as i64)
        .fetch_one(&self.pool)
        .await
        .unwrap();
        self.retried
            .lock()
            .unwrap()
            .push((what.to_owned(), effects, records, passed));
    }

    /// Starts observing the Echo producer at `target`.
    async fn observe_echo(&self, target: &str) -> ObserverHandle {
        EchoObserver::new()
            .echoed(self.clone())
            .options(options(&self.cursors))
            .start(target)
            .await
            .expect("an observer")
    }
}

impl EchoedObserver for Effects {
    async fn echoed(&self, event: Event<EchoedEvent>) -> Result<(), HandlerError> {
        let what = event.message().message.clone();
        self.effect(&event, what).await
    }
}

impl OrderChangedObserver for Effects {
    async fn order_changed(&self, event: Event<OrderChangedEvent>) -> Result<(), HandlerError> {
        let order = event.message().order.clone().unwrap_or_default();
        let what = format!("{}/{}", order.id, event.message().step);
        self.effect(&event, what).await
    }
}

fn options(cursors: &PgCursors) -> ObserverOptions {
    ObserverOptions::default()
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        // Never dead-lettered while the test runs: an event is handled, or left for a restart.
        .handler_retries(1000, Duration::from_millis(10))
        .cursor_store(cursors.clone())
}

/// A count that tests wait on.
#[derive(Default)]
struct Counter {
    count: AtomicUsize,
    changed: Notify,
}

impl Counter {
    fn bump(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn get(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits until the count reaches `count`, failing the test after [`PATIENCE`].
    async fn until(&self, count: usize) {
        let waited = until_notified(&self.changed, || self.get() >= count).await;
        assert!(
            waited,
            "timed out waiting for {count} commits; {} so far",
            self.get()
        );
    }
}

/// Holds the handler of one event after its insert, until released; then that handler and
/// every later call fail, so that the observer stops mid-stream.
struct Hold {
    at: String,
    reached: watch::Sender<bool>,
    released: watch::Sender<bool>,
}

impl Hold {
    fn at(what: &str) -> Arc<Self> {
        Arc::new(Self {
            at: what.to_owned(),
            reached: watch::Sender::new(false),
            released: watch::Sender::new(false),
        })
    }

    fn is_released(&self) -> bool {
        *self.released.borrow()
    }

    async fn reach_and_wait(&self) {
        self.reached.send_replace(true);
        let _ = self
            .released
            .subscribe()
            .wait_for(|released| *released)
            .await;
    }

    async fn until_reached(&self) {
        let mut reached = self.reached.subscribe();
        tokio::time::timeout(PATIENCE, reached.wait_for(|reached| *reached))
            .await
            .expect("the held event reached")
            .unwrap();
    }

    /// Stops `handle`, and then releases the held handler: it fails, and is not retried.
    async fn stop(&self, handle: ObserverHandle) {
        // `join!` polls `stop` first: the observer is stopping before the handler fails.
        tokio::time::timeout(PATIENCE, async {
            tokio::join!(handle.stop(), async {
                self.released.send_replace(true);
            })
        })
        .await
        .expect("the observer stops");
    }
}

async fn create_effects(pool: &PgPool) {
    sqlx::query(
        "CREATE TABLE effects (
             id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             observer text NOT NULL,
             what text NOT NULL
         )",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// The effects of `observer`, in the order they committed.
async fn effects(pool: &PgPool, observer: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT what FROM effects WHERE observer = $1 ORDER BY id")
        .bind(observer)
        .fetch_all(pool)
        .await
        .unwrap()
}

fn sorted(mut whats: Vec<String>) -> Vec<String> {
    whats.sort();
    whats
}

fn names(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|n| format!("e{n:02}")).collect()
}

/// The stored cursor sequences of `observer`.
async fn stored_cursors(pool: &PgPool, observer: &str) -> Vec<i64> {
    sqlx::query_scalar("SELECT sequence FROM meshless.observer_cursors WHERE observer = $1")
        .bind(observer)
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn records(pool: &PgPool, observer: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM meshless.observer_handled WHERE observer = $1")
        .bind(observer)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_restarted_mid_stream_has_each_effect_exactly_once() {
    let Some(cluster) =
        Cluster::start("an_observer_restarted_mid_stream_has_each_effect_exactly_once")
    else {
        return;
    };
    within(async {
        let pool = cluster.pool(8).await;
        create_effects(&pool).await;
        let publisher = open(&pool, "echo-0").await;
        let producer = serve(&publisher).await;
        publish_committed(&pool, &publisher, &names(0..60)).await;

        let mut first = Effects::open(&pool, "welcome-email").await;
        let hold = Hold::at("e30");
        first.hold = Some(hold.clone());
        let handle = first.observe_echo(&producer.target()).await;
        hold.until_reached().await;
        hold.stop(handle).await;
        let committed = first.committed.get();
        assert_eq!(committed, 30, "stopped mid-stream, at the held event");
        assert_eq!(effects(&pool, "welcome-email").await, names(0..30));
        drop(first);

        let second = Effects::open(&pool, "welcome-email").await;
        let handle = second.observe_echo(&producer.target()).await;
        second.committed.until(60 - committed).await;
        handle.stop().await;
        assert_eq!(
            effects(&pool, "welcome-email").await,
            names(0..60),
            "every event's effect exactly once, in order"
        );
        assert_eq!(
            second.calls.load(Ordering::Relaxed),
            60 - committed,
            "the restarted observer resumed after the events handled"
        );
        producer.stop().await.unwrap();
        publisher.as_publisher().release().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_handler_transaction_leaves_nothing_and_is_retried_once() {
    let Some(cluster) =
        Cluster::start("a_failed_handler_transaction_leaves_nothing_and_is_retried_once")
    else {
        return;
    };
    within(async {
        let pool = cluster.pool(8).await;
        create_effects(&pool).await;
        let publisher = open(&pool, "echo-0").await;
        let producer = serve(&publisher).await;
        let observer = Effects::open(&pool, "failing").await;
        observer
            .fail_once
            .lock()
            .unwrap()
            .extend([("e03".to_owned(), false), ("e05".to_owned(), true)]);
        let handle = observer.observe_echo(&producer.target()).await;
        publish_committed(&pool, &publisher, &names(0..10)).await;
        observer.committed.until(10).await;
        handle.stop().await;

        assert_eq!(effects(&pool, "failing").await, names(0..10), "each once");
        assert_eq!(
            observer.calls.load(Ordering::Relaxed),
            12,
            "the two failed events were handled again"
        );
        assert_eq!(
            *observer.retried.lock().unwrap(),
            [
                ("e03".to_owned(), 0, 0, false),
                ("e05".to_owned(), 0, 0, false)
            ],
            "a failed transaction left no effect, no record and no cursor past its event"
        );
        observer.cursors.save().await.unwrap();
        assert_eq!(stored_cursors(&pool, "failing").await, [10]);
        assert_eq!(
            records(&pool, "failing").await,
            0,
            "records behind the cursor pruned"
        );
        producer.stop().await.unwrap();
        publisher.as_publisher().release().await;
    })
    .await;
}

/// Eight orders of ten steps each, one transaction per step.
async fn publish_orders(pool: &PgPool, publisher: &OrdersPublisher) {
    for step in 0..10 {
        let mut tx = pool.begin().await.unwrap();
        for order in 0..8 {
            let event = OrderChangedEvent {
                order: Some(Order {
                    id: format!("order-{order}"),
                }),
                step,
            };
            publisher
                .publish_order_changed_in(&mut tx, event)
                .await
                .unwrap();
        }
        publisher.commit(tx).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_lanes_restarted_mid_stream_have_each_effect_exactly_once() {
    let Some(cluster) =
        Cluster::start("keyed_lanes_restarted_mid_stream_have_each_effect_exactly_once")
    else {
        return;
    };
    within(async {
        let pool = cluster.pool(12).await;
        create_effects(&pool).await;
        let publisher = OrdersPublisher::open_postgres(&pool, "orders-0")
            .await
            .expect("a publisher on Postgres");
        let producer = Running::start(
            Server::builder()
                .add_service(OrdersService::with_publisher(NoCalls, publisher.clone())),
        )
        .await;
        publish_orders(&pool, &publisher).await;
        let start = |effects: &Effects| {
            OrdersObserver::new()
                .order_changed(effects.clone())
                .options(options(&effects.cursors).max_concurrent_handlers(4))
                .start(producer.target())
        };

        // order-0 is held at step 5 (sequence 41): the other orders' lanes go on past it.
        let mut first = Effects::open(&pool, "shipping").await;
        let hold = Hold::at("order-0/5");
        first.hold = Some(hold.clone());
        let handle = start(&first).await.unwrap();
        hold.until_reached().await;
        first.committed.until(60).await;
        hold.stop(handle).await;
        let committed = first.committed.get();
        assert!(committed < 80, "stopped mid-stream");
        let ahead: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM meshless.observer_handled
             WHERE observer = 'shipping' AND sequence > 41",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(ahead > 0, "events handled past the held one are recorded");
        drop(first);

        let second = Effects::open(&pool, "shipping").await;
        let handle = start(&second).await.unwrap();
        second.committed.until(80 - committed).await;
        handle.stop().await;
        let handled = effects(&pool, "shipping").await;
        let all: Vec<String> = (0..8)
            .flat_map(|order| (0..10).map(move |step| format!("order-{order}/{step}")))
            .collect();
        assert_eq!(
            sorted(handled.clone()),
            sorted(all),
            "each effect exactly once"
        );
        for order in 0..8 {
            let steps: Vec<&String> = handled
                .iter()
                .filter(|what| what.starts_with(&format!("order-{order}/")))
                .collect();
            let in_order: Vec<String> = (0..10).map(|s| format!("order-{order}/{s}")).collect();
            assert_eq!(
                steps,
                in_order.iter().collect::<Vec<_>>(),
                "order-{order} in order"
            );
        }
        assert_eq!(
            second.calls.load(Ordering::Relaxed),
            80 - committed,
            "the restarted observer skipped every event handled, ahead of the cursor too"
        );
        second.cursors.save().await.unwrap();
        assert_eq!(stored_cursors(&pool, "shipping").await, [80]);
        assert_eq!(
            records(&pool, "shipping").await,
            0,
            "records behind the cursor pruned"
        );
        producer.stop().await.unwrap();
        publisher.as_publisher().release().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_with_different_names_keep_separate_cursors() {
    let Some(cluster) = Cluster::start("observers_with_different_names_keep_separate_cursors")
    else {
        return;
    };
    within(async {
        let pool = cluster.pool(8).await;
        create_effects(&pool).await;
        let publisher = open(&pool, "echo-0").await;
        let producer = serve(&publisher).await;
        publish_committed(&pool, &publisher, &names(0..10)).await;

        let welcome = Effects::open(&pool, "welcome-email").await;
        let handle = welcome.observe_echo(&producer.target()).await;
        welcome.committed.until(10).await;
        handle.stop().await;
        welcome.cursors.save().await.unwrap();

        // Another name starts from the start, whatever the first one handled.
        let audit = Effects::open(&pool, "audit").await;
        let handle = audit.observe_echo(&producer.target()).await;
        audit.committed.until(10).await;
        handle.stop().await;
        audit.cursors.save().await.unwrap();

        publish_committed(&pool, &publisher, &names(10..15)).await;
        drop(welcome);
        let welcome = Effects::open(&pool, "welcome-email").await;
        let handle = welcome.observe_echo(&producer.target()).await;
        welcome.committed.until(5).await;
        handle.stop().await;
        welcome.cursors.save().await.unwrap();

        assert_eq!(
            welcome.calls.load(Ordering::Relaxed),
            5,
            "resumed at its own cursor"
        );
        assert_eq!(effects(&pool, "welcome-email").await, names(0..15));
        assert_eq!(effects(&pool, "audit").await, names(0..10));
        assert_eq!(stored_cursors(&pool, "welcome-email").await, [15]);
        assert_eq!(stored_cursors(&pool, "audit").await, [10]);
        producer.stop().await.unwrap();
        publisher.as_publisher().release().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_that_crashes_mid_stream_has_each_effect_exactly_once() {
    const EVENTS: usize = 400;
    let Some(cluster) =
        Cluster::start("an_observer_that_crashes_mid_stream_has_each_effect_exactly_once")
    else {
        return;
    };
    within(async {
        let pool = cluster.pool(8).await;
        create_effects(&pool).await;
        let publisher = open(&pool, "echo-0").await;
        let producer = serve(&publisher).await;
        publish_committed(&pool, &publisher, &names(0..EVENTS)).await;

        // The first observer runs on a runtime of its own, dropped mid-stream without a stop:
        // its tasks end where they are, its connections close, as when a process crashes.
        let (url, target) = (cluster.url(), producer.target());
        let crashed = tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let options: PgConnectOptions = url.parse().unwrap();
                let pool = PgPoolOptions::new()
                    .max_connections(4)
                    .connect_with(options.application_name("crashing"))
                    .await
                    .unwrap();
                let first = Effects::open(&pool, "crashing").await;
                let handle = first.observe_echo(&target).await;
                first.committed.until(100).await;
                // Dropped without a stop; no task runs again once `block_on` returns.
                drop((handle, first));
            });
            drop(runtime);
        });
        tokio::time::timeout(PATIENCE, crashed)
            .await
            .expect("the first observer crashes")
            .unwrap();
        // Once its connections are gone, what it committed is all there is.
        tokio::time::timeout(PATIENCE, async {
            while sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'crashing'",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
                > 0
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the crashed observer's connections close");
        let committed = effects(&pool, "crashing").await.len();
        eprintln!(
            "crash: {committed} events committed, the cursor written at {:?}",
            stored_cursors(&pool, "crashing").await
        );
        assert!(
            (100..EVENTS).contains(&committed),
            "crashed mid-stream: {committed}"
        );

        let second = Effects::open(&pool, "crashing").await;
        let handle = second.observe_echo(&producer.target()).await;
        second.committed.until(EVENTS - committed).await;
        handle.stop().await;
        assert_eq!(
            effects(&pool, "crashing").await,
            names(0..EVENTS),
            "every event's effect exactly once, in order"
        );
        assert_eq!(
            second.calls.load(Ordering::Relaxed),
            EVENTS - committed,
            "the restarted observer skipped every event handled, recorded past the cursor \
             written or not"
        );
        producer.stop().await.unwrap();
        publisher.as_publisher().release().await;
    })
    .await;
}
