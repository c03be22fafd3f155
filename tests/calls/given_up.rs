//! The server counts every call, also one given up before its handler returned.

use std::time::Duration;

use meshless::{Code, Request};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

use crate::support::{request, Echo, EchoClient, Running};

/// The codes of the server's `Unary` calls counted in `snapshot`.
fn server_unary_codes(snapshotter: &Snapshotter) -> Vec<String> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "meshless_server_calls_total")
        .filter(|(key, ..)| {
            key.key()
                .labels()
                .any(|l| l.key() == "method" && l.value() == "/testing.v1.Echo/Unary")
        })
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
async fn a_call_given_up_at_its_deadline_is_counted_by_the_server() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let server = Running::echo(Echo::slow("s", Duration::from_secs(30))).await;
    let client = EchoClient::connect(server.target()).await.unwrap();
    let mut call = Request::new(request("hi"));
    call.set_timeout(Duration::from_millis(100));
    let status = client.unary(call).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    // Snapshots drain what they read: everything seen is kept.
    let mut seen = Vec::new();
    let counted = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            seen.extend(server_unary_codes(&snapshotter));
            if !seen.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(counted.is_ok(), "the server never counted the call");
    assert_eq!(seen, ["DEADLINE_EXCEEDED"]);
    server.stop().await.unwrap();
}
