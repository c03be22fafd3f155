//! Metrics through the `metrics` facade, as an application's exporter would collect them:
//! calls on both ends by status, instances per target, events published and handled, and gaps.

#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use meshless::events::{ObserverOptions, PublisherSettings};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use support::testing::v1::EchoObserver;
use support::{request, EchoClient, EchoPublisher, EchoedEvent, Forward, Running};
use tokio::sync::mpsc;

/// One metric: its name, its labels and its value.
type Metric = (String, Vec<(String, String)>, f64);

/// What the recorder saw so far. Its snapshots drain what they read (counters and gauges are
/// reset, histograms emptied), so every snapshot is added up here.
struct Seen {
    snapshotter: Snapshotter,
    /// By metric name: its labels and its value (counters and histogram counts add up; a
    /// gauge keeps its last value set).
    metrics: Vec<Metric>,
}

impl Seen {
    fn new(snapshotter: Snapshotter) -> Self {
        Self {
            snapshotter,
            metrics: Vec::new(),
        }
    }

    fn refresh(&mut self) {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let name = key.key().name().to_owned();
            let labels: Vec<(String, String)> = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            let (add, set) = match value {
                DebugValue::Counter(n) => (n as f64, None),
                DebugValue::Histogram(samples) => (samples.len() as f64, None),
                // Drained to zero by the previous snapshot when nobody set it since.
                DebugValue::Gauge(g) if g.into_inner() == 0.0 => (0.0, None),
                DebugValue::Gauge(g) => (0.0, Some(g.into_inner())),
            };
            match self
                .metrics
                .iter_mut()
                .find(|(n, l, _)| *n == name && *l == labels)
            {
                Some((_, _, value)) => *value = set.unwrap_or(*value + add),
                None => self.metrics.push((name, labels, set.unwrap_or(add))),
            }
        }
    }

    /// The value of the metric `name` whose labels include all of `labels`, summed.
    fn value(&mut self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.refresh();
        self.metrics
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, value)| value)
            .sum()
    }
}

#[tokio::test]
async fn calls_events_and_gaps_are_counted() {
    // Installed before anything is built: publishers make their metric handles once.
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(recorder.snapshotter());
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let publisher = EchoPublisher::with_settings(PublisherSettings::default().retain("Echoed", 2));
    let server = Running::publishing(publisher.clone()).await;
    let target = server.target();
    // A scanner calls made-up methods of the services served, health and reflection (off)
    // included, before any real call: more than there are labels for methods.
    let channel = meshless::Channel::connect(&target).await.unwrap();
    let mut scanner = tonic::client::Grpc::new(channel);
    for i in 0..600 {
        let service = ["testing.v1.Echo", "grpc.health.v1.Health"][i % 2];
        let path = format!("/{service}/Scan{i}").parse().unwrap();
        scanner.ready().await.unwrap();
        let refused = scanner
            .unary(
                tonic::Request::new(()),
                path,
                tonic_prost::ProstCodec::<(), ()>::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(refused.code(), meshless::Code::Unimplemented);
    }
    assert_eq!(
        seen.value("meshless_server_calls_total", &[("method", "unknown")]),
        600.0
    );
    let client = EchoClient::connect(&target).await.unwrap();
    for _ in 0..5 {
        client.unary(request("hi")).await.unwrap();
    }
    let failed = client
        .unary(support::testing::v1::EchoRequest {
            fail_with_code: meshless::Code::NotFound as i32,
            ..request("missing")
        })
        .await
        .unwrap_err();
    assert_eq!(failed.code(), meshless::Code::NotFound);

    let unary = "/testing.v1.Echo/Unary";
    let client_labels = [("method", unary), ("target", target.as_str())];
    assert_eq!(
        seen.value(
            "meshless_client_calls_total",
            &[client_labels[0], client_labels[1], ("code", "OK")]
        ),
        5.0
    );
    assert_eq!(
        seen.value(
            "meshless_client_calls_total",
            &[("method", unary), ("code", "NOT_FOUND")]
        ),
        1.0
    );
    assert_eq!(
        seen.value(
            "meshless_server_calls_total",
            &[("method", unary), ("code", "OK")]
        ),
        5.0
    );
    assert_eq!(
        seen.value("meshless_client_call_duration_seconds", &client_labels),
        6.0,
        "one duration per call"
    );
    assert_eq!(
        seen.value(
            "meshless_client_ready_instances",
            &[("target", target.as_str())]
        ),
        1.0
    );

    // Events: a consumer group member handles one event and leaves; while the group has no
    // member, 5 more are published, of which it keeps 2 (the retention): the next member
    // handles those and reports 3 missed.
    let member = |events| {
        EchoObserver::new()
            .echoed(Forward(events))
            .options(
                ObserverOptions::default()
                    .consumer_group("g")
                    .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100)),
            )
            .start(&target)
    };
    let (events, mut received) = mpsc::unbounded_channel();
    let first = member(events).await.unwrap();
    publisher
        .publish_echoed(EchoedEvent {
            message: "first".into(),
        })
        .expect("a small event");
    assert_eq!(received.recv().await.unwrap(), "first");
    first.stop().await;
    for i in 0..5 {
        publisher
            .publish_echoed(EchoedEvent {
                message: i.to_string(),
            })
            .expect("a small event");
    }
    let (events, mut received) = mpsc::unbounded_channel();
    let second = member(events).await.unwrap();
    assert_eq!(received.recv().await.unwrap(), "3");
    assert_eq!(received.recv().await.unwrap(), "4");
    second.stop().await;

    let echoed = "/testing.v1.Echo/Echoed";
    let hub = [("rpc", "testing.v1.Echo/Echoed")];
    assert_eq!(seen.value("meshless_events_published_total", &hub), 6.0);
    assert_eq!(
        seen.value("meshless_observer_missed_events_total", &[("rpc", echoed)]),
        3.0
    );
    assert_eq!(
        seen.value(
            "meshless_observer_events_total",
            &[("rpc", echoed), ("outcome", "handled")],
        ),
        3.0
    );
    assert!(seen.value("meshless_observer_lag_seconds", &[("rpc", echoed)]) > 0.0);

    // A plain subscriber is counted while its stream is open.
    let mut stream = client
        .clone()
        .into_tonic()
        .echoed(meshless::v1::Subscribe::default())
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap();
    assert_eq!(seen.value("meshless_event_subscribers", &hub), 1.0);
    drop(stream);
    server.stop().await.unwrap();

    // A connection past a peer's cap is closed, and counted.
    let capped = Running::start(
        meshless::Server::builder()
            .max_connections(10, 1)
            .add_service(support::EchoService::new(support::Echo::default())),
    )
    .await;
    let _first = tokio::net::TcpStream::connect(capped.addr).await.unwrap();
    let mut second = tokio::net::TcpStream::connect(capped.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(
        support::PATIENCE,
        tokio::io::AsyncReadExt::read(&mut second, &mut buf),
    )
    .await
    .expect("the connection past the cap is closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(
        seen.value(
            "meshless_server_connections_refused_total",
            &[("reason", "max_connections_per_peer")]
        ),
        1.0
    );
    capped.stop().await.unwrap();
}
