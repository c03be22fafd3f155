//! Deploys as operators run them, with producers as separate processes: an instance leaves
//! discovery while calls and events flow, then gets SIGTERM and drains. Plain observers and a
//! consumer group must handle every event published for a call that succeeded, once.
//!
//! The producers are the `interop-server` example (built by `cargo test` with the other
//! examples), which publishes every unary message as an `Echoed` event and drains on SIGTERM.

#[path = "../support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshless::discovery::DnsSettings;
use meshless::events::{Event, HandlerError, ObserverHandle, ObserverOptions};
use meshless::testing::TestDns;
use meshless::Channel;
use support::testing::v1::EchoObserver;
use support::{
    eventually, quick_dns, request, EchoClient, EchoedEvent, EchoedObserver, ProducerProcess,
};
use tokio::sync::watch;

const ZONE: &str = "service.test";
const NAME: &str = "echo.service.test";
/// What an observer handled: message -> times.
#[derive(Clone, Default)]
struct Tally {
    handled: Arc<Mutex<HashMap<String, u32>>>,
    redelivered: Arc<Mutex<u32>>,
}

impl EchoedObserver for Tally {
    async fn echoed(&self, event: Event<EchoedEvent>) -> Result<(), HandlerError> {
        if event.delivery_count() > 1 {
            *self.redelivered.lock().unwrap() += 1;
        }
        *self
            .handled
            .lock()
            .unwrap()
            .entry(event.message().message.clone())
            .or_default() += 1;
        Ok(())
    }
}

impl Tally {
    fn count(&self) -> usize {
        self.handled.lock().unwrap().len()
    }
}

async fn observe(target: &str, options: ObserverOptions, tally: &Tally) -> ObserverHandle {
    EchoObserver::new()
        .echoed(tally.clone())
        .options(
            options
                .dns(quick_dns())
                .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100)),
        )
        .start(target)
        .await
        .expect("observer")
}

/// Calls `Unary` with "0", "1", ... a few at a time until told to stop; returns the messages
/// of the calls that succeeded and of those that failed.
async fn drive(
    client: EchoClient,
    stop: watch::Receiver<bool>,
    succeeded: Arc<Mutex<Vec<String>>>,
) -> Vec<String> {
    let mut failed = Vec::new();
    let mut next = 0_u64;
    while !*stop.borrow() {
        let batch: Vec<String> = (next..next + 4).map(|n| n.to_string()).collect();
        next += 4;
        let calls = batch.iter().map(|message| {
            let client = client.clone();
            let message = message.clone();
            async move { (client.unary(request(&message)).await, message) }
        });
        for (result, message) in futures_join_all(calls).await {
            match result {
                Ok(_) => succeeded.lock().unwrap().push(message),
                Err(_) => failed.push(message),
            }
        }
    }
    failed
}

/// Runs the futures at once and returns their outputs in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.expect("a call task"));
    }
    outputs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_scale_in_under_load_loses_no_event_and_handles_none_twice() {
    let dns = TestDns::start(ZONE).await.unwrap();
    dns.add_ip(NAME, "127.0.0.1".parse().unwrap())
        .await
        .unwrap();
    let mut leaving = ProducerProcess::start("127.0.0.1:0", None);
    let staying = ProducerProcess::start("127.0.0.1:0", None);
    for producer in [&leaving, &staying] {
        dns.add_srv(NAME, 1, 1, producer.addr.port(), NAME)
            .await
            .unwrap();
    }
    let target = dns.srv_target(NAME);

    let plain = Tally::default();
    let group = [Tally::default(), Tally::default()];
    let plain_observer = observe(&target, ObserverOptions::default(), &plain).await;
    let mut members = Vec::new();
    for member in &group {
        members.push(
            observe(
                &target,
                ObserverOptions::default().consumer_group("deploys"),
                member,
            )
            .await,
        );
    }
    // Callers learn of the removal later than observers, as callers whose refresh lags do:
    // calls keep reaching the leaving instance for a while after the observers saw it go.
    let mut callers_dns = DnsSettings::default();
    callers_dns.refresh_floor = Duration::from_millis(1500);
    callers_dns.refresh_ceiling = Duration::from_millis(1500);
    let channel = Channel::builder()
        .dns(callers_dns)
        .connect(&target)
        .await
        .unwrap();
    let client = EchoClient::new(channel);

    let succeeded = Arc::new(Mutex::new(Vec::new()));
    let (stop, stopped) = watch::channel(false);
    let calls = tokio::spawn(drive(client, stopped, succeeded.clone()));
    let done = || succeeded.lock().unwrap().len();
    eventually("200 calls succeeded", || done() >= 200).await;

    // The instance leaves discovery, as its endpoint does when Kubernetes starts to scale in;
    // once every observer and the callers know it, it gets SIGTERM and drains.
    dns.remove_srv(NAME, leaving.addr.port(), NAME)
        .await
        .unwrap();
    let gone = leaving.addr.to_string();
    eventually("the observers saw the instance leave discovery", || {
        std::iter::once(&plain_observer)
            .chain(&members)
            .all(|observer| !observer.instances().contains(&gone))
    })
    .await;
    let before = done();
    eventually("100 more calls succeeded", || done() >= before + 100).await;
    tokio::task::spawn_blocking(move || {
        leaving.terminate();
        leaving
    })
    .await
    .unwrap();
    let before = done();
    eventually("100 calls after the drain", || done() >= before + 100).await;
    stop.send_replace(true);
    let failed = calls.await.unwrap();

    let succeeded = succeeded.lock().unwrap().clone();
    eventually("the plain observer handled every event", || {
        plain.count() >= succeeded.len()
    })
    .await;
    eventually("the group handled every event", || {
        group.iter().map(Tally::count).sum::<usize>() >= succeeded.len()
    })
    .await;

    let plain_handled = plain.handled.lock().unwrap().clone();
    let mut group_handled: HashMap<String, u32> = HashMap::new();
    for member in &group {
        for (message, times) in member.handled.lock().unwrap().iter() {
            *group_handled.entry(message.clone()).or_default() += times;
        }
    }
    for message in &succeeded {
        assert_eq!(
            plain_handled.get(message),
            Some(&1),
            "plain observer, event {message}"
        );
        assert_eq!(
            group_handled.get(message),
            Some(&1),
            "consumer group, event {message}"
        );
    }
    // Anything else handled was published by a call whose reply was lost; still once.
    for (message, times) in plain_handled.iter().chain(&group_handled) {
        assert!(
            succeeded.contains(message) || failed.contains(message),
            "event {message} was never published"
        );
        assert_eq!(*times, 1, "event {message} handled {times} times");
    }
    eprintln!(
        "{} calls succeeded, {} failed; plain observer handled {}, group {} (split {:?})",
        succeeded.len(),
        failed.len(),
        plain_handled.len(),
        group_handled.len(),
        group.iter().map(Tally::count).collect::<Vec<_>>()
    );

    plain_observer.stop().await;
    for member in members {
        member.stop().await;
    }
    drop(staying);
    dns.stop().await;
}
