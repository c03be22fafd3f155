//! Soak: 10,000 subscribe/cancel cycles, and 100,000 calls while instances are added and
//! removed. Afterwards the runtime's task count is back where it started and memory within a
//! few percent of it, nothing panicked, and no call failed.

#[path = "../support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meshless::discovery::DnsSettings;
use meshless::testing::TestDns;
use meshless::v1::Subscribe;
use meshless::Channel;
use support::{request, Echo, EchoClient, EchoPublisher, EchoedEvent, Running};
use tokio::task::JoinSet;

const ZONE: &str = "service.test";
const NAME: &str = "echo.service.test";

/// Resident memory of this process, in bytes.
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits (bounded) for tasks that end asynchronously, connections closing and the like, to be
/// gone; returns the count then.
async fn settled_tasks(expected: usize) -> usize {
    for _ in 0..500 {
        if alive_tasks() <= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    alive_tasks()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_cancel_cycles_leave_nothing_behind() {
    const CYCLES: usize = 10_000;
    let publisher = EchoPublisher::new();
    let server = Running::publishing(publisher.clone()).await;
    publisher
        .publish_echoed(EchoedEvent {
            message: "retained".into(),
        })
        .expect("a small event");
    let client = EchoClient::connect(server.target())
        .await
        .unwrap()
        .into_tonic();

    let cycle = |client: support::testing::v1::echo_client::EchoClient<Channel>| async move {
        let mut stream = client
            .clone()
            .echoed(Subscribe::default())
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap().expect("the retained event");
    };
    // Warm up, then take the baseline.
    for _ in 0..200 {
        cycle(client.clone()).await;
    }
    let tasks = settled_tasks(0).await;
    let memory = resident_bytes();

    let mut running = JoinSet::new();
    for _ in 0..CYCLES {
        if running.len() >= 16 {
            running.join_next().await.unwrap().unwrap();
        }
        running.spawn(cycle(client.clone()));
    }
    while let Some(done) = running.join_next().await {
        done.unwrap();
    }

    let tasks_after = settled_tasks(tasks).await;
    let memory_after = resident_bytes();
    eprintln!(
        "{CYCLES} cycles: tasks {tasks} -> {tasks_after}, memory {} -> {} KiB",
        memory / 1024,
        memory_after / 1024
    );
    assert_eq!(tasks_after, tasks, "tasks return to their starting count");
    assert!(
        memory_after <= memory + memory / 20 + 2 * 1024 * 1024,
        "memory {memory} -> {memory_after}"
    );
    drop(client);
    server.stop().await.unwrap();
}

fn quick_dns() -> DnsSettings {
    let mut settings = DnsSettings::default();
    settings.refresh_floor = Duration::from_millis(20);
    settings.refresh_ceiling = Duration::from_millis(100);
    settings.timeout = Duration::from_millis(500);
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_on_while_instances_come_and_go() {
    const CALLS: usize = 100_000;
    const IN_FLIGHT: usize = 32;
    let dns = TestDns::start(ZONE).await.unwrap();
    dns.add_ip(NAME, "127.0.0.1".parse().unwrap())
        .await
        .unwrap();
    let mut servers = Vec::new();
    for i in 0..3 {
        let server = Running::echo(Echo::named(&format!("echo-{i}"))).await;
        dns.add_srv(NAME, 1, 1, server.addr.port(), NAME)
            .await
            .unwrap();
        servers.push(server);
    }
    let channel = Channel::builder()
        .dns(quick_dns())
        .connect(&dns.srv_target(NAME))
        .await
        .unwrap();
    let client = EchoClient::new(channel);

    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let run = |client: EchoClient, calls: usize| {
        let done = done.clone();
        let failures = failures.clone();
        async move {
            let mut running = JoinSet::new();
            for _ in 0..calls {
                if running.len() >= IN_FLIGHT {
                    running.join_next().await.unwrap().unwrap();
                }
                let client = client.clone();
                let done = done.clone();
                let failures = failures.clone();
                running.spawn(async move {
                    if let Err(status) = client.unary(request("soak")).await {
                        failures.lock().unwrap().push(status);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                });
            }
            while let Some(finished) = running.join_next().await {
                finished.unwrap();
            }
        }
    };
    // Warm up, then take the baseline.
    run(client.clone(), 2_000).await;
    let tasks = settled_tasks(0).await;
    let memory = resident_bytes();
    done.store(0, Ordering::Relaxed);

    let load = tokio::spawn(run(client.clone(), CALLS));
    // Every 10,000 calls, one instance is replaced: the new one registered, the old one
    // deregistered, then shut down gracefully.
    let mut replaced = 0;
    let mut next = 3;
    while !load.is_finished() {
        if done.load(Ordering::Relaxed) >= (replaced + 1) * 10_000 {
            let new = Running::echo(Echo::named(&format!("echo-{next}"))).await;
            next += 1;
            dns.add_srv(NAME, 1, 1, new.addr.port(), NAME)
                .await
                .unwrap();
            let old = servers.remove(0);
            dns.remove_srv(NAME, old.addr.port(), NAME).await.unwrap();
            servers.push(new);
            old.stop().await.unwrap();
            replaced += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    load.await.unwrap();

    let failures = failures.lock().unwrap().clone();
    assert!(replaced >= 5, "instances were replaced {replaced} times");
    assert!(
        failures.is_empty(),
        "{} of {CALLS} calls failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let tasks_after = settled_tasks(tasks).await;
    let memory_after = resident_bytes();
    eprintln!(
        "{CALLS} calls, {replaced} instances replaced: tasks {tasks} -> {tasks_after}, memory {} -> {} KiB",
        memory / 1024,
        memory_after / 1024
    );
    assert!(
        tasks_after <= tasks,
        "tasks return to their starting count: {tasks} -> {tasks_after}"
    );
    assert!(
        memory_after <= memory + memory / 20 + 4 * 1024 * 1024,
        "memory {memory} -> {memory_after}"
    );
    drop(client);
    for server in servers {
        server.stop().await.unwrap();
    }
    dns.stop().await;
}
