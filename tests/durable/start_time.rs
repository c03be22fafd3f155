//! Starting from a time: on a producer that restarted on its directory, a subscriber that asks
//! for the events since a time gets exactly those, whether it is a plain gRPC client or a
//! meshless observer; a bad time is refused.

use std::time::{SystemTime, UNIX_EPOCH};

use meshless::events::ObserverOptions;
use meshless::v1::{StartPosition, Subscribe};
use meshless::Code;

use super::support::testing::v1::EchoObserver;
use super::support::{self, EchoClient, PATIENCE};
use super::{echoed, scratch, Handled};

fn unix_micros(time: SystemTime) -> i64 {
    i64::try_from(time.duration_since(UNIX_EPOCH).unwrap().as_micros()).unwrap()
}

/// A time later, to the microsecond, than every publish so far, and earlier than every
/// publish after this returns.
fn a_time_between() -> SystemTime {
    let last = unix_micros(SystemTime::now());
    loop {
        let now = SystemTime::now();
        if unix_micros(now) > last {
            return now;
        }
        std::hint::spin_loop();
    }
}

#[tokio::test]
async fn a_start_time_gets_exactly_the_events_published_since_across_a_restart() {
    let dir = scratch();
    let publisher = support::EchoPublisher::open(&dir.0).unwrap();
    for i in 0..5 {
        publisher
            .publish_echoed(echoed(&format!("before {i}")))
            .unwrap();
    }
    let since = a_time_between();
    for i in 0..3 {
        publisher
            .publish_echoed(echoed(&format!("after {i}")))
            .unwrap();
    }
    drop(publisher);
    let reopened = support::EchoPublisher::open(&dir.0).unwrap();
    reopened
        .publish_echoed(echoed("after the restart"))
        .unwrap();
    let producer = support::Running::publishing(reopened.clone()).await;
    let expected = ["after 0", "after 1", "after 2", "after the restart"];

    // A plain gRPC client.
    let client = EchoClient::connect(producer.target()).await.unwrap();
    let mut stream = client
        .clone()
        .into_tonic()
        .echoed(Subscribe {
            start: StartPosition::Time as i32,
            start_time_unix_micros: unix_micros(since),
            ..Subscribe::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut read = Vec::new();
    while read.len() < expected.len() {
        let (event, metadata) =
            tokio::time::timeout(PATIENCE, tokio_stream::StreamExt::next(&mut stream))
                .await
                .expect("an event within the patience")
                .unwrap()
                .unwrap()
                .into_parts()
                .unwrap();
        assert_eq!(
            metadata.missed, 0,
            "events before the time are skipped, not missed"
        );
        read.push(event.message);
    }
    assert_eq!(read, expected);
    drop(stream);

    // A meshless observer.
    let handled = Handled::default();
    let observer = EchoObserver::new()
        .echoed(handled.clone())
        .options(ObserverOptions::default().start_at(since))
        .start(&producer.target())
        .await
        .unwrap();
    let expected: Vec<String> = expected.iter().map(|m| m.to_string()).collect();
    handled.until_all(&expected).await;
    reopened.publish_echoed(echoed("live")).unwrap();
    handled.until_all(&["live".to_string()]).await;
    let mut seen: Vec<String> = handled.by_message.lock().unwrap().keys().cloned().collect();
    seen.sort();
    let mut wanted = expected.clone();
    wanted.push("live".into());
    wanted.sort();
    assert_eq!(seen, wanted, "nothing from before the time");
    observer.stop().await;

    // A time before 1970 is no publish time.
    let refused = client
        .into_tonic()
        .echoed(Subscribe {
            start: StartPosition::Time as i32,
            start_time_unix_micros: -1,
            ..Subscribe::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("before 1970"), "{refused:?}");
    producer.stop().await.unwrap();
}
