//! Consumer groups end to end: observers sharing a group over real connections on 127.0.0.1,
//! members killed, leaving and joining under load, producers drained, and bad acknowledgements.

#[path = "../support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshless::events::{
    Event, HandlerError, ObserverHandle, ObserverOptions, PublisherSettings,
    MEMBER_CONNECTION_HEADER,
};
use meshless::v1::{Acknowledgement, Cursor, EventGroupsClient, Subscribe};
use meshless::Code;
use support::testing::v1::EchoObserver;
use support::{
    request, EchoClient, EchoPublisher, EchoedEvent, EchoedObserver, Gate, KillableObserver,
    Running,
};
use tokio::sync::Notify;
use tokio_stream::StreamExt;

const ECHOED: &str = "/testing.v1.Echo/Echoed";

/// One handling of one event.
#[derive(Debug, Clone)]
struct Handled {
    member: usize,
    delivery_count: u32,
}

/// Handlings by (producer instance, message).
type Handlings = HashMap<(String, String), Vec<Handled>>;

/// Every handling by every member of a group.
#[derive(Clone, Default)]
struct Ledger {
    handled: Arc<Mutex<Handlings>>,
    changed: Arc<Notify>,
}

impl Ledger {
    fn member(&self, member: usize) -> Member {
        Member {
            ledger: self.clone(),
            member,
            gate: None,
            work: Duration::ZERO,
            stall_after: None,
        }
    }

    /// Waits, without sleeping, until `done` holds.
    /// Waits until `done` holds for what was handled; fails the test after
    /// [`support::PATIENCE`].
    async fn until(&self, done: impl Fn(&Handlings) -> bool) {
        let waited = tokio::time::timeout(support::PATIENCE, async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if done(&self.handled.lock().unwrap()) {
                    return;
                }
                changed.await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "timed out; {} events handled",
            self.handled.lock().unwrap().len()
        );
    }

    async fn until_distinct(&self, count: usize) {
        self.until(|handled| handled.len() >= count).await;
    }

    async fn until_member_handled(&self, member: usize, count: usize) {
        self.until(|handled| {
            handled
                .values()
                .flatten()
                .filter(|h| h.member == member)
                .count()
                >= count
        })
        .await;
    }

    fn snapshot(&self) -> Handlings {
        self.handled.lock().unwrap().clone()
    }

    /// How many handlings each member did.
    fn split(&self, members: usize) -> Vec<usize> {
        let mut split = vec![0; members];
        for handled in self.handled.lock().unwrap().values().flatten() {
            split[handled.member] += 1;
        }
        split
    }
}

/// A group member's handler, recording into the ledger.
#[derive(Clone)]
struct Member {
    ledger: Ledger,
    member: usize,
    /// When set, every event waits at this gate first.
    gate: Option<Gate>,
    /// Time each event takes to handle.
    work: Duration,
    /// After handling this many events, the handler hangs (until the member is killed).
    stall_after: Option<usize>,
}

impl EchoedObserver for Member {
    async fn echoed(&self, event: Event<EchoedEvent>) -> Result<(), HandlerError> {
        if let Some(gate) = &self.gate {
            gate.entered_once();
            gate.pass().await;
        }
        if let Some(limit) = self.stall_after {
            let done = self
                .ledger
                .handled
                .lock()
                .unwrap()
                .values()
                .flatten()
                .filter(|h| h.member == self.member)
                .count();
            if done >= limit {
                std::future::pending::<()>().await;
            }
        }
        if !self.work.is_zero() {
            tokio::time::sleep(self.work).await;
        }
        self.ledger
            .handled
            .lock()
            .unwrap()
            .entry((event.instance().to_owned(), event.message().message.clone()))
            .or_default()
            .push(Handled {
                member: self.member,
                delivery_count: event.delivery_count(),
            });
        self.ledger.changed.notify_waiters();
        Ok(())
    }
}

/// Quick reconnection; the default heartbeat, so that a busy machine is not taken for a dead
/// stream (which would redeliver events and make the exact counts below lie).
fn group(name: &str) -> ObserverOptions {
    ObserverOptions::default()
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .consumer_group(name)
}

async fn start(member: Member, options: ObserverOptions, target: &str) -> ObserverHandle {
    EchoObserver::new()
        .echoed(member)
        .options(options)
        .start(target)
        .await
        .unwrap()
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

/// A publisher that keeps every event of a test: a group holds back, within the retention
/// window, what its members have no room for, and these tests publish in bursts larger than the
/// default window.
fn retaining() -> EchoPublisher {
    EchoPublisher::with_settings(PublisherSettings::default().retain("Echoed", 100_000))
}

fn targets(producers: &[&Running]) -> String {
    let addrs: Vec<String> = producers.iter().map(|p| p.addr.to_string()).collect();
    format!("ipv4:{}", addrs.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_two_producers_every_event_handled_exactly_once() {
    const EVENTS: usize = 10_000;
    let publishers = [retaining(), retaining()];
    let producers = [
        Running::publishing(publishers[0].clone()).await,
        Running::publishing(publishers[1].clone()).await,
    ];
    let target = targets(&[&producers[0], &producers[1]]);
    let ledger = Ledger::default();
    let mut members = Vec::new();
    for member in 0..3 {
        members.push(start(ledger.member(member), group("workers"), &target).await);
    }

    for chunk in 0..10 {
        let range = chunk * EVENTS / 10..(chunk + 1) * EVENTS / 10;
        publish(&publishers[0], range.clone());
        publish(&publishers[1], range);
        tokio::task::yield_now().await;
    }
    ledger.until_distinct(2 * EVENTS).await;
    for member in members {
        member.stop().await;
    }

    let handled = ledger.snapshot();
    assert_eq!(handled.len(), 2 * EVENTS);
    for (event, handlings) in &handled {
        assert_eq!(handlings.len(), 1, "{event:?} handled {handlings:?}");
        assert_eq!(handlings[0].delivery_count, 1, "{event:?}");
    }
    let split = ledger.split(3);
    eprintln!("split over 3 members: {split:?}");
    assert!(
        split.iter().all(|&n| n > 0),
        "every member took part: {split:?}"
    );
    for producer in producers {
        producer.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_has_its_unacknowledged_events_redelivered_and_marked() {
    const EVENTS: usize = 3000;
    const WINDOW: u32 = 16;
    let publisher = retaining();
    let producer = Running::publishing(publisher.clone()).await;
    let ledger = Ledger::default();
    let options = group("workers")
        .member_lease(Duration::from_millis(200))
        .max_unacknowledged(WINDOW);
    // The victim hangs on its 201st event, with a full window of events delivered to it.
    let victim_member = Member {
        stall_after: Some(200),
        ..ledger.member(0)
    };
    let (victim_options, target) = (options.clone(), producer.target());
    let victim =
        KillableObserver::start(async move { start(victim_member, victim_options, &target).await })
            .await;
    let survivor = start(ledger.member(1), options, &producer.target()).await;

    publish(&publisher, 0..EVENTS / 2);
    ledger.until_member_handled(0, 200).await;
    victim.kill();
    publish(&publisher, EVENTS / 2..EVENTS);
    ledger.until_distinct(EVENTS).await;
    survivor.stop().await;

    let handled = ledger.snapshot();
    assert_eq!(handled.len(), EVENTS, "every event handled at least once");
    let mut duplicates = 0;
    for (event, handlings) in &handled {
        if handlings.len() > 1 {
            duplicates += handlings.len() - 1;
            // The first handling was the victim's; the later ones say they are redeliveries.
            assert!(
                handlings[1..].iter().all(|h| h.delivery_count >= 2),
                "{event:?}: {handlings:?}"
            );
        }
    }
    let redelivered = handled
        .values()
        .flatten()
        .filter(|h| h.delivery_count >= 2)
        .count();
    eprintln!("duplicates: {duplicates}; redeliveries: {redelivered}");
    assert!(
        duplicates <= WINDOW as usize,
        "{duplicates} duplicates, more than the window of {WINDOW}"
    );
    assert!(
        redelivered >= 1,
        "the victim's unacknowledged events were redelivered"
    );
    producer.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joining_and_leaving_under_load_lose_nothing() {
    const EVENTS: usize = 6000;
    let publisher = retaining();
    let producer = Running::publishing(publisher.clone()).await;
    let ledger = Ledger::default();
    let work = Duration::ZERO;
    let steady = start(
        Member {
            work,
            ..ledger.member(0)
        },
        group("workers"),
        &producer.target(),
    )
    .await;

    let publishing = tokio::spawn({
        let publisher = publisher.clone();
        async move {
            for chunk in 0..60 {
                publish(&publisher, chunk * 100..(chunk + 1) * 100);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    // Members come and go while events flow: each handles some, then leaves gracefully.
    for member in 1..=5 {
        let handle = start(
            Member {
                work,
                ..ledger.member(member)
            },
            group("workers"),
            &producer.target(),
        )
        .await;
        ledger.until_member_handled(member, 20).await;
        handle.stop().await;
    }
    publishing.await.unwrap();
    ledger.until_distinct(EVENTS).await;
    steady.stop().await;

    let handled = ledger.snapshot();
    assert_eq!(handled.len(), EVENTS);
    for (event, handlings) in &handled {
        // Graceful leaves acknowledge what was handled: nothing is handled twice.
        assert_eq!(handlings.len(), 1, "{event:?}: {handlings:?}");
    }
    eprintln!("split: {:?}", ledger.split(6));
    producer.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_drained_with_events_in_flight_delivers_them_all() {
    const EVENTS: usize = 400;
    let publisher = EchoPublisher::new();
    let mut producer = Running::publishing(publisher.clone()).await;
    let target = producer.target();
    let gate = Gate::default();
    let welcome = Ledger::default();
    let feed = Ledger::default();
    let plain = Ledger::default();
    // Small windows: most events are still waiting at the producer when it starts to drain.
    let small = |name| group(name).max_unacknowledged(4);
    let mut observers = vec![
        start(
            Member {
                gate: Some(gate.clone()),
                ..welcome.member(0)
            },
            small("welcome"),
            &target,
        )
        .await,
        start(
            Member {
                work: Duration::from_millis(1),
                ..welcome.member(1)
            },
            small("welcome"),
            &target,
        )
        .await,
        start(feed.member(0), small("feed"), &target).await,
    ];
    observers.push(
        EchoObserver::new()
            .echoed(plain.member(0))
            .options(
                ObserverOptions::default()
                    .reconnect_backoff(Duration::from_secs(5), Duration::from_secs(5)),
            )
            .start(&target)
            .await
            .unwrap(),
    );

    publish(&publisher, 0..EVENTS);
    // One welcome member is stuck on its first event while the producer starts to drain.
    gate.entered().await;
    // Every other member has joined by then (a drain refuses new groups): each has handled an
    // event, the rest of the burst still waiting for room in its window.
    welcome.until_member_handled(1, 1).await;
    feed.until_distinct(1).await;
    plain.until_distinct(1).await;
    let client = EchoClient::connect(&target).await.unwrap();
    producer.signal_stop();
    // New calls are refused while the drain goes on (the health service flips first).
    let refused = loop {
        match client.unary(request("late")).await {
            Err(status) => break status,
            Ok(_) => tokio::task::yield_now().await,
        }
    };
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    // The drain waits for the stuck member's acknowledgements.
    welcome.until_distinct(EVENTS - 4).await;
    assert!(
        !producer.is_finished(),
        "serve returned before the group acknowledged"
    );
    gate.open();
    producer.stop().await.unwrap();

    // `serve` returned only once both groups had acknowledged everything.
    for (name, ledger) in [("welcome", &welcome), ("feed", &feed)] {
        let handled = ledger.snapshot();
        assert_eq!(handled.len(), EVENTS, "group {name}");
    }
    // The plain observer was sent everything before its stream ended.
    plain.until_distinct(EVENTS).await;
    for observer in observers {
        observer.stop().await;
    }
}

#[tokio::test]
async fn bad_acknowledgements_get_clear_statuses_and_leave_members_alone() {
    let publisher = EchoPublisher::new();
    let producer = Running::publishing(publisher.clone()).await;
    let target = producer.target();
    let ledger = Ledger::default();
    let observer = start(ledger.member(0), group("workers"), &target).await;

    // A plain gRPC client joins the group too, and acknowledges by hand.
    let echo = EchoClient::connect(&target).await.unwrap().into_tonic();
    let subscribed = echo
        .clone()
        .echoed(Subscribe {
            group: "workers".into(),
            member: "raw".into(),
            max_unacknowledged: 1,
            lease_ms: 100,
            ..Subscribe::default()
        })
        .await
        .unwrap();
    // The stream's number, for its acknowledgements.
    let connection: u64 = subscribed
        .metadata()
        .get(MEMBER_CONNECTION_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .expect("a member's stream is numbered");
    let mut raw = subscribed.into_inner();
    let last = publish(&publisher, 0..50);
    let (first, metadata) = raw.next().await.unwrap().unwrap().into_parts().unwrap();
    assert_eq!(metadata.delivery_count, 1);
    ledger.until_distinct(49).await;

    let groups = EventGroupsClient::connect(&target).await.unwrap();
    let ack = |group: &str, member: &str, epoch: u64, sequence: u64| Acknowledgement {
        rpc: ECHOED.into(),
        group: group.into(),
        member: member.into(),
        handled: Some(Cursor { epoch, sequence }),
        leave: false,
        ..Acknowledgement::default()
    };
    let cases = [
        (
            Acknowledgement {
                rpc: "/testing.v1.Echo/Unary".into(),
                ..ack("workers", "raw", last.epoch, metadata.sequence)
            },
            Code::NotFound,
        ),
        (
            ack("nobody", "raw", last.epoch, metadata.sequence),
            Code::NotFound,
        ),
        (
            ack("workers", "stranger", last.epoch, metadata.sequence),
            Code::NotFound,
        ),
        (
            ack("workers", "raw", last.epoch ^ 1, metadata.sequence),
            Code::FailedPrecondition,
        ),
        (
            ack("workers", "raw", last.epoch, last.sequence + 1),
            Code::InvalidArgument,
        ),
        // Events acknowledged alone are checked as `handled` is.
        (
            Acknowledgement {
                handled: None,
                handled_each: vec![Cursor {
                    epoch: last.epoch ^ 1,
                    sequence: metadata.sequence,
                }],
                ..ack("workers", "raw", last.epoch, metadata.sequence)
            },
            Code::FailedPrecondition,
        ),
        (
            Acknowledgement {
                handled_each: vec![Cursor {
                    epoch: last.epoch,
                    sequence: 0,
                }],
                ..ack("workers", "raw", last.epoch, metadata.sequence)
            },
            Code::InvalidArgument,
        ),
    ];
    for (bad, code) in cases {
        let status = groups.acknowledge(bad.clone()).await.unwrap_err();
        assert_eq!(status.code(), code, "{bad:?}: {}", status.message());
        assert!(!status.message().is_empty());
    }
    let too_long = echo
        .clone()
        .echoed(Subscribe {
            group: "g".repeat(10_000),
            ..Subscribe::default()
        })
        .await
        .unwrap_err();
    assert_eq!(too_long.code(), Code::InvalidArgument);

    // The raw member acknowledges its event by hand; it then gets one more (its window is 1),
    // and the observer member, untouched by the bad acknowledgements, handles the rest.
    let response = groups
        .acknowledge(Acknowledgement {
            connection,
            ..ack("workers", "raw", last.epoch, metadata.sequence)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.unacknowledged, 0);
    publish(&publisher, 50..60);
    let (second, metadata) = raw.next().await.unwrap().unwrap().into_parts().unwrap();
    assert_ne!(first.message, second.message);
    assert_eq!(metadata.delivery_count, 1);
    ledger.until_distinct(58).await;
    assert_eq!(ledger.snapshot().len(), 58);

    drop(raw);
    observer.stop().await;
    producer.stop().await.unwrap();
}
