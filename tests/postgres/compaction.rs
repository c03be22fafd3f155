//! Compaction by key in Postgres (`OrderState`: a window of 16, `compact_by_key`): the rows
//! past the window are deleted but the latest of every key, and a replacement that opens the
//! name serves them to a subscriber that starts at the latest event of every key, then live.

use meshless::v1::{StartPosition, Subscribe};
use support::testing::orders::v1::OrdersClient;
use tokio_stream::StreamExt;

use super::*;

/// The sequences of `stream`'s rows of `OrderState`, in order; `None` for a row committed and
/// not yet numbered by the publisher.
async fn state_rows(pool: &PgPool, stream: &str) -> Vec<Option<i64>> {
    sqlx::query_scalar(
        "SELECT sequence FROM meshless.events
         WHERE stream = $1 AND rpc LIKE '%/OrderState' ORDER BY sequence NULLS LAST",
    )
    .bind(stream)
    .fetch_all(pool)
    .await
    .unwrap()
}

fn change(order: usize, step: u64) -> OrderChangedEvent {
    OrderChangedEvent {
        order: Some(Order {
            id: format!("order-{order}"),
        }),
        step,
    }
}

/// Publishes `changes`, one transaction for each.
async fn publish(pool: &PgPool, publisher: &OrdersPublisher, changes: &[(usize, u64)]) {
    for &(order, step) in changes {
        let mut tx = pool.begin().await.unwrap();
        publisher
            .publish_order_state_in(&mut tx, change(order, step))
            .await
            .unwrap();
        publisher.commit(tx).await.unwrap();
    }
}

/// The next event of `stream` (heartbeats skipped), with its sequence; it reports no gap.
async fn next(
    stream: &mut (impl tokio_stream::Stream<
        Item = Result<meshless::events::Envelope<OrderChangedEvent>, meshless::Status>,
    > + Unpin),
) -> (OrderChangedEvent, u64) {
    loop {
        let item = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .expect("an event within the patience")
            .unwrap()
            .unwrap();
        let (event, metadata) = item.into_parts().unwrap();
        if !metadata.heartbeat {
            assert_eq!(metadata.missed, 0, "superseded is not missed");
            return (event, metadata.sequence);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_the_latest_row_of_every_key_and_a_replacement_serves_it() {
    let Some(cluster) =
        Cluster::start("compaction_keeps_the_latest_row_of_every_key_and_a_replacement_serves_it")
    else {
        return;
    };
    within(async {
        let pool = cluster.pool(4).await;
        let publisher = OrdersPublisher::open_postgres(&pool, "states-0")
            .await
            .unwrap();
        // Three changes of 40 orders (sequences 1 to 120: order k's last at 81 + k), then 30
        // more of order 0 (121 to 150): the window is 135 to 150.
        let rounds: Vec<(usize, u64)> = (0..3)
            .flat_map(|step| (0..40).map(move |order| (order, step)))
            .collect();
        publish(&pool, &publisher, &rounds).await;
        let more: Vec<(usize, u64)> = (3..33).map(|step| (0, step)).collect();
        publish(&pool, &publisher, &more).await;

        // Rows are deleted by the publisher's connection on its schedule: looked at until
        // only the kept ones and the window are left.
        let expected: Vec<Option<i64>> = (82..=120).chain(135..=150).map(Some).collect();
        let waited = tokio::time::timeout(PATIENCE, async {
            while state_rows(&pool, "states-0").await != expected {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "rows {:?}",
            state_rows(&pool, "states-0").await
        );
        publisher.as_publisher().release().await;
        drop(publisher);

        // A replacement reads the kept rows back.
        let replacement = OrdersPublisher::open_postgres(&pool, "states-0")
            .await
            .unwrap();
        let producer = Running::start(
            Server::builder()
                .add_service(OrdersService::with_publisher(NoCalls, replacement.clone())),
        )
        .await;
        let client = OrdersClient::connect(producer.target()).await.unwrap();
        let mut stream = client
            .into_tonic()
            .order_state(Subscribe {
                start: StartPosition::LatestPerKey as i32,
                ..Subscribe::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        for _ in 0..40 {
            let (event, sequence) = next(&mut stream).await;
            got.push((event.order.unwrap().id, event.step, sequence));
        }
        let mut wanted: Vec<(String, u64, u64)> = (1..40)
            .map(|order| (format!("order-{order}"), 2, 81 + order as u64))
            .collect();
        wanted.push(("order-0".into(), 32, 150));
        assert_eq!(got, wanted, "the latest of every order, in sequence order");

        // Then live.
        publish(&pool, &replacement, &[(5, 3)]).await;
        let (event, sequence) = next(&mut stream).await;
        assert_eq!((event.step, sequence), (3, 151));
        producer.stop().await.unwrap();
    })
    .await;
}
