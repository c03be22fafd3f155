//! Faults around the database: down at start, down while serving, the pool exhausted, a
//! connection dropped in the middle of a transaction. Each ends in a clear error, loses
//! nothing committed and delivers nothing that did not commit.

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection as _, PgConnection};

use super::*;

/// Opening on `pool` for the stream `orders-0`, expecting an error from the database.
async fn open_fails(pool: &PgPool) -> meshless::Error {
    let error = EchoPublisher::open_postgres(pool, "orders-0")
        .await
        .expect_err("opening fails");
    assert!(
        error.as_database_error().is_some(),
        "the database's error: {error}"
    );
    error
}

#[tokio::test]
async fn a_database_down_at_start_is_a_clear_error() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(&format!("postgres://postgres@127.0.0.1:{port}/postgres"))
        .unwrap();
    let error = tokio::time::timeout(PATIENCE, open_fails(&pool))
        .await
        .expect("opening gives up within the pool's acquire timeout");
    let message = error.to_string();
    assert!(
        message.contains("migrating the meshless schema") && message.contains("orders-0"),
        "says what was being done, for which stream: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_fails_opening_clearly_and_holds_up_no_serving() {
    let Some(cluster) =
        Cluster::start("an_exhausted_pool_fails_opening_clearly_and_holds_up_no_serving")
    else {
        return;
    };
    within(async {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(1))
            .connect(&cluster.url())
            .await
            .unwrap();
        let watched = Watched::start(&pool).await;
        let (publisher, observer) = (&watched.publisher, &watched.observer);
        publish_committed(&pool, publisher, &["before".to_owned()]).await;

        // Every connection of the pool is taken.
        let held = (pool.begin().await.unwrap(), pool.begin().await.unwrap());
        let other = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(1))
            .connect_lazy_with((*pool.connect_options()).clone());
        let error = EchoPublisher::open_postgres(&pool, "orders-1")
            .await
            .expect_err("no connection to migrate with");
        assert!(
            matches!(error.as_database_error(), Some(sqlx::Error::PoolTimedOut)),
            "{error}"
        );

        // The publisher numbers and serves on a connection of its own: an event committed
        // outside the pool is served while the pool has none to give.
        let mut own = PgConnection::connect(&cluster.url()).await.unwrap();
        let mut tx = own.begin().await.unwrap();
        publisher
            .publish_echoed_in(&mut tx, event("while exhausted"))
            .await
            .unwrap();
        publisher.commit(tx).await.unwrap();
        observer.until_count(2).await;
        assert_eq!(observer.messages(), ["before", "while exhausted"]);

        drop(held);
        drop(other);
        publish_committed(&pool, publisher, &["after".to_owned()]).await;
        observer.until_count(3).await;
        assert_eq!(observer.gaps.load(Ordering::Relaxed), 0);
        watched.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_mid_transaction_publishes_nothing() {
    let Some(cluster) = Cluster::start("a_connection_dropped_mid_transaction_publishes_nothing")
    else {
        return;
    };
    within(async {
        let pool = cluster.pool(4).await;
        let watched = Watched::start(&pool).await;
        let (publisher, observer) = (&watched.publisher, &watched.observer);

        let mut tx = pool.begin().await.unwrap();
        publisher
            .publish_echoed_in(&mut tx, event("cut off"))
            .await
            .unwrap();
        let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(backend)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(terminated);
        publisher
            .commit(tx)
            .await
            .expect_err("the commit of a transaction whose connection was dropped fails");

        // The pool replaces the connection; the next transaction publishes as before.
        publish_committed(&pool, publisher, &["next".to_owned()]).await;
        observer.until_count(1).await;
        let seen = observer.seen();
        assert_eq!(
            seen.iter()
                .map(|(_, s, m)| (*s, m.as_str()))
                .collect::<Vec<_>>(),
            [(1, "next")],
            "the event of the dropped transaction never numbered nor delivered"
        );
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM meshless.events")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(rows, 1);
        assert_eq!(observer.gaps.load(Ordering::Relaxed), 0);
        watched.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_down_what_committed_is_served_and_publishing_fails() {
    let Some(mut cluster) =
        Cluster::start("while_the_database_is_down_what_committed_is_served_and_publishing_fails")
    else {
        return;
    };
    within(async {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(2))
            .connect(&cluster.url())
            .await
            .unwrap();
        let watched = Watched::start(&pool).await;
        let (publisher, observer) = (&watched.publisher, &watched.observer);
        let names: Vec<String> = (0..5).map(|n| format!("e{n}")).collect();
        publish_committed(&pool, publisher, &names).await;
        observer.until_count(5).await;

        tokio::task::block_in_place(|| cluster.stop_for_now());
        // A transaction cannot even begin: the driver's error, nothing published.
        assert!(
            pool.begin().await.is_err(),
            "no transaction without a server"
        );
        // A new observer is served what committed, from the publisher's memory.
        let late = Collector::default();
        let late_handle = late.observe(&watched.producer.target()).await;
        late.until_count(5).await;
        assert_eq!(late.messages(), names);

        tokio::task::block_in_place(|| cluster.start_again());
        // Publishing resumes once the pool connects again (a first attempt may still fail).
        let again = tokio::time::timeout(PATIENCE, async {
            loop {
                let Ok(mut tx) = pool.begin().await else {
                    continue;
                };
                if publisher
                    .publish_echoed_in(&mut tx, event("after"))
                    .await
                    .is_ok()
                    && publisher.commit(tx).await.is_ok()
                {
                    return;
                }
            }
        })
        .await;
        assert!(
            again.is_ok(),
            "publishing resumed after the server came back"
        );
        for collector in [observer, &late] {
            collector.until_count(6).await;
            let seen = collector.seen();
            assert_eq!(
                seen.iter().map(|(_, s, _)| *s).collect::<Vec<_>>(),
                (1..=6).collect::<Vec<_>>(),
                "nothing lost, nothing twice"
            );
            assert_eq!(seen[5].2, "after");
            assert_eq!(collector.gaps.load(Ordering::Relaxed), 0, "no gap");
        }
        late_handle.stop().await;
        watched.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_of_the_publisher_cancelled_does_not_stop_it() {
    let Some(cluster) = Cluster::start("a_statement_of_the_publisher_cancelled_does_not_stop_it")
    else {
        return;
    };
    within(async {
        let pool = cluster.pool(4).await;
        let watched = Watched::start(&pool).await;
        let (publisher, observer) = (&watched.publisher, &watched.observer);
        publish_committed(&pool, publisher, &["before".to_owned()]).await;
        observer.until_count(1).await;

        // The publisher's next look at the table waits behind a lock; then it is cancelled:
        // the statement fails, the session (and its lock on the name) lives on.
        let mut blocker = pool.begin().await.unwrap();
        sqlx::query("LOCK TABLE meshless.events IN ACCESS EXCLUSIVE MODE")
            .execute(&mut *blocker)
            .await
            .unwrap();
        let waiting = tokio::time::timeout(PATIENCE, async {
            loop {
                let pid: Option<i32> = sqlx::query_scalar(
                    "SELECT pid FROM pg_stat_activity
                     WHERE application_name = 'meshless stream' AND wait_event_type = 'Lock'",
                )
                .fetch_optional(&pool)
                .await
                .unwrap();
                if let Some(pid) = pid {
                    return pid;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the publisher waits for the lock");
        let cancelled: bool = sqlx::query_scalar("SELECT pg_cancel_backend($1)")
            .bind(waiting)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(cancelled);
        blocker.rollback().await.unwrap();

        // It claims the name again and goes on.
        publish_committed(&pool, publisher, &["after".to_owned()]).await;
        observer.until_count(2).await;
        assert_eq!(observer.messages(), ["before", "after"]);
        assert_eq!(observer.gaps.load(Ordering::Relaxed), 0);
        watched.stop().await;
    })
    .await;
}
