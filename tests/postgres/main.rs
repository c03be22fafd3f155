//! Events kept in Postgres, against a real server (see `cluster.rs`): published inside
//! transactions, numbered in commit order without holes, with their keys and trace context, never
//! delivered when rolled back, one live publisher per stream name, a replacement that
//! continues the stream, a restart of the database server that loses nothing committed, and
//! observers whose cursors are in Postgres (`cursors.rs`).
//!
//! Run with `cargo test --features meshless/postgres --test postgres`; without the PostgreSQL
//! binaries each test says it is skipped (and fails with `MESHLESS_REQUIRE_POSTGRES=1`).

#[path = "../support/mod.rs"]
mod support;

mod cluster;
mod compaction;
mod cursors;
mod faults;
mod groups;
mod retention;
mod sigkill;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster::Cluster;
use meshless::events::postgres::sqlx::{self, PgPool};
use meshless::events::{Event, HandlerError, ObserverHandle, ObserverOptions, PublishError};
use meshless::Server;
use support::testing::orders::v1::{
    ChangeReply, ChangeRequest, Order, OrderChangedEvent, OrderChangedObserver, OrdersHandler,
    OrdersObserver, OrdersPublisher, OrdersService,
};
use support::testing::v1::EchoObserver;
use support::{Echo, EchoPublisher, EchoService, EchoedEvent, EchoedObserver, Running, PATIENCE};
use tokio::sync::Notify;

/// What an observer handled: (epoch, sequence, message), in the order handled.
#[derive(Clone, Default)]
struct Collector {
    seen: Arc<Mutex<Vec<(u64, u64, String)>>>,
    changed: Arc<Notify>,
    gaps: Arc<AtomicU64>,
}

impl EchoedObserver for Collector {
    async fn echoed(&self, event: Event<EchoedEvent>) -> Result<(), HandlerError> {
        let cursor = event.cursor();
        self.seen.lock().unwrap().push((
            cursor.epoch,
            cursor.sequence,
            event.message().message.clone(),
        ));
        self.changed.notify_waiters();
        Ok(())
    }
}

impl Collector {
    fn seen(&self) -> Vec<(u64, u64, String)> {
        self.seen.lock().unwrap().clone()
    }

    fn messages(&self) -> Vec<String> {
        self.seen().into_iter().map(|(_, _, m)| m).collect()
    }

    /// Waits until `count` events were handled, failing the test after [`PATIENCE`].
    async fn until_count(&self, count: usize) {
        let waited =
            until_notified(&self.changed, || self.seen.lock().unwrap().len() >= count).await;
        assert!(
            waited,
            "timed out waiting for {count} events; handled {:?}",
            self.messages()
        );
    }

    /// Starts observing `target`, counting the gaps it is told of.
    async fn observe(&self, target: &str) -> ObserverHandle {
        let gaps = self.gaps.clone();
        EchoObserver::new()
            .echoed(self.clone())
            .options(
                ObserverOptions::default()
                    .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
                    .heartbeat(Duration::from_millis(200))
                    .on_gap(move |_| {
                        gaps.fetch_add(1, Ordering::Relaxed);
                    }),
            )
            .start(target)
            .await
            .expect("an observer")
    }
}

fn event(message: &str) -> EchoedEvent {
    EchoedEvent {
        message: message.to_owned(),
    }
}

/// A producer serving `publisher`'s events on 127.0.0.1, with the admin service.
async fn serve(publisher: &EchoPublisher) -> Running {
    Running::start(
        Server::builder()
            .admin(true)
            .add_service(EchoService::with_publisher(
                Echo::default(),
                publisher.clone(),
            )),
    )
    .await
}

/// Waits until `done`, looked at again each time `changed` is notified; `false` when that
/// takes longer than [`PATIENCE`].
async fn until_notified(changed: &Notify, done: impl Fn() -> bool) -> bool {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done() {
                return;
            }
            notified.await;
        }
    })
    .await
    .is_ok()
}

/// Waits until every one of `messages` is among those `handled` gives, looked at again each
/// time `changed` is notified; fails the test after [`PATIENCE`], saying how many are missing.
async fn until_all_handled(
    changed: &Notify,
    handled: impl Fn() -> Vec<String>,
    messages: &[String],
) {
    let missing = || {
        let seen: HashSet<String> = handled().into_iter().collect();
        messages.iter().filter(|m| !seen.contains(*m)).count()
    };
    let waited = until_notified(changed, || missing() == 0).await;
    assert!(waited, "{} of the events never handled", missing());
}

/// Runs a test's body, failing the test when it takes longer than its time limit.
async fn within(body: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(4 * PATIENCE, body)
        .await
        .expect("the test finished within its time limit");
}

async fn open(pool: &PgPool, name: &str) -> EchoPublisher {
    EchoPublisher::open_postgres(pool, name)
        .await
        .expect("a publisher on Postgres")
}

/// A publisher of the stream `orders-0`, served on 127.0.0.1, with a plain observer that
/// collects what it handles.
struct Watched {
    publisher: EchoPublisher,
    producer: Running,
    observer: Collector,
    handle: ObserverHandle,
}

impl Watched {
    async fn start(pool: &PgPool) -> Self {
        let publisher = open(pool, "orders-0").await;
        let producer = serve(&publisher).await;
        let observer = Collector::default();
        let handle = observer.observe(&producer.target()).await;
        Self {
            publisher,
            producer,
            observer,
            handle,
        }
    }

    /// Stops the observer and the producer, and lets the name go.
    async fn stop(self) {
        self.handle.stop().await;
        self.producer.stop().await.unwrap();
        self.publisher.as_publisher().release().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_commits_late_is_not_skipped() {
    let Some(cluster) = Cluster::start("a_transaction_that_commits_late_is_not_skipped") else {
        return;
    };
    within(async {
        let pool = cluster.pool(8).await;
        let watched = Watched::start(&pool).await;
        let (publisher, observer) = (&watched.publisher, &watched.observer);

        // The first to insert commits last. A serial id taken at insert would put "first" before
        // "second"; a reader past "second" would then skip "first" when it commits.
        let mut first = pool.begin().await.unwrap();
        publisher
            .publish_echoed_in(&mut first, event("first"))
            .await
            .unwrap();
        let mut second = pool.begin().await.unwrap();
        publisher
            .publish_echoed_in(&mut second, event("second"))
            .await
            .unwrap();
        publisher.commit(second).await.unwrap();
        // Served while "first" is still open: an open transaction holds up only its own events.
        observer.until_count(1).await;
        publisher.commit(first).await.unwrap();

        observer.until_count(2).await;
        let seen = observer.seen();
        let epoch = publisher.as_publisher().epoch();
        assert_eq!(
            seen,
            [
                (epoch, 1, "second".to_owned()),
                (epoch, 2, "first".to_owned())
            ],
            "both delivered, in commit order, numbered without a hole"
        );
        assert_eq!(observer.gaps.load(Ordering::Relaxed), 0);
        watched.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_publish_is_never_delivered() {
    let Some(cluster) = Cluster::start("a_rolled_back_publish_is_never_delivered") else {
        return;
    };
    within(async {
        let pool = cluster.pool(8).await;
        let watched = Watched::start(&pool).await;
        let (publisher, observer) = (&watched.publisher, &watched.observer);

        let mut rolled_back = pool.begin().await.unwrap();
        publisher
            .publish_echoed_in(&mut rolled_back, event("rolled back"))
            .await
            .unwrap();
        rolled_back.rollback().await.unwrap();
        // A plain publish is refused: events of this publisher are published by transactions.
        assert!(matches!(
            publisher.publish_echoed(event("plain")),
            Err(PublishError::InTransaction { .. })
        ));
        assert!(matches!(
            publisher.publish_echoed_batch(&[event("plain"), event("batch")]),
            Err(PublishError::InTransaction { .. })
        ));
        // Committed after the rollback, with a plain commit (no helper): the publisher notices it
        // by itself.
        let mut committed = pool.begin().await.unwrap();
        publisher
            .publish_echoed_in(&mut committed, event("committed"))
            .await
            .unwrap();
        committed.commit().await.unwrap();

        observer.until_count(1).await;
        let epoch = publisher.as_publisher().epoch();
        assert_eq!(observer.seen(), [(epoch, 1, "committed".to_owned())]);
        watched.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transactions_with_rollbacks_are_each_delivered_once() {
    const TRANSACTIONS: usize = 1000;
    const AT_ONCE: u32 = 120;
    let Some(cluster) =
        Cluster::start("concurrent_transactions_with_rollbacks_are_each_delivered_once")
    else {
        return;
    };
    within(async {
        // As many transactions open at once as the pool has connections.
        let pool = cluster.pool(AT_ONCE + 4).await;
        let watched = Watched::start(&pool).await;
        let (publisher, observer) = (&watched.publisher, &watched.observer);
        let member = groups::Member::default();
        let member_handle = member.join(&watched.producer.target(), "billing").await;

        let tasks: Vec<_> = (0..TRANSACTIONS)
            .map(|n| {
                let (pool, publisher) = (pool.clone(), publisher.clone());
                let commit = fastrand::u8(0..5) != 0;
                let delay = Duration::from_millis(fastrand::u64(0..40));
                tokio::spawn(async move {
                    let message = format!("t{n}");
                    let mut tx = pool.begin().await.unwrap();
                    publisher
                        .publish_echoed_in(&mut tx, event(&message))
                        .await
                        .unwrap();
                    tokio::time::sleep(delay).await;
                    if !commit {
                        tx.rollback().await.unwrap();
                    } else if n % 2 == 0 {
                        publisher.commit(tx).await.unwrap();
                    } else {
                        tx.commit().await.unwrap();
                    }
                    (message, commit)
                })
            })
            .collect();
        let mut committed = BTreeSet::new();
        let mut rolled_back = HashSet::new();
        for task in tasks {
            let (message, commit) = tokio::time::timeout(PATIENCE, task)
                .await
                .expect("a transaction within the patience")
                .unwrap();
            if commit {
                committed.insert(message);
            } else {
                rolled_back.insert(message);
            }
        }
        assert!(!rolled_back.is_empty() && !committed.is_empty());

        observer.until_count(committed.len()).await;
        let seen = observer.seen();
        let handled: Vec<String> = seen.iter().map(|(_, _, m)| m.clone()).collect();
        let unique: BTreeSet<String> = handled.iter().cloned().collect();
        assert_eq!(unique.len(), handled.len(), "an event was handled twice");
        assert_eq!(unique, committed, "every committed event, and nothing else");
        assert!(handled.iter().all(|m| !rolled_back.contains(m)));
        let sequences: Vec<u64> = seen.iter().map(|(_, s, _)| *s).collect();
        assert_eq!(
            sequences,
            (1..=committed.len() as u64).collect::<Vec<_>>(),
            "numbered in order without a hole"
        );
        assert_eq!(observer.gaps.load(Ordering::Relaxed), 0);

        // The consumer group's member: each committed event once, none rolled back.
        let committed: Vec<String> = committed.into_iter().collect();
        member.until_all(&committed).await;
        member_handle.stop().await;
        let in_group: Vec<String> = member
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|(m, _, _)| m.clone())
            .collect();
        assert_eq!(in_group.len(), committed.len(), "each once in the group");
        assert!(in_group.iter().all(|m| !rolled_back.contains(m)));
        watched.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_publisher_with_the_same_name_is_refused() {
    let Some(cluster) = Cluster::start("a_second_publisher_with_the_same_name_is_refused") else {
        return;
    };
    within(async {
        let pool = cluster.pool(8).await;
        let first = open(&pool, "orders-0").await;
        let second = EchoPublisher::open_postgres(&pool, "orders-0").await;
        let error = second.expect_err("a second live publisher of one name");
        assert!(error.is_stream_in_use(), "{error}");
        assert!(error.to_string().contains("\"orders-0\""), "{error}");
        // Another name is another stream.
        let other = open(&pool, "orders-1").await;
        assert_ne!(other.as_publisher().epoch(), first.as_publisher().epoch());
        // Released, the name can be opened again, with the same epoch.
        first.as_publisher().release().await;
        let again = open(&pool, "orders-0").await;
        assert_eq!(again.as_publisher().epoch(), first.as_publisher().epoch());
        again.as_publisher().release().await;
        // Dropped, a publisher lets its name go too, in the background.
        let other_epoch = other.as_publisher().epoch();
        drop(other);
        let reopened = tokio::time::timeout(PATIENCE, async {
            loop {
                match EchoPublisher::open_postgres(&pool, "orders-1").await {
                    Ok(publisher) => return publisher,
                    Err(error) if error.is_stream_in_use() => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(error) => panic!("{error}"),
                }
            }
        })
        .await
        .expect("the name of a dropped publisher is released");
        assert_eq!(reopened.as_publisher().epoch(), other_epoch);
        reopened.as_publisher().release().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_in_refuses_what_publish_refuses() {
    let Some(cluster) = Cluster::start("publish_in_refuses_what_publish_refuses") else {
        return;
    };
    within(async {
        let pool = cluster.pool(4).await;
        let mut settings = meshless::events::PublisherSettings::default();
        settings.max_event_size = 16;
        let publisher = EchoPublisher::open_postgres_with_settings(&pool, "orders-0", settings)
            .await
            .expect("a publisher on Postgres");
        let mut tx = pool.begin().await.unwrap();
        let refused = publisher
            .publish_echoed_in(&mut tx, event(&"x".repeat(100)))
            .await
            .expect_err("an event over max_event_size");
        let sqlx::Error::Encode(refusal) = &refused else {
            panic!("not sqlx::Error::Encode: {refused:?}");
        };
        assert!(
            matches!(
                refusal.downcast_ref::<PublishError>(),
                Some(PublishError::TooLarge { limit: 16, .. })
            ),
            "{refused:?}"
        );
        // Nothing was inserted.
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM meshless.events")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(rows, 0);
        tx.rollback().await.unwrap();
        publisher.as_publisher().release().await;
    })
    .await;
}

/// A server for `publisher` on `addr` (the address of a server before it).
async fn serve_on(addr: std::net::SocketAddr, publisher: &EchoPublisher) -> Running {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    let listener = socket.listen(1024).unwrap();
    Running::start_on(
        listener,
        Server::builder().add_service(EchoService::with_publisher(
            Echo::default(),
            publisher.clone(),
        )),
    )
}

async fn publish_committed(pool: &PgPool, publisher: &EchoPublisher, messages: &[String]) {
    for message in messages {
        let mut tx = pool.begin().await.unwrap();
        publisher
            .publish_echoed_in(&mut tx, event(message))
            .await
            .unwrap();
        publisher.commit(tx).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_with_the_same_name_continues_the_stream() {
    let Some(cluster) = Cluster::start("a_replacement_with_the_same_name_continues_the_stream")
    else {
        return;
    };
    within(async {
    let pool = cluster.pool(8).await;
    let names =
        |range: std::ops::Range<usize>| -> Vec<String> { range.map(|n| format!("e{n}")).collect() };
    let publisher = open(&pool, "orders-0").await;
    let epoch = publisher.as_publisher().epoch();
    let producer = serve(&publisher).await;
    let addr = producer.addr;
    let observer = Collector::default();
    let handle = observer.observe(&producer.target()).await;
    publish_committed(&pool, &publisher, &names(0..20)).await;
    observer.until_count(20).await;

    // The instance goes away; events committed meanwhile wait in the table.
    producer.stop().await.unwrap();
    publisher.as_publisher().release().await;
    drop(publisher);
    let mut meanwhile = pool.begin().await.unwrap();
    for message in names(20..30) {
        sqlx::query(
            "INSERT INTO meshless.events (stream, rpc, payload) VALUES ('orders-0', 'testing.v1.Echo/Echoed', $1)",
        )
        .bind(meshless::codegen::prost::Message::encode_to_vec(&event(&message)))
        .execute(&mut *meanwhile)
        .await
        .unwrap();
    }
    meanwhile.commit().await.unwrap();

    // Its replacement, under the same name, on the address the observer knows.
    let replacement = open(&pool, "orders-0").await;
    assert_eq!(replacement.as_publisher().epoch(), epoch, "the same epoch");
    let producer = serve_on(addr, &replacement).await;
    publish_committed(&pool, &replacement, &names(30..40)).await;

    observer.until_count(40).await;
    let seen = observer.seen();
    assert_eq!(
        seen.iter().map(|(_, _, m)| m.clone()).collect::<Vec<_>>(),
        names(0..40),
        "nothing lost, nothing twice"
    );
    assert!(seen.iter().all(|(e, _, _)| *e == epoch));
    assert_eq!(
        seen.iter().map(|(_, s, _)| *s).collect::<Vec<_>>(),
        (1..=40).collect::<Vec<_>>(),
        "the sequences go on"
    );
    assert_eq!(observer.gaps.load(Ordering::Relaxed), 0, "no gap");
    handle.stop().await;
    producer.stop().await.unwrap();
    replacement.as_publisher().release().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_is_migrated_once_and_a_newer_one_is_refused() {
    let Some(cluster) = Cluster::start("the_schema_is_migrated_once_and_a_newer_one_is_refused")
    else {
        return;
    };
    within(async {
        let pool = cluster.pool(8).await;
        // Publishers opening at once on an empty database: one creates the schema, the
        // others find it.
        let (a, b, c) = tokio::join!(
            open(&pool, "orders-0"),
            open(&pool, "orders-1"),
            open(&pool, "orders-2")
        );
        for publisher in [a, b, c] {
            publisher.as_publisher().release().await;
        }
        let versions: Vec<i32> =
            sqlx::query_scalar("SELECT version FROM meshless.schema_version ORDER BY version")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert!(!versions.is_empty());
        assert_eq!(
            versions,
            (1..=versions.len() as i32).collect::<Vec<_>>(),
            "each version applied once, in order"
        );
        sqlx::query("INSERT INTO meshless.schema_version (version) VALUES (999)")
            .execute(&pool)
            .await
            .unwrap();
        let error = EchoPublisher::open_postgres(&pool, "orders-0")
            .await
            .expect_err("a schema from a newer meshless");
        assert!(error.to_string().contains("version 999"), "{error}");
    })
    .await;
}

/// An event as a member handled it: (order id, step, key of the event).
type KeyedEvent = (String, u64, Vec<u8>);

/// What a member of a consumer group handled.
#[derive(Clone, Default)]
struct Keyed {
    seen: Arc<Mutex<Vec<KeyedEvent>>>,
    changed: Arc<Notify>,
}

impl OrderChangedObserver for Keyed {
    async fn order_changed(&self, event: Event<OrderChangedEvent>) -> Result<(), HandlerError> {
        let order = event.message().order.clone().unwrap_or_default();
        self.seen
            .lock()
            .unwrap()
            .push((order.id, event.message().step, event.key().to_vec()));
        self.changed.notify_waiters();
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_reach_observers_and_consumer_groups() {
    let Some(cluster) = Cluster::start("keys_reach_observers_and_consumer_groups") else {
        return;
    };
    within(async {
        let pool = cluster.pool(8).await;
        let publisher = OrdersPublisher::open_postgres(&pool, "orders-0")
            .await
            .expect("a publisher on Postgres");
        let producer = Running::start(
            Server::builder()
                .add_service(OrdersService::with_publisher(NoCalls, publisher.clone())),
        )
        .await;
        let member = Keyed::default();
        let handle = OrdersObserver::new()
            .order_changed(member.clone())
            .options(
                ObserverOptions::default()
                    .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
                    .consumer_group("shipping"),
            )
            .start(producer.target())
            .await
            .unwrap();

        let mut tx = pool.begin().await.unwrap();
        for (id, step) in [("order-a", 0), ("order-b", 0), ("order-a", 1)] {
            let event = OrderChangedEvent {
                order: Some(Order { id: id.into() }),
                step,
            };
            publisher
                .publish_order_changed_in(&mut tx, event)
                .await
                .unwrap();
        }
        publisher.commit(tx).await.unwrap();

        let waited =
            until_notified(&member.changed, || member.seen.lock().unwrap().len() >= 3).await;
        assert!(
            waited,
            "the group's member got {:?}",
            member.seen.lock().unwrap()
        );
        let mut seen = member.seen.lock().unwrap().clone();
        seen.sort();
        assert_eq!(
            seen,
            [
                ("order-a".to_owned(), 0, b"order-a".to_vec()),
                ("order-a".to_owned(), 1, b"order-a".to_vec()),
                ("order-b".to_owned(), 0, b"order-b".to_vec()),
            ],
            "each event once, with its key"
        );
        handle.stop().await;
        producer.stop().await.unwrap();
        publisher.as_publisher().release().await;
    })
    .await;
}

/// An Orders handler for a producer that is only asked for events.
struct NoCalls;

impl OrdersHandler for NoCalls {
    async fn change(
        &self,
        _: meshless::Request<ChangeRequest>,
    ) -> Result<meshless::Response<ChangeReply>, meshless::Status> {
        Err(meshless::Status::unimplemented("events only"))
    }
}

#[tokio::test]
async fn the_observer_span_links_to_the_span_the_event_was_published_in() {
    use opentelemetry::trace::TracerProvider as _;
    use tracing::Instrument;
    use tracing_subscriber::layer::SubscriberExt;

    let Some(cluster) =
        Cluster::start("the_observer_span_links_to_the_span_the_event_was_published_in")
    else {
        return;
    };
    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("meshless-test"));
    // This test's thread only: the runtime is single-threaded, so every task runs here.
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
    // With one dispatcher registered, tracing-core decides a callsite's interest from the
    // default of whichever thread reaches it first: another test's thread, with no subscriber,
    // would disable `meshless.event` for the whole process. A second registered dispatcher
    // makes every callsite ask the current thread's dispatcher each time.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    within(async {
        let pool = cluster.pool(4).await;
        let watched = Watched::start(&pool).await;
        let (publisher, observer) = (&watched.publisher, &watched.observer);

        async {
            let mut tx = pool.begin().await.unwrap();
            publisher
                .publish_echoed_in(&mut tx, event("traced"))
                .await
                .unwrap();
            publisher.commit(tx).await.unwrap();
        }
        .instrument(tracing::info_span!("place order"))
        .await;
        observer.until_count(1).await;
        watched.stop().await;
    })
    .await;

    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let named = |name: &str| -> Vec<_> { spans.iter().filter(|s| s.name == name).collect() };
    let (placing, handling) = (named("place order"), named("meshless.event"));
    assert_eq!((placing.len(), handling.len()), (1, 1), "{spans:#?}");
    let links: Vec<_> = handling[0]
        .links
        .iter()
        .map(|link| (link.span_context.trace_id(), link.span_context.span_id()))
        .collect();
    assert_eq!(
        links,
        [(
            placing[0].span_context.trace_id(),
            placing[0].span_context.span_id()
        )],
        "the observer's span links to the span that published in the transaction"
    );
}

/// What the publishing task of the restart test saw: the messages whose commit returned `Ok`,
/// and those whose commit itself failed (it may have committed before the answer was lost).
#[derive(Default)]
struct Published {
    committed: Vec<String>,
    unsure: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_server_restarted_while_events_flow_loses_nothing_committed() {
    const BEFORE: usize = 60;
    const AFTER: usize = 60;
    let Some(mut cluster) =
        Cluster::start("the_database_server_restarted_while_events_flow_loses_nothing_committed")
    else {
        return;
    };
    within(async {
        let pool = cluster.pool(8).await;
        let watched = Watched::start(&pool).await;
        let (publisher, observer) = (&watched.publisher, &watched.observer);

        // Publishes one event per transaction until told to stop; a transaction that fails
        // (the server going away or not back yet) is not retried: its event has a name of its
        // own and counts as not committed, unless its commit was what failed.
        let published = Arc::new(Mutex::new(Published::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failures = Arc::new(AtomicU64::new(0));
        let progress = Arc::new(Notify::new());
        let task = {
            let (pool, publisher, published, stop, failures, progress) = (
                pool.clone(),
                publisher.clone(),
                published.clone(),
                stop.clone(),
                failures.clone(),
                progress.clone(),
            );
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Acquire) {
                    let message = format!("e{n}");
                    n += 1;
                    let mut tx = match pool.begin().await {
                        Ok(tx) => tx,
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    };
                    if publisher
                        .publish_echoed_in(&mut tx, event(&message))
                        .await
                        .is_err()
                    {
                        failures.fetch_add(1, Ordering::Relaxed);
                        drop(tx);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    match publisher.commit(tx).await {
                        Ok(()) => published.lock().unwrap().committed.push(message),
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            published.lock().unwrap().unsure.push(message);
                        }
                    }
                    progress.notify_waiters();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        let committed_count = || published.lock().unwrap().committed.len();
        let until_committed = |count: usize| {
            let (progress, published) = (progress.clone(), published.clone());
            async move {
                let waited = until_notified(&progress, || {
                    published.lock().unwrap().committed.len() >= count
                })
                .await;
                assert!(waited, "timed out waiting for {count} commits");
            }
        };

        until_committed(BEFORE).await;
        tokio::task::block_in_place(|| cluster.restart());
        let at_restart = committed_count();
        // Publishing goes on once the pool connects again.
        until_committed(at_restart + AFTER).await;
        stop.store(true, Ordering::Release);
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("the publishing task stops")
            .unwrap();
        let published = std::mem::take(&mut *published.lock().unwrap());

        // What the database holds is the truth for commits whose answer was lost.
        let mut in_table = HashSet::new();
        for payload in sqlx::query_scalar::<_, Vec<u8>>(
            "SELECT payload FROM meshless.events WHERE stream = 'orders-0'",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
        {
            let decoded: EchoedEvent =
                meshless::codegen::prost::Message::decode(&payload[..]).unwrap();
            in_table.insert(decoded.message);
        }
        assert!(
            published.committed.iter().all(|m| in_table.contains(m)),
            "a commit that returned Ok is in the table"
        );
        let expected: BTreeSet<String> = published
            .committed
            .iter()
            .chain(published.unsure.iter().filter(|m| in_table.contains(*m)))
            .cloned()
            .collect();
        assert_eq!(
            expected.len(),
            in_table.len(),
            "nothing in the table that was not published"
        );

        observer.until_count(expected.len()).await;
        // Time for an event handled twice, or one that never committed, to show.
        tokio::time::sleep(3 * meshless::events::postgres::POLL_INTERVAL).await;
        let seen = observer.seen();
        let handled: Vec<String> = seen.iter().map(|(_, _, m)| m.clone()).collect();
        let unique: BTreeSet<String> = handled.iter().cloned().collect();
        assert_eq!(unique.len(), handled.len(), "an event was handled twice");
        assert_eq!(unique, expected, "every committed event, and nothing else");
        let epoch = publisher.as_publisher().epoch();
        assert!(seen.iter().all(|(e, _, _)| *e == epoch));
        assert_eq!(
            seen.iter().map(|(_, s, _)| *s).collect::<Vec<_>>(),
            (1..=expected.len() as u64).collect::<Vec<_>>(),
            "handled in sequence order, without a hole"
        );
        assert_eq!(observer.gaps.load(Ordering::Relaxed), 0, "no gap");
        // Events published one transaction at a time are numbered in the order they committed.
        let order: Vec<usize> = handled.iter().map(|m| m[1..].parse().unwrap()).collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "in commit order");
        // The admin view says where the events live and how far they go.
        let status = meshless::admin::v1::AdminClient::new(
            meshless::Channel::connect(&watched.producer.target())
                .await
                .unwrap(),
        )
        .get_status(meshless::admin::v1::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
        let rpc = &status.event_rpcs[0];
        assert_eq!(
            (
                rpc.storage.as_str(),
                rpc.epoch,
                rpc.first_sequence,
                rpc.last_sequence
            ),
            ("postgres", epoch, 1, expected.len() as u64)
        );
        eprintln!(
            "the log's last error, as the admin view has it: {:?}",
            rpc.last_error
        );
        eprintln!(
            "restart: {} committed ({} of them after the restart), {} unsure, {} failed attempts",
            published.committed.len(),
            published.committed.len() - at_restart,
            published.unsure.len(),
            failures.load(Ordering::Relaxed)
        );
        watched.stop().await;
    })
    .await;
}
