//! Starts at the latest event of every key (`OrderState`): subscribers that start while
//! events are published get every key's final state, every change from the one they start at,
//! each once, in order per key; an observer restarted on its cursor file goes on after it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use meshless::events::{ObserverOptions, PublisherSettings};
use meshless::v1::StartPosition;
use tokio::sync::watch;

use super::compaction::{change, latest_per_key, serve, subscribe_raw, Got};
use super::scratch;
use super::support::testing::orders::v1::{OrdersObserver, OrdersPublisher};
use super::support::PATIENCE;

/// The window of `OrderState` in the race below, and how far a subscriber may fall behind:
/// less, so that a subscriber that keeps its stream never reads from before the window (where
/// it would get only the kept events, the others being superseded).
const WINDOW: usize = 3000;
const BUFFER: usize = 2500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_per_key_then_live_with_publishes_racing_the_snapshot() {
    // 100 cold keys change in the first 10 rounds only (their last changes leave the window
    // and are kept), 200 hot keys in each of 100 rounds.
    const COLD: usize = 100;
    const KEYS: usize = 300;
    const STEPS: u64 = 100;
    let rounds = |key: usize| if key < COLD { 10 } else { STEPS };
    let dir = scratch();
    let mut settings = PublisherSettings::default().retain("OrderState", WINDOW);
    settings.subscriber_buffer = BUFFER;
    let publisher = OrdersPublisher::open_with_settings(&dir.0, settings).unwrap();
    let producer = serve(publisher.clone()).await;
    let target = producer.target();

    // Publishes round after round, telling how many went out.
    let (published, progress) = watch::channel(0u64);
    let publishing = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            let mut count = 0;
            for step in 0..STEPS {
                for key in (0..KEYS).filter(|key| step < rounds(*key)) {
                    publisher.publish_order_state(change(key, step)).unwrap();
                    count += 1;
                    if count % 10 == 0 {
                        published.send_replace(count);
                        tokio::task::yield_now().await;
                    }
                }
            }
            published.send_replace(count);
        })
    };

    // Subscribers start one after another while the rounds go out: plain gRPC clients, a
    // meshless observer, and one with keyed lanes.
    let mut subscribers = Vec::new();
    let total = (0..KEYS).map(rounds).sum::<u64>();
    for (index, at) in [
        0,
        total / 10,
        total / 4,
        total / 3,
        total / 2,
        2 * total / 3,
        9 * total / 10,
    ]
    .into_iter()
    .enumerate()
    {
        let mut progress = progress.clone();
        tokio::time::timeout(PATIENCE, progress.wait_for(|count| *count >= at))
            .await
            .expect("the publisher goes on")
            .unwrap();
        let got = Got::default();
        match index % 3 {
            0 | 1 => {
                let missed = Arc::new(Mutex::new(0));
                let task =
                    subscribe_raw(&target, latest_per_key(), got.clone(), missed.clone()).await;
                subscribers.push((format!("raw {index}"), got, Some((task, missed)), None));
            }
            _ => {
                let lanes = if index == 5 { 4 } else { 1 };
                let observer = OrdersObserver::new()
                    .order_state(got.clone())
                    .options(
                        ObserverOptions::default()
                            .start(StartPosition::LatestPerKey)
                            .max_concurrent_handlers(lanes),
                    )
                    .start(&target)
                    .await
                    .unwrap();
                subscribers.push((
                    format!("observer {index}, lanes {lanes}"),
                    got,
                    None,
                    Some(observer),
                ));
            }
        }
    }
    publishing.await.unwrap();

    let last: HashMap<String, u64> = (0..KEYS)
        .map(|key| (format!("order-{key}"), rounds(key) - 1))
        .collect();
    let mut mid_stream = 0;
    for (who, got, raw, observer) in subscribers {
        got.until_final(&last, &who).await;
        // Started while the rounds went out: a key got more than its latest.
        if got.events.lock().unwrap().len() > KEYS {
            mid_stream += 1;
        }
        // Raw streams keep sequence order and never fall behind the window (they would be cut
        // off): every change from their first of each key. An observer whose stream was cut
        // off resumes from its cursor, possibly before the window. Keyed lanes finish keys
        // out of order.
        got.check(
            &who,
            raw.is_some() || who.ends_with("lanes 1"),
            raw.is_some(),
        );
        if let Some((task, missed)) = raw {
            assert_eq!(
                *missed.lock().unwrap(),
                0,
                "{who}: superseded is not missed"
            );
            task.abort();
        }
        if let Some(observer) = observer {
            observer.stop().await;
        }
    }
    assert!(
        mid_stream >= 3,
        "only {mid_stream} subscribers started while events were published"
    );
    producer.stop().await.unwrap();
}

#[tokio::test]
async fn an_observer_restarted_on_its_cursor_file_goes_on_after_the_latest_per_key() {
    const KEYS: usize = 30;
    let dir = scratch();
    std::fs::create_dir_all(&dir.0).unwrap();
    let cursors = dir.0.join("state.cursors");
    let publisher = OrdersPublisher::new();
    for step in 0..4 {
        for key in 0..KEYS {
            publisher.publish_order_state(change(key, step)).unwrap();
        }
    }
    let producer = serve(publisher.clone()).await;
    let target = producer.target();
    let start = |got: Got| {
        OrdersObserver::new()
            .order_state(got)
            .options(
                ObserverOptions::default()
                    .start(StartPosition::LatestPerKey)
                    .max_concurrent_handlers(4)
                    .cursor_store(meshless::events::FileCursors::open(&cursors).unwrap()),
            )
            .start(&target)
    };
    let first = Got::default();
    let observer = start(first.clone()).await.unwrap();
    let last: HashMap<String, u64> = (0..KEYS).map(|key| (format!("order-{key}"), 3)).collect();
    first.until_final(&last, "first run").await;
    first.check("first run", false, true);
    assert_eq!(
        first.events.lock().unwrap().len(),
        KEYS,
        "one event per key"
    );
    observer.stop().await;

    // Published while it was stopped: the restart handles those, and nothing again.
    for key in 0..KEYS / 2 {
        publisher.publish_order_state(change(key, 4)).unwrap();
    }
    let second = Got::default();
    let observer = start(second.clone()).await.unwrap();
    let next: HashMap<String, u64> = (0..KEYS / 2)
        .map(|key| (format!("order-{key}"), 4))
        .collect();
    second.until_final(&next, "second run").await;
    second.check("second run", false, true);
    assert_eq!(
        second.events.lock().unwrap().len(),
        KEYS / 2,
        "only what was published since"
    );
    observer.stop().await;
    producer.stop().await.unwrap();
}
