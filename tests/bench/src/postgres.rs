//! Events in Postgres (`--only postgres`): a transactional publish against the same INSERT and
//! COMMIT without meshless (the floor) and against the file log, and the time from a commit to
//! the handler at 1,000 transactions a second, and the takeover of a name whose publisher
//! died. The server is a cluster of its own, made with
//! `initdb` and started with `pg_ctl` as `tests/postgres` does; without PostgreSQL's binaries
//! the rows are skipped.

#[path = "../../postgres/cluster.rs"]
#[allow(dead_code)]
mod cluster;

use std::sync::Arc;
use std::time::{Duration, Instant};

use meshless::events::postgres::sqlx::{self, PgPool};
use meshless::events::PublisherSettings;

use crate::proto::mesh::testing::v1 as mesh;
use crate::stats::Latencies;
use crate::Bench;

/// Transactions at once in the throughput rows.
const AT_ONCE: usize = 8;

fn event(message: String) -> mesh::EchoedEvent {
    mesh::EchoedEvent { message }
}

fn payload() -> String {
    "x".repeat(60)
}

/// Events per second when `AT_ONCE` tasks run `transactions` transactions each, of
/// `per_transaction` events, with `one` running one transaction.
async fn rate<F, Fut>(transactions: usize, per_transaction: usize, one: F) -> f64
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..AT_ONCE)
        .map(|_| {
            let one = one.clone();
            tokio::spawn(async move {
                for _ in 0..transactions {
                    one(per_transaction).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a transaction task");
    }
    (AT_ONCE * transactions * per_transaction) as f64 / started.elapsed().as_secs_f64()
}

async fn floor(pool: &PgPool, per_transaction: usize) {
    let mut tx = pool.begin().await.expect("begin");
    for _ in 0..per_transaction {
        sqlx::query("INSERT INTO bench_rows (payload) VALUES ($1)")
            .bind(payload().into_bytes())
            .execute(&mut *tx)
            .await
            .expect("insert");
    }
    tx.commit().await.expect("commit");
}

async fn meshless_in(pool: &PgPool, publisher: &mesh::EchoPublisher, per_transaction: usize) {
    let mut tx = pool.begin().await.expect("begin");
    for _ in 0..per_transaction {
        publisher
            .publish_echoed_in(&mut tx, event(payload()))
            .await
            .expect("publish in");
    }
    publisher.commit(tx).await.expect("commit");
}

pub async fn section(bench: &Bench) {
    let Some(cluster) = cluster::Cluster::start("the postgres rows") else {
        return;
    };
    let pool = cluster.pool(AT_ONCE as u32 + 2).await;
    sqlx::query("CREATE TABLE bench_rows (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, payload bytea NOT NULL)")
        .execute(&pool)
        .await
        .expect("the floor's table");
    let settings = PublisherSettings::default().retain("Echoed", 10_000);
    let publisher = mesh::EchoPublisher::open_postgres_with_settings(&pool, "bench-0", settings)
        .await
        .expect("open_postgres");
    let transactions = if bench.quick { 100 } else { 400 };
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&pool)
        .await
        .expect("the server's version");
    println!(
        "Events in Postgres, 64 B, {AT_ONCE} transactions at once (PostgreSQL {version} on this machine, synchronous_commit on)"
    );
    println!("                                              per tx     events/s   x floor");
    for per_transaction in [1, 64] {
        let transactions = if per_transaction == 1 {
            transactions
        } else {
            transactions / 8
        };
        let pool_floor = pool.clone();
        let floor_rate = rate(transactions, per_transaction, move |n| {
            let pool = pool_floor.clone();
            async move { floor(&pool, n).await }
        })
        .await;
        let (pool_in, publisher_in) = (pool.clone(), publisher.clone());
        let meshless_rate = rate(transactions, per_transaction, move |n| {
            let (pool, publisher) = (pool_in.clone(), publisher_in.clone());
            async move { meshless_in(&pool, &publisher, n).await }
        })
        .await;
        println!(
            "  INSERT and COMMIT, no meshless (the floor)  {per_transaction:>6} {floor_rate:>12.0}      1.00"
        );
        println!(
            "  meshless publish_*_in and commit            {per_transaction:>6} {meshless_rate:>12.0} {:>9.2}",
            meshless_rate / floor_rate
        );
    }
    // The file log, each publish waiting for its sync, as many at once.
    let scratch = std::env::temp_dir().join(format!("meshless-bench-pg-{}", std::process::id()));
    let disk = mesh::EchoPublisher::open_with_settings(
        &scratch,
        PublisherSettings::default().retain("Echoed", 10_000),
    )
    .expect("open a directory");
    let disk_rate = {
        let disk = disk.clone();
        rate(transactions, 1, move |_| {
            let disk = disk.clone();
            async move {
                disk.publish_echoed_durable(event(payload()))
                    .await
                    .expect("durable publish");
            }
        })
        .await
    };
    println!("  file log, publish_*_durable (no database)        1 {disk_rate:>12.0}");
    drop(disk);
    let _ = std::fs::remove_dir_all(&scratch);

    latency(bench, &pool, &publisher).await;
    takeover(&pool).await;
    publisher.as_publisher().release().await;
    drop(cluster);
    println!();
}

/// Commit-to-handler time at 1,000 transactions a second, one event each, read by a plain
/// subscriber of a meshless server: with `commit` (the publisher serves at once) and with a
/// plain `tx.commit()` (the publisher notices by itself).
async fn latency(bench: &Bench, pool: &PgPool, publisher: &mesh::EchoPublisher) {
    let echo = crate::servers::Echo {
        name: "postgres",
        delay: Duration::ZERO,
        broken: false,
    };
    let addr = crate::servers::start_echo(echo, publisher.clone()).await;
    let count = if bench.quick { 500 } else { 3_000 };
    let base = Instant::now();
    for with_commit in [true, false] {
        let mut client = crate::proto::plain::testing::v1::echo_client::EchoClient::connect(
            format!("http://{addr}"),
        )
        .await
        .expect("connect");
        let live = crate::proto::plain::meshless::v1::Subscribe {
            start: 2,
            ..Default::default()
        };
        let mut stream = client.echoed(live).await.expect("subscribe").into_inner();
        let received = Arc::new(std::sync::Mutex::new(Latencies::default()));
        let reader = {
            let received = received.clone();
            tokio::spawn(async move {
                let mut seen = 0;
                while seen < count {
                    let Ok(Some(event)) = stream.message().await else {
                        break;
                    };
                    let Ok(sent_ns) = event.message.parse::<u64>() else {
                        continue; // a heartbeat
                    };
                    let at = base.elapsed().as_nanos() as u64;
                    received
                        .lock()
                        .unwrap()
                        .record(Duration::from_nanos(at.saturating_sub(sent_ns)));
                    seen += 1;
                }
            })
        };
        let mut pace = tokio::time::interval(Duration::from_millis(1));
        for _ in 0..count {
            pace.tick().await;
            let mut tx = pool.begin().await.expect("begin");
            let sent = base.elapsed().as_nanos() as u64;
            publisher
                .publish_echoed_in(&mut tx, event(sent.to_string()))
                .await
                .expect("publish in");
            if with_commit {
                publisher.commit(tx).await.expect("commit");
            } else {
                tx.commit().await.expect("commit");
            }
        }
        tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .expect("every event read within a minute")
            .expect("the reader");
        let mut latencies = received.lock().unwrap();
        println!(
            "  publish_*_in to a subscriber at 1,000 tx/s, {}: p50 {:.0} us, p99 {:.0} us ({count} events; from before the INSERT)",
            if with_commit {
                "publisher.commit(tx)"
            } else {
                "plain tx.commit()   "
            },
            latencies.quantile(0.5),
            latencies.quantile(0.99),
        );
    }
}

/// From the death of a publisher (its runtime gone at once, as with its process: its tasks
/// stop and its connections close) to a replacement under the same name opened and ready to
/// serve, the replacement trying every millisecond while the name is held.
async fn takeover(pool: &PgPool) {
    const ROUNDS: usize = 5;
    let options = (*pool.connect_options()).clone();
    let mut times = Latencies::default();
    for round in 0..ROUNDS {
        let name = format!("takeover-{round}");
        let (opened, is_open) = tokio::sync::oneshot::channel::<()>();
        let (die, dying) = tokio::sync::oneshot::channel::<()>();
        let doomed = {
            let (options, name) = (options.clone(), name.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                let publisher = runtime.block_on(async {
                    let pool = sqlx::postgres::PgPoolOptions::new()
                        .max_connections(2)
                        .connect_with(options)
                        .await
                        .expect("a pool");
                    let publisher = mesh::EchoPublisher::open_postgres(&pool, &name)
                        .await
                        .expect("the publisher that dies");
                    opened.send(()).expect("the bench waits");
                    let _ = dying.await;
                    publisher
                });
                // Its tasks are dropped and its sockets closed, with no release.
                runtime.shutdown_background();
                drop(publisher);
            })
        };
        is_open.await.expect("opened");
        let died = Instant::now();
        let _ = die.send(());
        let replacement = loop {
            match mesh::EchoPublisher::open_postgres(pool, &name).await {
                Ok(publisher) => break publisher,
                Err(error) if error.is_stream_in_use() => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(error) => panic!("opening the replacement: {error}"),
            }
        };
        times.record(died.elapsed());
        replacement.as_publisher().release().await;
        doomed
            .join()
            .expect("the thread of the publisher that died");
    }
    println!(
        "  takeover, from a publisher's death to its replacement opened: p50 {:.0} us, max {:.0} us ({ROUNDS} rounds)",
        times.quantile(0.5),
        times.quantile(1.0),
    );
}
