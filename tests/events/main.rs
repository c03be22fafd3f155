//! Events end to end: publishers serving event RPCs, observers on every producer instance,
//! resume, gaps, cut-offs, retries and dead letters, over real connections on 127.0.0.1.

#[path = "../support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshless::discovery::DnsSettings;
use meshless::events::{DeadLetter, Event, Gap, HandlerError, ObserverOptions, PublisherSettings};
use meshless::testing::TestDns;
use meshless::v1::{Cursor, StartPosition, Subscribe};
use meshless::Code;
use support::testing::v1::EchoObserver;
use support::{
    eventually, quick_dns, EchoClient, EchoPublisher, EchoedEvent, EchoedObserver, Gate, Proxy,
    Running, PATIENCE,
};
use tokio::sync::Notify;
use tokio_stream::StreamExt;

/// What an observer saw: (producer instance, message), in the order handled.
#[derive(Clone, Default)]
struct Collector {
    seen: Arc<Mutex<Vec<(String, String)>>>,
    changed: Arc<Notify>,
    /// When set, the first event waits at this gate.
    gate: Option<Gate>,
}

impl EchoedObserver for Collector {
    async fn echoed(&self, event: Event<EchoedEvent>) -> Result<(), HandlerError> {
        if let Some(gate) = &self.gate {
            if self.seen.lock().unwrap().is_empty() {
                gate.entered_once();
                gate.pass().await;
            }
        }
        self.seen
            .lock()
            .unwrap()
            .push((event.instance().to_owned(), event.message().message.clone()));
        self.changed.notify_waiters();
        Ok(())
    }
}

impl Collector {
    fn messages(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    fn from(&self, instance: &str) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|(i, _)| i == instance)
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Waits, without sleeping, until `done` holds for what was seen; fails the test after
    /// [`PATIENCE`].
    async fn until(&self, done: impl Fn(&[(String, String)]) -> bool) {
        let waited = tokio::time::timeout(PATIENCE, async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if done(&self.seen.lock().unwrap()) {
                    return;
                }
                changed.await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "timed out; the observer saw {:?}",
            self.messages()
        );
    }

    async fn until_count(&self, count: usize) {
        self.until(|seen| seen.len() >= count).await;
    }
}

fn numbers(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| i.to_string()).collect()
}

fn publish(publisher: &EchoPublisher, range: std::ops::Range<usize>) -> Cursor {
    let mut last = Cursor::default();
    for i in range {
        last = publisher
            .publish_echoed(EchoedEvent {
                message: i.to_string(),
            })
            .expect("a small event");
    }
    last
}

fn quick() -> ObserverOptions {
    ObserverOptions::default()
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .heartbeat(Duration::from_millis(200))
}

#[tokio::test]
async fn every_observer_gets_every_event_in_order() {
    let publisher = EchoPublisher::new();
    let producer = Running::publishing(publisher.clone()).await;
    let observers: Vec<Collector> = (0..3).map(|_| Collector::default()).collect();
    let mut handles = Vec::new();
    for observer in &observers {
        let handle = EchoObserver::new()
            .echoed(observer.clone())
            .options(quick())
            .start(producer.target())
            .await
            .unwrap();
        handles.push(handle);
    }

    publish(&publisher, 0..200);
    for observer in &observers {
        observer.until_count(200).await;
        assert_eq!(observer.messages(), numbers(0..200));
    }
    for handle in handles {
        handle.stop().await;
    }
    producer.stop().await.unwrap();
}

#[tokio::test]
async fn a_dropped_connection_resumes_with_no_loss_and_no_duplicate() {
    let publisher = EchoPublisher::new();
    let producer = Running::publishing(publisher.clone()).await;
    let proxy = Proxy::start(producer.addr).await;
    let observer = Collector::default();
    let handle = EchoObserver::new()
        .echoed(observer.clone())
        .options(quick())
        .start(format!("ipv4:{}", proxy.addr))
        .await
        .unwrap();

    publish(&publisher, 0..100);
    observer.until_count(100).await;
    proxy.cut();
    publish(&publisher, 100..250);
    observer.until_count(250).await;
    assert_eq!(observer.messages(), numbers(0..250));

    handle.stop().await;
    producer.stop().await.unwrap();
}

#[tokio::test]
async fn a_slow_observer_is_cut_off_and_resumes_without_loss() {
    let settings = PublisherSettings::default().retain("Echoed", 100_000);
    let mut settings = settings;
    settings.subscriber_buffer = 16;
    let publisher = EchoPublisher::with_settings(settings);
    let producer = Running::publishing(publisher.clone()).await;
    let gate = Gate::default();
    let observer = Collector {
        gate: Some(gate.clone()),
        ..Collector::default()
    };
    let handle = EchoObserver::new()
        .echoed(observer.clone())
        .options(quick())
        .start(producer.target())
        .await
        .unwrap();

    // The observer holds its first event while far more than its buffer (and the HTTP/2
    // windows) is published.
    publish(&publisher, 0..1);
    gate.entered().await;
    let filler = "x".repeat(1000);
    for i in 1..10_000 {
        publisher
            .publish_echoed(EchoedEvent {
                message: format!("{i} {filler}"),
            })
            .expect("a small event");
    }
    gate.open();
    observer.until_count(10_000).await;

    assert!(
        publisher.as_publisher().subscribers_cut_off() >= 1,
        "the slow subscriber was cut off"
    );
    let messages = observer.messages();
    let numbers: Vec<usize> = messages
        .iter()
        .map(|m| m.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        numbers,
        (0..10_000).collect::<Vec<_>>(),
        "every event once, in order"
    );
    handle.stop().await;
    producer.stop().await.unwrap();
}

#[tokio::test]
async fn a_cursor_outside_the_window_is_told_exactly_how_many_events_it_missed() {
    let publisher = EchoPublisher::with_settings(PublisherSettings::default().retain("Echoed", 10));
    let producer = Running::publishing(publisher.clone()).await;
    let last = publish(&publisher, 0..50);
    assert_eq!(last.sequence, 50);

    let client = EchoClient::connect(producer.target())
        .await
        .unwrap()
        .into_tonic();
    let subscribe = Subscribe {
        after: Some(Cursor {
            epoch: last.epoch,
            sequence: 5,
        }),
        ..Subscribe::default()
    };
    let mut stream = client.clone().echoed(subscribe).await.unwrap().into_inner();
    let (first, metadata) = stream
        .message()
        .await
        .unwrap()
        .unwrap()
        .into_parts()
        .unwrap();
    assert_eq!(first.message, "40", "the oldest retained event");
    assert_eq!(
        (metadata.sequence, metadata.missed),
        (41, 35),
        "events 6 to 40 are gone"
    );
    let (second, metadata) = stream
        .message()
        .await
        .unwrap()
        .unwrap()
        .into_parts()
        .unwrap();
    assert_eq!((second.message.as_str(), metadata.missed), ("41", 0));

    // Live only: nothing from the backlog, and the gap up to the latest event.
    let live = Subscribe {
        after: Some(Cursor {
            epoch: last.epoch,
            sequence: 5,
        }),
        start: StartPosition::Live as i32,
        heartbeat_interval_ms: 20,
        ..Subscribe::default()
    };
    let mut stream = client.clone().echoed(live).await.unwrap().into_inner();
    let (_, heartbeat) = stream
        .message()
        .await
        .unwrap()
        .unwrap()
        .into_parts()
        .unwrap();
    assert!(heartbeat.heartbeat, "{heartbeat:?}");
    assert_eq!((heartbeat.sequence, heartbeat.missed), (50, 45));

    // A cursor from the future is refused.
    let ahead = Subscribe {
        after: Some(Cursor {
            epoch: last.epoch,
            sequence: 51,
        }),
        ..Subscribe::default()
    };
    let status = client.clone().echoed(ahead).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    drop((stream, client));
    producer.stop().await.unwrap();
}

#[tokio::test]
async fn idle_streams_carry_heartbeats_with_the_latest_sequence() {
    let publisher = EchoPublisher::new();
    let producer = Running::publishing(publisher.clone()).await;
    publish(&publisher, 0..3);
    let client = EchoClient::connect(producer.target())
        .await
        .unwrap()
        .into_tonic();
    let request = Subscribe {
        heartbeat_interval_ms: 20,
        ..Subscribe::default()
    };
    let mut stream = client.clone().echoed(request).await.unwrap().into_inner();
    for expected in ["0", "1", "2"] {
        let (event, metadata) = stream
            .message()
            .await
            .unwrap()
            .unwrap()
            .into_parts()
            .unwrap();
        assert_eq!(event.message, expected);
        assert!(!metadata.heartbeat);
    }
    let (_, heartbeat) = stream
        .message()
        .await
        .unwrap()
        .unwrap()
        .into_parts()
        .unwrap();
    assert!(heartbeat.heartbeat);
    assert_eq!(
        (heartbeat.epoch, heartbeat.sequence),
        (publisher.as_publisher().epoch(), 3)
    );
    drop((stream, client));
    producer.stop().await.unwrap();
}

#[tokio::test]
async fn a_restarted_publisher_reports_the_exact_gap() {
    let first = EchoPublisher::with_settings(PublisherSettings::default().retain("Echoed", 3));
    let producer = Running::publishing(first.clone()).await;
    let addr = producer.addr;
    let gaps = Arc::new(Mutex::new(Vec::<Gap>::new()));
    let observer = Collector::default();
    let options = quick().on_gap({
        let gaps = gaps.clone();
        move |gap| gaps.lock().unwrap().push(gap.clone())
    });
    let handle = EchoObserver::new()
        .echoed(observer.clone())
        .options(options)
        .start(producer.target())
        .await
        .unwrap();
    // No more than it retains before the observer is known to be subscribed.
    publish(&first, 0..3);
    observer.until_count(3).await;
    publish(&first, 3..5);
    observer.until_count(5).await;

    // The producer restarts on the same address with a new epoch, and publishes 6 events
    // (keeping the last 3) before it serves again.
    producer.stop().await.unwrap();
    let second = EchoPublisher::with_settings(PublisherSettings::default().retain("Echoed", 3));
    assert_ne!(second.as_publisher().epoch(), first.as_publisher().epoch());
    publish(&second, 100..106);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("rebind the same address");
    let producer = Running::start_on(
        listener,
        meshless::Server::builder().add_service(support::EchoService::with_publisher(
            support::Echo::default(),
            second.clone(),
        )),
    );

    observer.until_count(8).await;
    assert_eq!(observer.messages()[5..], numbers(103..106));
    let gaps = gaps.lock().unwrap().clone();
    assert_eq!(
        gaps,
        [Gap {
            instance: addr.to_string(),
            rpc: "/testing.v1.Echo/Echoed",
            missed: 3,
            epoch: second.as_publisher().epoch(),
            previous_epoch: Some(first.as_publisher().epoch()),
        }]
    );
    handle.stop().await;
    producer.stop().await.unwrap();
}

#[tokio::test]
async fn producers_appearing_in_discovery_are_observed_and_order_holds_per_producer() {
    let dns = TestDns::start("svc.test").await.unwrap();
    let (one, two) = (EchoPublisher::new(), EchoPublisher::new());
    let producer_one = Running::publishing(one.clone()).await;
    let producer_two = Running::publishing(two.clone()).await;
    dns.add_ip("node.svc.test", "127.0.0.1".parse().unwrap())
        .await
        .unwrap();
    dns.add_srv(
        "echo.svc.test",
        1,
        1,
        producer_one.addr.port(),
        "node.svc.test",
    )
    .await
    .unwrap();

    let mut settings = DnsSettings::default();
    settings.refresh_floor = Duration::from_millis(20);
    settings.refresh_ceiling = Duration::from_millis(100);
    let observer = Collector::default();
    let handle = EchoObserver::new()
        .echoed(observer.clone())
        .options(quick().dns(settings))
        .start(dns.srv_target("echo.svc.test"))
        .await
        .unwrap();
    publish(&one, 0..50);
    observer.until_count(50).await;

    // A second producer registers: it is subscribed to, and each producer's events stay in order.
    dns.add_srv(
        "echo.svc.test",
        1,
        1,
        producer_two.addr.port(),
        "node.svc.test",
    )
    .await
    .unwrap();
    publish(&two, 1000..1050);
    publish(&one, 50..100);
    observer.until_count(150).await;
    assert_eq!(
        observer.from(&producer_one.addr.to_string()),
        numbers(0..100)
    );
    assert_eq!(
        observer.from(&producer_two.addr.to_string()),
        numbers(1000..1050)
    );

    handle.stop().await;
    producer_one.stop().await.unwrap();
    producer_two.stop().await.unwrap();
    dns.stop().await;
}

/// Fails the events named in `failures` that many times before handling them.
#[derive(Clone, Default)]
struct Flaky {
    failures: Arc<Mutex<HashMap<String, u32>>>,
    handled: Collector,
}

impl EchoedObserver for Flaky {
    async fn echoed(&self, event: Event<EchoedEvent>) -> Result<(), HandlerError> {
        if let Some(left) = self.failures.lock().unwrap().get_mut(&event.message) {
            if *left > 0 {
                *left -= 1;
                return Err(format!("{} failed", event.message).into());
            }
        }
        self.handled.echoed(event).await
    }
}

#[tokio::test]
async fn failing_handlers_are_retried_then_dead_lettered_and_nothing_is_skipped() {
    let publisher = EchoPublisher::new();
    let producer = Running::publishing(publisher.clone()).await;
    let flaky = Flaky::default();
    flaky
        .failures
        .lock()
        .unwrap()
        .extend([("1".to_owned(), 2), ("3".to_owned(), u32::MAX)]);
    let dead = Arc::new(Mutex::new(Vec::<DeadLetter>::new()));
    let options = quick()
        .handler_retries(3, Duration::from_millis(1))
        .on_dead_letter({
            let dead = dead.clone();
            move |letter| dead.lock().unwrap().push(letter.clone())
        });
    let handle = EchoObserver::new()
        .echoed(flaky.clone())
        .options(options)
        .start(producer.target())
        .await
        .unwrap();

    publish(&publisher, 0..6);
    flaky.handled.until_count(5).await;
    assert_eq!(
        flaky.handled.messages(),
        ["0", "1", "2", "4", "5"],
        "1 succeeded on its third attempt"
    );
    let dead = dead.lock().unwrap().clone();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].cursor.sequence, dead[0].attempts),
        (4, 3),
        "event 3 (sequence 4) went to the dead letters"
    );
    assert!(dead[0].error.contains("3 failed"), "{:?}", dead[0]);
    handle.stop().await;
    producer.stop().await.unwrap();
}

#[tokio::test]
async fn stopping_an_observer_lets_its_handler_in_flight_finish() {
    let publisher = EchoPublisher::new();
    let producer = Running::publishing(publisher.clone()).await;
    let gate = Gate::default();
    let observer = Collector {
        gate: Some(gate.clone()),
        ..Collector::default()
    };
    let handle = EchoObserver::new()
        .echoed(observer.clone())
        .options(quick())
        .start(producer.target())
        .await
        .unwrap();
    publish(&publisher, 0..3);
    gate.entered().await;

    let stopping = tokio::spawn(handle.stop());
    gate.open();
    stopping.await.unwrap();
    assert_eq!(
        observer.messages()[..1],
        ["0".to_owned()],
        "the event in flight was handled"
    );
    producer.stop().await.unwrap();
}

#[tokio::test]
async fn shutting_a_producer_down_ends_its_event_streams_after_what_was_published() {
    let publisher = EchoPublisher::new();
    let mut producer = Running::publishing(publisher.clone()).await;
    let client = EchoClient::connect(producer.target())
        .await
        .unwrap()
        .into_tonic();
    let mut stream = client
        .clone()
        .echoed(Subscribe::default())
        .await
        .unwrap()
        .into_inner();
    publish(&publisher, 0..3);
    producer.signal_stop();
    let mut received = Vec::new();
    while let Some(envelope) = stream.next().await {
        received.push(envelope.unwrap().into_parts().unwrap().0.message);
    }
    assert_eq!(received, numbers(0..3));
    drop((stream, client));
    producer.stop().await.unwrap();
}

#[tokio::test]
async fn a_dns_flap_of_a_running_producer_resumes_exactly_whatever_the_start() {
    for start in [StartPosition::Oldest, StartPosition::Live] {
        let dns = TestDns::start("service.test").await.unwrap();
        dns.add_ip("node.service.test", "127.0.0.1".parse().unwrap())
            .await
            .unwrap();
        let publisher = EchoPublisher::new();
        let producer = Running::publishing(publisher.clone()).await;
        let port = producer.addr.port();
        dns.add_srv("echo.service.test", 1, 1, port, "node.service.test")
            .await
            .unwrap();
        let observer = Collector::default();
        // No grace: the flap drops the stream, so that the observer must resume it.
        let handle = EchoObserver::new()
            .echoed(observer.clone())
            .options(
                quick()
                    .dns(quick_dns())
                    .start(start)
                    .removal_grace(Duration::ZERO),
            )
            .start(&dns.srv_target("echo.service.test"))
            .await
            .unwrap();
        let subscribed = || publisher.as_publisher().subscribers() == 1;
        eventually("the observer subscribed", subscribed).await;
        publish(&publisher, 0..50);
        observer.until_count(50).await;

        dns.remove_srv("echo.service.test", port, "node.service.test")
            .await
            .unwrap();
        eventually("the flap dropped the stream", || {
            publisher.as_publisher().subscribers() == 0
        })
        .await;
        publish(&publisher, 50..60);
        dns.add_srv("echo.service.test", 1, 1, port, "node.service.test")
            .await
            .unwrap();
        eventually("the observer subscribed again", subscribed).await;
        publish(&publisher, 60..65);
        observer.until_count(65).await;
        assert_eq!(observer.messages(), numbers(0..65), "start {start:?}");

        handle.stop().await;
        producer.stop().await.unwrap();
        dns.stop().await;
    }
}

#[tokio::test]
async fn a_producer_reachable_at_two_addresses_is_observed_once() {
    let dns = TestDns::start("service.test").await.unwrap();
    dns.add_ip("node.service.test", "127.0.0.1".parse().unwrap())
        .await
        .unwrap();
    // One publisher (one epoch) served on two ports: one producer, two addresses.
    let publisher = EchoPublisher::new();
    let first = Running::publishing(publisher.clone()).await;
    let second = Running::publishing(publisher.clone()).await;
    for server in [&first, &second] {
        dns.add_srv(
            "echo.service.test",
            1,
            1,
            server.addr.port(),
            "node.service.test",
        )
        .await
        .unwrap();
    }
    let observer = Collector::default();
    let handle = EchoObserver::new()
        .echoed(observer.clone())
        .options(quick().dns(quick_dns()).removal_grace(Duration::ZERO))
        .start(&dns.srv_target("echo.service.test"))
        .await
        .unwrap();
    eventually("both addresses are known", || handle.instances().len() == 2).await;
    eventually("the producer is read", || {
        publisher.as_publisher().subscribers() >= 1
    })
    .await;
    publish(&publisher, 0..10);
    observer.until_count(10).await;
    publish(&publisher, 10..11);
    observer.until_count(11).await;
    assert_eq!(observer.messages(), numbers(0..11));

    // One address leaves discovery: if it was the one read, the other takes over where it
    // stopped; either way, nothing is lost or handled twice.
    dns.remove_srv("echo.service.test", first.addr.port(), "node.service.test")
        .await
        .unwrap();
    eventually("one address left", || handle.instances().len() == 1).await;
    publish(&publisher, 11..20);
    observer.until_count(20).await;
    assert_eq!(observer.messages(), numbers(0..20));
    handle.stop().await;
    first.stop().await.unwrap();
    second.stop().await.unwrap();
    dns.stop().await;
}

#[tokio::test]
async fn a_slow_observer_cut_off_around_a_drain_gets_every_event() {
    let mut settings = PublisherSettings::default().retain("Echoed", 100_000);
    settings.subscriber_buffer = 16;
    let publisher = EchoPublisher::with_settings(settings);
    let producer = Running::publishing(publisher.clone()).await;
    let gate = Gate::default();
    let observer = Collector {
        gate: Some(gate.clone()),
        ..Collector::default()
    };
    let handle = EchoObserver::new()
        .echoed(observer.clone())
        .options(quick())
        .start(producer.target())
        .await
        .unwrap();

    // The observer holds its first event while far more than its buffer is published, then
    // the producer starts to drain.
    publish(&publisher, 0..1);
    gate.entered().await;
    let filler = "x".repeat(1000);
    for i in 1..5_000 {
        publisher
            .publish_echoed(EchoedEvent {
                message: format!("{i} {filler}"),
            })
            .expect("a small event");
    }
    let mut drain = Box::pin(
        publisher
            .as_publisher()
            .drain(tokio::time::Instant::now() + PATIENCE),
    );
    // Polled once: the drain has begun.
    assert!(tokio::time::timeout(Duration::ZERO, &mut drain)
        .await
        .is_err());
    gate.open();
    assert!(drain.await, "the drain waited for the slow subscriber");
    // Everything was sent before the drain ended; what was on its way is handled after.
    observer.until_count(5_000).await;
    let numbers: Vec<usize> = observer
        .messages()
        .iter()
        .map(|m| m.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        numbers,
        (0..5_000).collect::<Vec<_>>(),
        "every event once, in order"
    );
    handle.stop().await;
    producer.stop().await.unwrap();
}

#[tokio::test]
async fn an_event_too_large_to_deliver_is_refused_and_holds_nothing_up() {
    let publisher = EchoPublisher::new();
    let producer = Running::publishing(publisher.clone()).await;
    let observer = Collector::default();
    let handle = EchoObserver::new()
        .echoed(observer.clone())
        .options(quick())
        .start(producer.target())
        .await
        .unwrap();
    publish(&publisher, 0..1);
    let refused = publisher.publish_echoed(EchoedEvent {
        message: "x".repeat(5 * 1024 * 1024),
    });
    assert!(
        matches!(refused, Err(meshless::events::PublishError::TooLarge { size, .. }) if size > 5 * 1024 * 1024),
        "{refused:?}"
    );
    let status = meshless::Status::from(refused.unwrap_err());
    assert_eq!(status.code(), Code::ResourceExhausted);
    publish(&publisher, 1..3);
    observer.until_count(3).await;
    assert_eq!(observer.messages(), numbers(0..3));
    handle.stop().await;
    producer.stop().await.unwrap();
}

#[tokio::test]
async fn a_slow_observer_whose_producer_leaves_discovery_mid_burst_handles_everything() {
    let dns = TestDns::start("service.test").await.unwrap();
    dns.add_ip("node.service.test", "127.0.0.1".parse().unwrap())
        .await
        .unwrap();
    let publisher = EchoPublisher::new();
    let producer = Running::publishing(publisher.clone()).await;
    let port = producer.addr.port();
    dns.add_srv("echo.service.test", 1, 1, port, "node.service.test")
        .await
        .unwrap();

    /// Takes 5 ms an event.
    #[derive(Clone)]
    struct Slow(Collector);
    impl EchoedObserver for Slow {
        async fn echoed(&self, event: Event<EchoedEvent>) -> Result<(), HandlerError> {
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.0.echoed(event).await
        }
    }
    let observer = Collector::default();
    let handle = EchoObserver::new()
        .echoed(Slow(observer.clone()))
        .options(quick().dns(quick_dns()))
        .start(&dns.srv_target("echo.service.test"))
        .await
        .unwrap();
    eventually("the observer subscribed", || {
        publisher.as_publisher().subscribers() == 1
    })
    .await;
    publish(&publisher, 0..100);
    observer.until_count(5).await;
    // Gone from discovery with 95 events sent or on their way, then shut down: the stream is
    // read until the drain ends it.
    dns.remove_srv("echo.service.test", port, "node.service.test")
        .await
        .unwrap();
    eventually("the observer saw it leave", || {
        handle.instances().is_empty()
    })
    .await;
    producer.stop().await.unwrap();
    observer.until_count(100).await;
    assert_eq!(observer.messages(), numbers(0..100));
    handle.stop().await;
    dns.stop().await;
}

#[tokio::test]
async fn stopping_an_observer_interrupts_a_handler_retry_backoff_and_dead_letters_nothing() {
    let publisher = EchoPublisher::new();
    let producer = Running::publishing(publisher.clone()).await;
    let flaky = Flaky::default();
    flaky
        .failures
        .lock()
        .unwrap()
        .insert("0".to_owned(), u32::MAX);
    let dead = Arc::new(Mutex::new(Vec::<DeadLetter>::new()));
    let options = quick()
        // An hour between attempts: a stop that waited for it would time the test out.
        .handler_retries(5, Duration::from_secs(3600))
        .on_dead_letter({
            let dead = dead.clone();
            move |letter| dead.lock().unwrap().push(letter.clone())
        });
    let handle = EchoObserver::new()
        .echoed(flaky.clone())
        .options(options)
        .start(producer.target())
        .await
        .unwrap();
    publish(&publisher, 0..1);
    eventually("the handler failed once", || {
        flaky.failures.lock().unwrap()["0"] < u32::MAX
    })
    .await;
    tokio::time::timeout(PATIENCE, handle.stop())
        .await
        .expect("stop returns without waiting for the backoff");
    assert!(dead.lock().unwrap().is_empty(), "nothing dead-lettered");
    assert!(flaky.handled.messages().is_empty());
    producer.stop().await.unwrap();
}
