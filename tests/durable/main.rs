//! Durable events with producers as separate processes (the `interop-server` example with
//! `--data-dir`): a producer killed with SIGKILL in the middle of a burst, again and again,
//! loses no event whose publish returned, and an observer that stays subscribed through the
//! kills handles every one exactly once, in order, without a gap.

#[path = "../support/mod.rs"]
mod support;

mod batches;
mod compaction;
mod full_disk;
mod latest_per_key;
mod start_time;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshless::events::{Event, HandlerError, ObserverOptions};
use meshless::Channel;
use support::testing::v1::EchoObserver;
use support::{request, EchoClient, EchoedEvent, EchoedObserver, ProducerProcess, PATIENCE};
use tokio::sync::Notify;

/// A producer process on a fixed port, keeping its events in `dir`.
fn start_producer(port: u16, dir: &Path) -> ProducerProcess {
    ProducerProcess::start(&format!("127.0.0.1:{port}"), Some(dir))
}

/// A directory of its own, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// (epoch, sequence, delivery count) of each handling of each message.
type Handlings = HashMap<String, Vec<(u64, u64, u32)>>;

/// Every event handled.
#[derive(Clone, Default)]
struct Handled {
    by_message: Arc<Mutex<Handlings>>,
    changed: Arc<Notify>,
}

impl EchoedObserver for Handled {
    async fn echoed(&self, event: Event<EchoedEvent>) -> Result<(), HandlerError> {
        let cursor = event.cursor();
        self.by_message
            .lock()
            .unwrap()
            .entry(event.message().message.clone())
            .or_default()
            .push((cursor.epoch, cursor.sequence, event.delivery_count()));
        self.changed.notify_waiters();
        Ok(())
    }
}

impl Handled {
    async fn until_all(&self, messages: &[String]) {
        let all_in = || {
            let handled = self.by_message.lock().unwrap();
            messages.iter().all(|m| handled.contains_key(m))
        };
        let waited = tokio::time::timeout(PATIENCE, async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if all_in() {
                    return;
                }
                changed.await;
            }
        })
        .await;
        let missing = {
            let handled = self.by_message.lock().unwrap();
            messages
                .iter()
                .filter(|m| !handled.contains_key(*m))
                .count()
        };
        assert!(
            waited.is_ok(),
            "{missing} acknowledged events never handled"
        );
    }
}

/// Sends calls from 16 tasks until `stop`; every call answered OK (its event published) is
/// recorded in `acknowledged`.
fn burst(
    client: &EchoClient,
    cycle: usize,
    acknowledged: &Arc<Mutex<Vec<String>>>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..16)
        .map(|task| {
            let (client, acknowledged, stop) = (client.clone(), acknowledged.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let message = format!("c{cycle}-t{task}-{n}");
                    n += 1;
                    let mut call = meshless::Request::new(request(&message));
                    call.set_timeout(Duration::from_secs(2));
                    if client.unary(call).await.is_ok() {
                        acknowledged.lock().unwrap().push(message);
                    } else {
                        // The producer is down: wait for it to be back.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_loses_no_published_event_and_repeats_none() {
    const CYCLES: usize = 4;
    let dir =
        Scratch(std::env::temp_dir().join(format!("meshless-durable-{:016x}", fastrand::u64(..))));
    let port = free_port();
    let target = format!("ipv4:127.0.0.1:{port}");
    let mut producer = start_producer(port, &dir.0);

    let handled = Handled::default();
    let gaps = Arc::new(AtomicU64::new(0));
    let observer = EchoObserver::new()
        .echoed(handled.clone())
        .options(
            ObserverOptions::default()
                .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
                .on_gap({
                    let gaps = gaps.clone();
                    move |_| {
                        gaps.fetch_add(1, Ordering::Relaxed);
                    }
                }),
        )
        .start(&target)
        .await
        .unwrap();
    // A consumer group member too: it may see an event again after a kill (delivered, not yet
    // acknowledged), but then marked as a redelivery, and it never misses one.
    let in_group = Handled::default();
    let member = EchoObserver::new()
        .echoed(in_group.clone())
        .options(
            ObserverOptions::default()
                .consumer_group("g")
                .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100)),
        )
        .start(&target)
        .await
        .unwrap();
    let channel = Channel::builder()
        .attempts(1)
        .wait_timeout(Duration::from_secs(2))
        .connect(&target)
        .await
        .unwrap();
    let client = EchoClient::new(channel);
    let acknowledged = Arc::new(Mutex::new(Vec::new()));

    for cycle in 0..CYCLES {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = burst(&client, cycle, &acknowledged, &stop);
        // Killed mid-burst: once this cycle has 100 more events published, calls in flight.
        let goal = acknowledged.lock().unwrap().len() + 100;
        support::eventually("100 more events published", || {
            acknowledged.lock().unwrap().len() >= goal
        })
        .await;
        producer.kill();
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            tokio::time::timeout(PATIENCE, task)
                .await
                .expect("the burst's tasks end")
                .unwrap();
        }
        producer = start_producer(port, &dir.0);
    }

    let acknowledged = acknowledged.lock().unwrap().clone();
    handled.until_all(&acknowledged).await;
    // One more event after the last restart: everything before it has been handled once it is.
    let last = format!("last-{}", fastrand::u64(..));
    // Sent until the restarted producer takes it (the channel reconnects with backoff).
    tokio::time::timeout(PATIENCE, async {
        while client.unary(request(&last)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the restarted producer takes calls");
    handled.until_all(std::slice::from_ref(&last)).await;
    in_group.until_all(&acknowledged).await;
    observer.stop().await;
    member.stop().await;
    drop(producer);

    let group = in_group.by_message.lock().unwrap();
    let repeated: Vec<_> = group
        .iter()
        .filter(|(_, h)| h.len() > 1 && h[1..].iter().any(|(_, _, count)| *count < 2))
        .collect();
    assert!(
        repeated.is_empty(),
        "handled again without being marked: {repeated:?}"
    );
    let again = group.values().filter(|h| h.len() > 1).count();
    drop(group);

    let handled = handled.by_message.lock().unwrap();
    let twice: Vec<_> = handled.iter().filter(|(_, h)| h.len() > 1).collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
    let epochs: std::collections::BTreeSet<u64> = handled
        .values()
        .flatten()
        .map(|(epoch, _, _)| *epoch)
        .collect();
    assert_eq!(epochs.len(), 1, "the epoch survived every restart");
    let mut sequences: Vec<u64> = handled.values().flatten().map(|(_, s, _)| *s).collect();
    sequences.sort_unstable();
    let expected: Vec<u64> = (1..=sequences.len() as u64).collect();
    assert_eq!(sequences, expected, "every sequence once, none skipped");
    assert_eq!(gaps.load(Ordering::Relaxed), 0, "no gap was reported");
    assert!(acknowledged.len() >= CYCLES * 100);
    eprintln!(
        "{} events acknowledged over {CYCLES} SIGKILLs, {} handled, each once; the group member \
         handled {again} again (marked)",
        acknowledged.len(),
        sequences.len()
    );
}

fn scratch() -> Scratch {
    Scratch(std::env::temp_dir().join(format!("meshless-durable-{:016x}", fastrand::u64(..))))
}

fn echoed(message: &str) -> EchoedEvent {
    EchoedEvent {
        message: message.into(),
    }
}

#[tokio::test]
async fn a_reopened_publisher_keeps_its_epoch_and_a_durable_publish_waits_for_a_sync() {
    let dir = scratch();
    let publisher = support::EchoPublisher::open(&dir.0).unwrap();
    let first = publisher.publish_echoed(echoed("one")).unwrap();
    assert_eq!(publisher.as_publisher().syncs(), 0, "publish does not sync");
    let second = publisher
        .publish_echoed_durable(echoed("two"))
        .await
        .unwrap();
    assert!(
        publisher.as_publisher().syncs() >= 1,
        "durable publish syncs"
    );
    assert_eq!(second.sequence, first.sequence + 1);
    drop(publisher);

    let reopened = support::EchoPublisher::open(&dir.0).unwrap();
    assert_eq!(reopened.as_publisher().epoch(), first.epoch);
    let third = reopened.publish_echoed(echoed("three")).unwrap();
    assert_eq!((third.epoch, third.sequence), (first.epoch, 3));

    // A subscriber reads the three from the oldest, across the reopening.
    let producer = support::Running::publishing(reopened.clone()).await;
    let mut stream = EchoClient::connect(producer.target())
        .await
        .unwrap()
        .into_tonic()
        .echoed(meshless::v1::Subscribe::default())
        .await
        .unwrap()
        .into_inner();
    let mut read = Vec::new();
    while read.len() < 3 {
        let next = tokio::time::timeout(PATIENCE, tokio_stream::StreamExt::next(&mut stream))
            .await
            .expect("an event within the patience")
            .unwrap()
            .unwrap();
        read.push(next.into_parts().unwrap().0.message);
    }
    assert_eq!(read, ["one", "two", "three"]);
    drop(stream);
    producer.stop().await.unwrap();
}

/// The segments of the `Echoed` event RPC that hold events, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<_> = std::fs::read_dir(dir.join("Echoed"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
        .collect();
    segments.sort();
    segments
}

/// Makes the last run on `dir` look like one the machine stopped under: no clean close, and
/// another boot of the machine since.
fn as_if_the_machine_crashed(dir: &Path) {
    let _ = std::fs::remove_file(dir.join("closed-cleanly"));
    std::fs::write(dir.join("boot"), "an earlier boot").unwrap();
}

/// Cuts the last segment at the start of event `sequence`'s record, or `bytes` into it.
fn cut_at_event(dir: &Path, sequence: u64, bytes: usize) {
    let last = segments(dir).pop().expect("a segment with events");
    let data = std::fs::read(&last).unwrap();
    let mut at = 0;
    loop {
        // The top bit marks a record followed by one of the same batch.
        let length =
            (u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) & 0x7FFF_FFFF) as usize;
        let record_sequence = u64::from_le_bytes(data[at + 8..at + 16].try_into().unwrap());
        if record_sequence == sequence {
            break;
        }
        at += 8 + length;
    }
    std::fs::write(&last, &data[..at + bytes]).unwrap();
}

/// Subscribes to `target` right after `after`, and returns the first `count` events (as
/// message, epoch, sequence, the epoch of a gap before it).
async fn first_events(
    target: &str,
    after: Option<(u64, u64)>,
    count: usize,
) -> Vec<(String, u64, u64, u64)> {
    let mut stream = EchoClient::connect(target.to_owned())
        .await
        .unwrap()
        .into_tonic()
        .echoed(meshless::v1::Subscribe {
            after: after.map(|(epoch, sequence)| meshless::v1::Cursor { epoch, sequence }),
            ..Default::default()
        })
        .await
        .expect("subscribed, not refused")
        .into_inner();
    let mut read = Vec::new();
    let mut gap = 0;
    while read.len() < count {
        let (event, metadata) =
            tokio::time::timeout(PATIENCE, tokio_stream::StreamExt::next(&mut stream))
                .await
                .expect("an event within the patience")
                .unwrap()
                .unwrap()
                .into_parts()
                .unwrap();
        gap = gap.max(metadata.previous_epoch);
        if metadata.heartbeat {
            continue;
        }
        read.push((
            event.message,
            metadata.epoch,
            metadata.sequence,
            std::mem::take(&mut gap),
        ));
    }
    read
}

#[tokio::test]
async fn a_corrupt_record_keeps_the_events_before_it_and_observers_past_it_see_a_gap() {
    let dir = scratch();
    let publisher = support::EchoPublisher::open(&dir.0).unwrap();
    for n in 1..=5 {
        publisher
            .publish_echoed(echoed(&format!("old {n}")))
            .unwrap();
    }
    let old = publisher.as_publisher().epoch();
    drop(publisher);
    // A flipped byte in the last record, as a disk fault leaves it.
    let last = segments(&dir.0).pop().unwrap();
    let mut data = std::fs::read(&last).unwrap();
    let at = data.len() - 2;
    data[at] ^= 0xFF;
    std::fs::write(&last, data).unwrap();

    let reopened = support::EchoPublisher::open(&dir.0).unwrap();
    let new = reopened.as_publisher().epoch();
    assert_ne!(
        new, old,
        "event 5 may have been seen: its sequence is not reused under its epoch"
    );
    let producer = support::Running::publishing(reopened.clone()).await;
    reopened.publish_echoed(echoed("new")).unwrap();
    let target = producer.target();
    // Within what was kept: resumed exactly, under the new epoch.
    assert_eq!(
        first_events(&target, Some((old, 3)), 2).await,
        [("old 4".into(), new, 4, 0), ("new".into(), new, 5, 0)]
    );
    // Past it: told that the old epoch's events after 4 are lost, then every new event.
    assert_eq!(
        first_events(&target, Some((old, 5)), 1).await,
        [("new".into(), new, 5, old)]
    );
    producer.stop().await.unwrap();
}

#[tokio::test]
async fn a_torn_tail_after_a_crash_of_the_machine_keeps_the_durably_published_events() {
    let dir = scratch();
    let publisher = support::EchoPublisher::open(&dir.0).unwrap();
    let durable = publisher
        .publish_echoed_durable(echoed("durable"))
        .await
        .unwrap();
    publisher.publish_echoed(echoed("torn")).unwrap();
    drop(publisher);
    as_if_the_machine_crashed(&dir.0);
    cut_at_event(&dir.0, 2, 11);

    let reopened = support::EchoPublisher::open(&dir.0).unwrap();
    let new = reopened.as_publisher().epoch();
    assert_ne!(new, durable.epoch);
    let producer = support::Running::publishing(reopened.clone()).await;
    reopened.publish_echoed(echoed("after")).unwrap();
    let target = producer.target();
    assert_eq!(
        first_events(&target, None, 2).await,
        [("durable".into(), new, 1, 0), ("after".into(), new, 2, 0)],
        "the durable event is kept, and served under the new epoch"
    );
    // An observer that saw the torn event is told of a gap, not refused.
    assert_eq!(
        first_events(&target, Some((durable.epoch, 2)), 1).await,
        [("after".into(), new, 2, durable.epoch)]
    );
    producer.stop().await.unwrap();
}

#[tokio::test]
async fn events_lost_whole_in_a_crash_of_the_machine_are_a_gap_for_observers_that_saw_them() {
    let dir = scratch();
    let publisher = support::EchoPublisher::open(&dir.0).unwrap();
    for n in 1..=10 {
        publisher
            .publish_echoed(echoed(&format!("old {n}")))
            .unwrap();
    }
    let old = publisher.as_publisher().epoch();
    drop(publisher);
    // Events 7..10 were never synced, and the crash lost them whole: nothing is torn.
    as_if_the_machine_crashed(&dir.0);
    cut_at_event(&dir.0, 7, 0);

    let reopened = support::EchoPublisher::open(&dir.0).unwrap();
    let new = reopened.as_publisher().epoch();
    assert_ne!(
        new, old,
        "sequences 7..10 are not reused under the epoch that had them"
    );
    let producer = support::Running::publishing(reopened.clone()).await;
    for n in 7..=8 {
        reopened
            .publish_echoed(echoed(&format!("new {n}")))
            .unwrap();
    }
    let target = producer.target();
    // An observer that had handled all 10: a gap, then every new event.
    assert_eq!(
        first_events(&target, Some((old, 10)), 2).await,
        [("new 7".into(), new, 7, old), ("new 8".into(), new, 8, 0)]
    );
    // One that had handled 5: nothing lost.
    assert_eq!(
        first_events(&target, Some((old, 5)), 2).await,
        [("old 6".into(), new, 6, 0), ("new 7".into(), new, 7, 0)]
    );
    producer.stop().await.unwrap();
}

#[tokio::test]
async fn an_event_past_the_former_record_limit_survives_reopening() {
    let dir = scratch();
    let mut settings = meshless::events::PublisherSettings::default();
    settings.max_event_size = 100 << 20;
    let publisher = support::EchoPublisher::open_with_settings(&dir.0, settings.clone()).unwrap();
    let large = "x".repeat(70 << 20);
    let first = publisher.publish_echoed(echoed(&large)).unwrap();
    drop(publisher);
    let reopened = support::EchoPublisher::open_with_settings(&dir.0, settings.clone()).unwrap();
    assert_eq!(reopened.as_publisher().epoch(), first.epoch);
    let second = reopened.publish_echoed(echoed("small")).unwrap();
    assert_eq!(second.sequence, 2, "the large event was kept");
    drop(reopened);

    // Larger than a record of the log holds: refused when opening, not lost later.
    settings.max_event_size = 2 << 30;
    let error = support::EchoPublisher::open_with_settings(&dir.0, settings).unwrap_err();
    assert!(error.to_string().contains("max_event_size"), "{error}");
}

#[tokio::test]
async fn a_directory_that_cannot_be_written_is_an_error_not_a_panic() {
    let dir = scratch();
    std::fs::create_dir_all(&dir.0).unwrap();
    // A file where the event RPC's folder belongs.
    std::fs::write(dir.0.join("Echoed"), b"not a folder").unwrap();
    let error = support::EchoPublisher::open(&dir.0).unwrap_err();
    assert!(error.to_string().contains("event log"), "{error}");
}

#[tokio::test]
async fn a_second_publisher_on_a_directory_is_refused_until_the_first_is_gone() {
    let dir = scratch();
    let first = support::EchoPublisher::open(&dir.0).unwrap();
    first.publish_echoed(echoed("one")).unwrap();
    let error = support::EchoPublisher::open(&dir.0).unwrap_err();
    assert!(
        error.to_string().contains("another publisher has it open"),
        "{error}"
    );
    // The first was not disturbed.
    first.publish_echoed(echoed("two")).unwrap();
    drop(first);

    let reopened = support::EchoPublisher::open(&dir.0).unwrap();
    let cursor = reopened.publish_echoed(echoed("three")).unwrap();
    assert_eq!(cursor.sequence, 3, "the two events before it were kept");
}

/// Starts a member of consumer group `mailers` on `target`.
async fn mailer(handled: &Handled, target: &str) -> meshless::events::ObserverHandle {
    EchoObserver::new()
        .echoed(handled.clone())
        .options(
            ObserverOptions::default()
                .consumer_group("mailers")
                .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100)),
        )
        .start(target)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_gets_what_was_published_while_it_was_away_across_producer_restarts() {
    let dirs = [scratch(), scratch()];
    let open = || {
        dirs.iter()
            .map(|dir| support::EchoPublisher::open(&dir.0).unwrap())
            .collect::<Vec<_>>()
    };
    let targets = |producers: &[support::Running]| {
        let addrs: Vec<String> = producers.iter().map(|p| p.addr.to_string()).collect();
        format!("ipv4:{}", addrs.join(","))
    };

    // Two producers and a group of two members, which handles the first 20 events.
    let publishers = open();
    let mut producers = Vec::new();
    for publisher in &publishers {
        producers.push(support::Running::publishing(publisher.clone()).await);
    }
    let before = Handled::default();
    let members = [
        mailer(&before, &targets(&producers)).await,
        mailer(&before, &targets(&producers)).await,
    ];
    let mut first = Vec::new();
    for n in 0..20 {
        let message = format!("before {n}");
        publishers[n % 2].publish_echoed(echoed(&message)).unwrap();
        first.push(message);
    }
    before.until_all(&first).await;

    // The group's service is deployed: its members stop. 200 orders are placed meanwhile.
    for member in members {
        member.stop().await;
    }
    let mut meanwhile = Vec::new();
    for n in 0..200 {
        let message = format!("meanwhile {n}");
        publishers[n % 2].publish_echoed(echoed(&message)).unwrap();
        meanwhile.push(message);
    }

    // Then the producers are deployed: stopped, and started again on their directories.
    for producer in producers {
        producer.stop().await.unwrap();
    }
    drop(publishers);
    let publishers = open();
    let mut producers = Vec::new();
    for publisher in &publishers {
        producers.push(support::Running::publishing(publisher.clone()).await);
    }

    // The group comes back, as new processes: every order placed meanwhile, exactly once.
    let after = Handled::default();
    let members = [
        mailer(&after, &targets(&producers)).await,
        mailer(&after, &targets(&producers)).await,
    ];
    after.until_all(&meanwhile).await;
    // One more through each producer: once it is handled, nothing else is on its way.
    let last: Vec<String> = (0..2).map(|n| format!("last {n}")).collect();
    for (n, message) in last.iter().enumerate() {
        publishers[n].publish_echoed(echoed(message)).unwrap();
    }
    after.until_all(&last).await;
    for member in members {
        member.stop().await;
    }
    let handled = after.by_message.lock().unwrap().clone();
    assert_eq!(
        handled.len(),
        202,
        "only what was published meanwhile, and the last two"
    );
    let twice: Vec<_> = handled.iter().filter(|(_, h)| h.len() > 1).collect();
    assert!(twice.is_empty(), "handled twice: {twice:?}");
    assert!(first.iter().all(|m| !handled.contains_key(m)));
    for producer in producers {
        producer.stop().await.unwrap();
    }
}

#[tokio::test]
async fn an_observer_with_a_cursor_file_resumes_after_its_restart() {
    let dir = scratch();
    let publisher = support::EchoPublisher::open(dir.0.join("events")).unwrap();
    let producer = support::Running::publishing(publisher.clone()).await;
    let cursors = dir.0.join("cursors");
    let observe = |handled: &Handled| {
        let handled = handled.clone();
        let target = producer.target();
        let store = meshless::events::FileCursors::open(&cursors).unwrap();
        async move {
            EchoObserver::new()
                .echoed(handled)
                .options(ObserverOptions::default().cursor_store(store))
                .start(&target)
                .await
                .unwrap()
        }
    };

    let first: Vec<String> = (0..10).map(|n| format!("first {n}")).collect();
    for message in &first {
        publisher.publish_echoed(echoed(message)).unwrap();
    }
    let before = Handled::default();
    let observer = observe(&before).await;
    before.until_all(&first).await;
    // The observer process stops (a deploy); events go on meanwhile.
    observer.stop().await;
    let meanwhile: Vec<String> = (0..10).map(|n| format!("meanwhile {n}")).collect();
    for message in &meanwhile {
        publisher.publish_echoed(echoed(message)).unwrap();
    }

    // A new observer with the same cursor file: what was published meanwhile, and nothing
    // handled before (its start position, the oldest, would replay all 20).
    let after = Handled::default();
    let observer = observe(&after).await;
    after.until_all(&meanwhile).await;
    let last = ["last".to_owned()];
    publisher.publish_echoed(echoed(&last[0])).unwrap();
    after.until_all(&last).await;
    observer.stop().await;
    let handled = after.by_message.lock().unwrap().clone();
    assert_eq!(
        handled.len(),
        11,
        "{:?}",
        handled.keys().collect::<Vec<_>>()
    );
    assert!(handled.values().all(|h| h.len() == 1));
    producer.stop().await.unwrap();
}

/// Sends `message` to the producers of `client` until one takes it (publishes it).
async fn place(client: &EchoClient, message: &str) {
    tokio::time::timeout(PATIENCE, async {
        while client.unary(request(message)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a producer takes the call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_of_every_service_loses_no_order_and_repeats_none() {
    let dirs = [scratch(), scratch()];
    let ports = [free_port(), free_port()];
    let target = format!("ipv4:127.0.0.1:{},127.0.0.1:{}", ports[0], ports[1]);
    let start = || -> Vec<ProducerProcess> {
        ports
            .iter()
            .zip(&dirs)
            .map(|(port, dir)| start_producer(*port, &dir.0))
            .collect()
    };
    let producers = start();
    let cursors = dirs[0].0.join("observer-cursors");
    let plain = |handled: &Handled| {
        let (handled, target) = (handled.clone(), target.clone());
        let store = meshless::events::FileCursors::open(&cursors).unwrap();
        async move {
            EchoObserver::new()
                .echoed(handled)
                .options(
                    ObserverOptions::default()
                        .cursor_store(store)
                        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100)),
                )
                .start(&target)
                .await
                .unwrap()
        }
    };
    let channel = Channel::builder()
        .wait_timeout(Duration::from_secs(2))
        .connect(&target)
        .await
        .unwrap();
    let client = EchoClient::new(channel);

    // A consumer group of two and a plain observer with a cursor file handle the first orders.
    let (group_before, plain_before) = (Handled::default(), Handled::default());
    let members = [
        mailer(&group_before, &target).await,
        mailer(&group_before, &target).await,
    ];
    let observer = plain(&plain_before).await;
    let first: Vec<String> = (0..20).map(|n| format!("first {n}")).collect();
    for message in &first {
        place(&client, message).await;
    }
    group_before.until_all(&first).await;
    plain_before.until_all(&first).await;

    // The observing services are deployed: stopped. 200 orders are placed meanwhile.
    for member in members {
        member.stop().await;
    }
    observer.stop().await;
    let meanwhile: Vec<String> = (0..200).map(|n| format!("meanwhile {n}")).collect();
    for message in &meanwhile {
        place(&client, message).await;
    }

    // Then the producers are deployed: SIGTERM, and started again on their directories.
    for mut producer in producers {
        producer.terminate();
    }
    let producers = start();

    // The observing services come back, as new processes.
    let (group_after, plain_after) = (Handled::default(), Handled::default());
    let members = [
        mailer(&group_after, &target).await,
        mailer(&group_after, &target).await,
    ];
    let observer = plain(&plain_after).await;
    let last: Vec<String> = (0..4).map(|n| format!("last {n}")).collect();
    for message in &last {
        place(&client, message).await;
    }
    for handled in [&group_after, &plain_after] {
        handled.until_all(&meanwhile).await;
        handled.until_all(&last).await;
    }
    for member in members {
        member.stop().await;
    }
    observer.stop().await;
    for (who, handled) in [
        ("the group", &group_after),
        ("the plain observer", &plain_after),
    ] {
        let handled = handled.by_message.lock().unwrap().clone();
        let twice: Vec<_> = handled.iter().filter(|(_, h)| h.len() > 1).collect();
        assert!(twice.is_empty(), "{who} handled twice: {twice:?}");
        assert!(
            first.iter().all(|m| !handled.contains_key(m)),
            "{who} handled an order from before again"
        );
        assert_eq!(
            handled.len(),
            204,
            "{who}: every order placed meanwhile, and the last four"
        );
    }
    for mut producer in producers {
        producer.terminate();
    }
}
