//! Retries as gRFC A6 has them: a backoff between attempts, and the server's pushback
//! (`grpc-retry-pushback-ms`) honoured, "do not retry" included.

use std::time::{Duration, Instant};

use super::{counter, Counter};
use crate::support::testing::counter::v1::{CounterClient, GetRequest};

fn broken(pushback: Option<&'static str>) -> Counter {
    Counter {
        pushback,
        ..Counter::named("broken", true)
    }
}

#[tokio::test]
async fn a_server_that_says_do_not_retry_gets_one_attempt() {
    let instance = broken(Some("-1"));
    let server = counter(&instance).await;
    let client = CounterClient::connect(server.target()).await.unwrap();
    let status = client.get(GetRequest {}).await.unwrap_err();
    assert_eq!(status.code(), meshless::Code::Unavailable);
    assert_eq!(instance.calls(), 1);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn retries_back_off_or_wait_as_long_as_the_server_says() {
    let instance = broken(None);
    let server = counter(&instance).await;
    let client = CounterClient::connect(server.target()).await.unwrap();
    let started = Instant::now();
    client.get(GetRequest {}).await.unwrap_err();
    assert_eq!(instance.calls(), 3);
    // 100 ms, then 200 ms, each at least 0.8 times that.
    assert!(
        started.elapsed() >= Duration::from_millis(240),
        "3 attempts in {:?}",
        started.elapsed()
    );
    server.stop().await.unwrap();

    let instance = broken(Some("400"));
    let server = counter(&instance).await;
    let client = CounterClient::connect(server.target()).await.unwrap();
    let started = Instant::now();
    client.get(GetRequest {}).await.unwrap_err();
    assert_eq!(instance.calls(), 3);
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "3 attempts in {:?}",
        started.elapsed()
    );
    server.stop().await.unwrap();
}
