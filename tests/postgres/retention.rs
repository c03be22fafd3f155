//! Retention in Postgres: the rows of events that have left the publisher's retained window
//! are deleted, and what is left is what observers are served, before and after a
//! replacement opens the name.

use meshless::events::PublisherSettings;

use super::*;

const RETAIN: usize = 10;

fn settings() -> PublisherSettings {
    PublisherSettings::default().retain("Echoed", RETAIN)
}

/// The sequences of `stream`'s committed rows, in order (`None`, not numbered yet, last).
async fn rows_of(pool: &PgPool, stream: &str) -> Vec<Option<i64>> {
    sqlx::query_scalar("SELECT sequence FROM meshless.events WHERE stream = $1 ORDER BY sequence")
        .bind(stream)
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Waits until `stream` holds exactly the rows numbered `expected`, failing the test after
/// [`PATIENCE`]. The rows are deleted by the publisher's own connection, on its schedule: the
/// table is looked at until they are gone.
async fn until_rows(pool: &PgPool, stream: &str, expected: std::ops::RangeInclusive<i64>) {
    let expected: Vec<_> = expected.map(Some).collect();
    let waited = tokio::time::timeout(PATIENCE, async {
        loop {
            let rows = rows_of(pool, stream).await;
            if rows == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if waited.is_err() {
        panic!(
            "the rows of {stream} were {:?}, not {expected:?}",
            rows_of(pool, stream).await
        );
    }
}

fn names(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|n| format!("e{n}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_past_retention_are_deleted_and_the_rest_is_served() {
    let Some(cluster) = Cluster::start("rows_past_retention_are_deleted_and_the_rest_is_served")
    else {
        return;
    };
    within(async {
        let pool = cluster.pool(4).await;
        let publisher = EchoPublisher::open_postgres_with_settings(&pool, "orders-0", settings())
            .await
            .unwrap();
        // 300: past the 256 that start a deletion at once, and a rest deleted on the timer.
        publish_committed(&pool, &publisher, &names(0..300)).await;
        until_rows(&pool, "orders-0", 291..=300).await;

        let producer = serve(&publisher).await;
        let observer = Collector::default();
        let handle = observer.observe(&producer.target()).await;
        observer.until_count(RETAIN).await;
        assert_eq!(observer.messages(), names(290..300), "the retained window");

        // A replacement reads back only what is left, and deletes as it goes on.
        handle.stop().await;
        producer.stop().await.unwrap();
        publisher.as_publisher().release().await;
        drop(publisher);
        let replacement = EchoPublisher::open_postgres_with_settings(&pool, "orders-0", settings())
            .await
            .unwrap();
        publish_committed(&pool, &replacement, &names(300..305)).await;
        until_rows(&pool, "orders-0", 296..=305).await;
        let producer = serve(&replacement).await;
        let observer = Collector::default();
        let handle = observer.observe(&producer.target()).await;
        observer.until_count(RETAIN).await;
        assert_eq!(observer.messages(), names(295..305));
        assert_eq!(
            observer
                .seen()
                .iter()
                .map(|(_, s, _)| *s)
                .collect::<Vec<_>>(),
            (296..=305).collect::<Vec<_>>()
        );
        handle.stop().await;
        producer.stop().await.unwrap();
        replacement.as_publisher().release().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_keeps_its_rows_while_older_ones_are_deleted() {
    let Some(cluster) =
        Cluster::start("an_open_transaction_keeps_its_rows_while_older_ones_are_deleted")
    else {
        return;
    };
    within(async {
        let pool = cluster.pool(4).await;
        let publisher = EchoPublisher::open_postgres_with_settings(&pool, "orders-0", settings())
            .await
            .unwrap();
        let mut open = pool.begin().await.unwrap();
        publisher
            .publish_echoed_in(&mut open, event("late"))
            .await
            .unwrap();
        publish_committed(&pool, &publisher, &names(0..40)).await;
        // The rows past the window are deleted while the transaction that inserted first is
        // still open; it then commits, and its event is numbered and kept as the newest.
        until_rows(&pool, "orders-0", 31..=40).await;
        publisher.commit(open).await.unwrap();
        until_rows(&pool, "orders-0", 32..=41).await;
        let late: Vec<u8> =
            sqlx::query_scalar("SELECT payload FROM meshless.events WHERE sequence = 41")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(
            late,
            meshless::codegen::prost::Message::encode_to_vec(&event("late"))
        );
        publisher.as_publisher().release().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_age_limit_that_empties_the_window_keeps_the_sequences_going() {
    let Some(cluster) =
        Cluster::start("an_age_limit_that_empties_the_window_keeps_the_sequences_going")
    else {
        return;
    };
    let settings = || {
        let mut settings = PublisherSettings::default();
        settings.max_retained_age = Some(Duration::from_millis(1));
        settings
    };
    within(async {
        let pool = cluster.pool(4).await;
        let publisher = EchoPublisher::open_postgres_with_settings(&pool, "orders-0", settings())
            .await
            .unwrap();
        publish_committed(&pool, &publisher, &names(0..5)).await;
        // Within milliseconds every event is past the age limit: the rows go, but the
        // latest's, which a publisher opening the name again continues after.
        until_rows(&pool, "orders-0", 5..=5).await;
        publisher.as_publisher().release().await;
        drop(publisher);
        let replacement = EchoPublisher::open_postgres_with_settings(&pool, "orders-0", settings())
            .await
            .unwrap();
        publish_committed(&pool, &replacement, &names(5..6)).await;
        until_rows(&pool, "orders-0", 6..=6).await;
        replacement.as_publisher().release().await;
    })
    .await;
}
