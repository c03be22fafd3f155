//! Deadlines: `DEADLINE_EXCEEDED` wherever the deadline passes (in the body, while waiting
//! for an instance), in the status and in the metrics; the `grpc-timeout` each attempt sends
//! is what is left; the whole-call deadline ends a stream that outlasts it.

use std::time::{Duration, Instant};

use meshless::{Channel, Code, Request};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokio_stream::StreamExt;

use super::{counter, Counter};
use crate::support::testing::counter::v1::{CounterClient, GetRequest};
use crate::support::{request, Echo, EchoClient, Running, PATIENCE};

/// A listener that accepts nothing for `delay`, then passes each connection on to `to`: the
/// instance behind it connects that much later.
async fn late_proxy(to: std::net::SocketAddr, delay: Duration) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut socket, &mut server).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_deadline_that_passes_while_waiting_for_an_instance_is_deadline_exceeded() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let echo = Running::echo(Echo::named("e")).await;
    let late = late_proxy(echo.addr, Duration::from_secs(2)).await;
    let channel = Channel::builder()
        .connect_timeout(Duration::from_secs(5))
        .connect(&format!("ipv4:{late}"))
        .await
        .unwrap();
    let mut call = Request::new(request("hi"));
    call.set_timeout(Duration::from_millis(200));
    let status = tokio::time::timeout(PATIENCE, EchoClient::new(channel).unary(call))
        .await
        .expect("the call ends")
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(client_codes(&snapshotter), ["DEADLINE_EXCEEDED"]);
    echo.stop().await.unwrap();
}

/// The codes of the client calls counted so far.
fn client_codes(snapshotter: &metrics_util::debugging::Snapshotter) -> Vec<String> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "meshless_client_calls_total")
        .filter(|(.., value)| matches!(value, DebugValue::Counter(n) if *n > 0))
        .flat_map(|(key, ..)| {
            key.key()
                .labels()
                .filter(|label| label.key() == "code")
                .map(|label| label.value().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn the_timeout_sent_is_what_is_left_after_waiting_for_an_instance() {
    let instance = Counter::named("late", false);
    let server = counter(&instance).await;
    let late = late_proxy(server.addr, Duration::from_secs(1)).await;
    let channel = Channel::connect(&format!("ipv4:{late}")).await.unwrap();
    let mut call = Request::new(GetRequest {});
    call.set_timeout(Duration::from_secs(3));
    CounterClient::new(channel).get(call).await.unwrap();
    let seen = instance.deadlines.lock().unwrap()[0].expect("a deadline reached the handler");
    assert!(
        seen <= Duration::from_millis(2100),
        "the handler was told {seen:?} of the caller's 3 s, after a 1 s wait"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_deadline_ends_a_stream_whose_reader_is_slower_than_its_server() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let echo = Running::echo(Echo::named("e")).await;
    let client = EchoClient::connect(echo.target()).await.unwrap();
    let mut call = Request::new(request(&"x".repeat(1000)));
    call.set_timeout(Duration::from_millis(200));
    let started = Instant::now();
    let read = async {
        let mut stream = client.server_stream(call).await?.into_inner();
        while let Some(reply) = stream.next().await {
            reply?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok::<_, meshless::Status>(())
    };
    let status = tokio::time::timeout(PATIENCE, read)
        .await
        .expect("the stream ends")
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(client_codes(&snapshotter), ["DEADLINE_EXCEEDED"]);
    echo.stop().await.unwrap();
}
