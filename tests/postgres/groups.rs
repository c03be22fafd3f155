//! Consumer groups on a publisher in Postgres: their progress is kept in `meshless.groups`,
//! so a replacement under the stream's name goes on where the group was.

use super::*;

/// What a consumer group's member handled: (message, sequence, delivery count).
#[derive(Clone, Default)]
pub(crate) struct Member {
    pub(crate) seen: Arc<Mutex<Vec<(String, u64, u32)>>>,
    changed: Arc<Notify>,
}

impl EchoedObserver for Member {
    async fn echoed(&self, event: Event<EchoedEvent>) -> Result<(), HandlerError> {
        self.seen.lock().unwrap().push((
            event.message().message.clone(),
            event.cursor().sequence,
            event.delivery_count(),
        ));
        self.changed.notify_waiters();
        Ok(())
    }
}

impl Member {
    /// A member of the group `group` of the producer at `target`.
    pub(crate) async fn join(&self, target: &str, group: &str) -> ObserverHandle {
        self.join_from(target, group, meshless::v1::StartPosition::Oldest)
            .await
    }

    /// A member of the group `group`, which starts at `start` if it has to form the group.
    pub(crate) async fn join_from(
        &self,
        target: &str,
        group: &str,
        start: meshless::v1::StartPosition,
    ) -> ObserverHandle {
        EchoObserver::new()
            .echoed(self.clone())
            .options(
                ObserverOptions::default()
                    .start(start)
                    .consumer_group(group)
                    .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100)),
            )
            .start(target)
            .await
            .expect("a member")
    }

    /// Waits until every one of `messages` was handled, failing the test after [`PATIENCE`].
    pub(crate) async fn until_all(&self, messages: &[String]) {
        let handled = || {
            let seen = self.seen.lock().unwrap();
            seen.iter().map(|(m, _, _)| m.clone()).collect()
        };
        until_all_handled(&self.changed, handled, messages).await;
    }
}

fn names(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|n| format!("e{n}")).collect()
}

/// (start, acked) of the group `name` as the table keeps it.
async fn row_of(pool: &PgPool, name: &str) -> Option<(i64, Vec<i64>)> {
    sqlx::query_as("SELECT start, acked FROM meshless.groups WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_goes_on_where_it_was_after_a_replacement() {
    let Some(cluster) = Cluster::start("a_group_goes_on_where_it_was_after_a_replacement") else {
        return;
    };
    within(async {
        let pool = cluster.pool(4).await;
        let publisher = open(&pool, "orders-0").await;
        let producer = serve(&publisher).await;
        let addr = producer.addr;
        let member = Member::default();
        let handle = member.join(&producer.target(), "billing").await;
        publish_committed(&pool, &publisher, &names(0..20)).await;
        member.until_all(&names(0..20)).await;
        // Written as the member acknowledges, in the background.
        let written = tokio::time::timeout(PATIENCE, async {
            while row_of(&pool, "billing").await != Some((21, Vec::new())) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(written.is_ok(), "{:?}", row_of(&pool, "billing").await);
        handle.stop().await;
        producer.stop().await.unwrap();
        publisher.as_publisher().release().await;
        drop(publisher);
        assert_eq!(
            row_of(&pool, "billing").await,
            Some((21, Vec::new())),
            "the group's progress, in the table"
        );

        // Meanwhile, more events; then a replacement, and the member again.
        let replacement = open(&pool, "orders-0").await;
        publish_committed(&pool, &replacement, &names(20..30)).await;
        let producer = serve_on(addr, &replacement).await;
        let again = Member::default();
        let handle = again.join(&producer.target(), "billing").await;
        again.until_all(&names(20..30)).await;
        let seen = again.seen.lock().unwrap().clone();
        assert_eq!(
            seen.iter()
                .map(|(m, s, _)| (m.clone(), *s))
                .collect::<Vec<_>>(),
            names(20..30).into_iter().zip(21..).collect::<Vec<_>>(),
            "only the events the group had not handled"
        );
        assert!(
            seen.iter().all(|(_, _, deliveries)| *deliveries == 1),
            "first deliveries: the group had acknowledged every event before: {seen:?}"
        );
        handle.stop().await;
        producer.stop().await.unwrap();
        replacement.as_publisher().release().await;
    })
    .await;
}
