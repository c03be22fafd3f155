//! DNS discovery and balancing end to end: instances found through an in-process DNS server
//! (`meshless::testing::TestDns`), scaled up and down, killed, slowed, weighted.

#[path = "../support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshless::discovery::{DiscoveryStatus, DnsSettings};
use meshless::testing::TestDns;
use meshless::{Channel, Code, Server, Status};
use support::{request, served_by, Echo, EchoClient, EchoService, Killable, Running};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

const ZONE: &str = "svc.test";
const USERS: &str = "users.svc.test";

/// Quick refreshes, so tests converge fast.
fn fast_dns() -> DnsSettings {
    let mut settings = DnsSettings::default();
    settings.refresh_floor = Duration::from_millis(20);
    settings.refresh_ceiling = Duration::from_millis(200);
    settings.timeout = Duration::from_millis(200);
    settings.retries = 0;
    settings.retry_backoff = Duration::from_millis(20);
    settings
}

async fn channel(target: &str) -> Channel {
    Channel::builder()
        .dns(fast_dns())
        .connect(target)
        .await
        .expect("channel")
}

/// Registers an instance listening on 127.0.0.1:`port` as `node`, in the SRV records of USERS.
async fn register(dns: &TestDns, node: &str, port: u16, priority: u16, weight: u16) {
    let host = format!("{node}.{ZONE}");
    dns.add_ip(&host, "127.0.0.1".parse().unwrap())
        .await
        .unwrap();
    dns.add_srv(USERS, priority, weight, port, &host)
        .await
        .unwrap();
}

async fn deregister(dns: &TestDns, node: &str, port: u16) {
    dns.remove_srv(USERS, port, &format!("{node}.{ZONE}"))
        .await
        .unwrap();
}

async fn wait_for_instances(channel: &Channel, count: usize) {
    channel
        .discovery_status()
        .wait_for(|status| *status == DiscoveryStatus::Resolved { instances: count })
        .await
        .expect("discovery runs");
}

#[derive(Debug, Default, Clone)]
struct Stats {
    served: HashMap<String, usize>,
    failures: Vec<Status>,
}

impl Stats {
    fn total(&self) -> usize {
        self.served.values().sum()
    }

    fn of(&self, name: &str) -> usize {
        self.served.get(name).copied().unwrap_or(0)
    }
}

/// A steady stream of calls from `concurrency` tasks, each waiting for its call before the next.
struct Load {
    stats: Arc<Mutex<Stats>>,
    progress: Arc<Notify>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(client: EchoClient, concurrency: usize) -> Self {
        let stats = Arc::new(Mutex::new(Stats::default()));
        let progress = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..concurrency)
            .map(|_| {
                let (client, stats, progress, stop) = (
                    client.clone(),
                    stats.clone(),
                    progress.clone(),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    // Bounded, whatever happens to the test.
                    for _ in 0..1_000_000 {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let result = client.unary(request("hi")).await;
                        {
                            let mut stats = stats.lock().unwrap();
                            match result {
                                Ok(reply) => {
                                    *stats
                                        .served
                                        .entry(served_by(reply.get_ref()).to_owned())
                                        .or_default() += 1
                                }
                                Err(status) => stats.failures.push(status),
                            }
                        }
                        progress.notify_waiters();
                    }
                })
            })
            .collect();
        Self {
            stats,
            progress,
            stop,
            tasks,
        }
    }

    fn stats(&self) -> Stats {
        self.stats.lock().unwrap().clone()
    }

    /// Waits, without sleeping, until the calls made so far satisfy `done`.
    async fn until(&self, done: impl Fn(&Stats) -> bool) -> Stats {
        loop {
            let progress = self.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            let stats = self.stats();
            if done(&stats) {
                return stats;
            }
            progress.await;
        }
    }

    async fn stop(self) -> Stats {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        self.stats.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn a_dns_target_reaches_its_a_and_aaaa_instances() {
    // One port, two addresses: 127.0.0.1 and ::1.
    let (v4, v6) = loop {
        let v4 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = v4.local_addr().unwrap().port();
        if let Ok(v6) = tokio::net::TcpListener::bind(("::1", port)).await {
            break (v4, v6);
        }
    };
    let port = v4.local_addr().unwrap().port();
    let four = Running::start_on(
        v4,
        Server::builder().add_service(EchoService::new(Echo::named("v4"))),
    );
    let six = Running::start_on(
        v6,
        Server::builder().add_service(EchoService::new(Echo::named("v6"))),
    );
    let dns = TestDns::start(ZONE).await.unwrap();
    dns.add_ip(USERS, "127.0.0.1".parse().unwrap())
        .await
        .unwrap();
    dns.add_ip(USERS, "::1".parse().unwrap()).await.unwrap();

    let channel = channel(&dns.target(USERS, port)).await;
    assert_eq!(
        *channel.discovery_status().borrow(),
        DiscoveryStatus::Resolved { instances: 2 }
    );
    let load = Load::start(EchoClient::new(channel), 2);
    let stats = load.until(|s| s.of("v4") > 0 && s.of("v6") > 0).await;
    assert!(stats.failures.is_empty(), "{:?}", stats.failures);
    load.stop().await;
    four.stop().await.unwrap();
    six.stop().await.unwrap();
    dns.stop().await;
}

#[tokio::test]
async fn scaling_1_3_1_with_planned_removals_fails_no_call() {
    let dns = TestDns::start(ZONE).await.unwrap();
    let servers: Vec<Running> = echo_servers(["one", "two", "three"]).await;
    register(&dns, "one", servers[0].addr.port(), 1, 1).await;

    let channel = channel(&dns.srv_target(USERS)).await;
    assert_eq!(
        *channel.discovery_status().borrow(),
        DiscoveryStatus::Resolved { instances: 1 }
    );
    let load = Load::start(EchoClient::new(channel.clone()), 4);
    load.until(|s| s.total() >= 50).await;

    // Scale out: the new instances receive calls once a lookup has seen them.
    register(&dns, "two", servers[1].addr.port(), 1, 1).await;
    register(&dns, "three", servers[2].addr.port(), 1, 1).await;
    wait_for_instances(&channel, 3).await;
    load.until(|s| s.of("two") > 0 && s.of("three") > 0).await;

    // Scale in, the planned way: out of DNS first, stopped once a lookup has seen it.
    deregister(&dns, "two", servers[1].addr.port()).await;
    deregister(&dns, "three", servers[2].addr.port()).await;
    wait_for_instances(&channel, 1).await;
    let mut servers = servers.into_iter();
    let one = servers.next().unwrap();
    for server in servers {
        server.stop().await.unwrap();
    }
    let before = load.stats().total();
    load.until(|s| s.total() >= before + 100).await;

    let stats = load.stop().await;
    assert!(
        stats.failures.is_empty(),
        "a planned removal fails no call: {:?}",
        stats.failures
    );
    one.stop().await.unwrap();
    dns.stop().await;
}

async fn echo_servers<const N: usize>(names: [&str; N]) -> Vec<Running> {
    let mut servers = Vec::new();
    for name in names {
        servers.push(Running::echo(Echo::named(name)).await);
    }
    servers
}

#[tokio::test]
async fn a_killed_instance_fails_only_calls_in_flight_and_is_not_picked_again() {
    const CONCURRENCY: usize = 4;
    let dns = TestDns::start(ZONE).await.unwrap();
    let servers: Vec<Killable> = ["one", "two", "victim"]
        .map(|name| Killable::echo(Echo::named(name)))
        .into();
    for (node, server) in ["one", "two", "victim"].iter().zip(&servers) {
        register(&dns, node, server.addr.port(), 1, 1).await;
    }
    let channel = channel(&dns.srv_target(USERS)).await;
    let load = Load::start(EchoClient::new(channel), CONCURRENCY);
    load.until(|s| s.of("one") > 0 && s.of("two") > 0 && s.of("victim") > 0)
        .await;

    let mut servers = servers.into_iter();
    let (one, two, victim) = (
        servers.next().unwrap(),
        servers.next().unwrap(),
        servers.next().unwrap(),
    );
    victim.kill();
    let before = load.stats().total();
    let after_kill = load.until(|s| s.total() >= before + 300).await;
    let later = load.until(|s| s.total() >= before + 600).await;
    let stats = load.stop().await;

    // Each caller has one call at a time: at most that many calls were in flight on the victim
    // (or picked it before its failure was first seen).
    assert!(stats.failures.len() <= CONCURRENCY, "{:?}", stats.failures);
    assert_eq!(
        later.of("victim"),
        after_kill.of("victim"),
        "the killed instance is not picked again"
    );
    one.kill();
    two.kill();
    dns.stop().await;
}

#[tokio::test]
async fn a_slow_instance_receives_clearly_fewer_calls() {
    let dns = TestDns::start(ZONE).await.unwrap();
    let fast = [
        Running::echo(Echo::named("fast-1")).await,
        Running::echo(Echo::named("fast-2")).await,
    ];
    let slow = Running::echo(Echo::slow("slow", Duration::from_millis(200))).await;
    register(&dns, "fast-1", fast[0].addr.port(), 1, 1).await;
    register(&dns, "fast-2", fast[1].addr.port(), 1, 1).await;
    register(&dns, "slow", slow.addr.port(), 1, 1).await;

    let channel = channel(&dns.srv_target(USERS)).await;
    let load = Load::start(EchoClient::new(channel), 16);
    load.until(|s| s.total() >= 3000).await;
    let stats = load.stop().await;

    assert!(stats.failures.is_empty(), "{:?}", stats.failures);
    let fewest_fast = stats.of("fast-1").min(stats.of("fast-2"));
    assert!(
        stats.of("slow") * 4 < fewest_fast,
        "calls per instance: {:?}",
        stats.served
    );
    for server in fast.into_iter().chain([slow]) {
        server.stop().await.unwrap();
    }
    dns.stop().await;
}

#[tokio::test]
async fn srv_weights_skew_traffic_priorities_pick_the_tier_and_ports_come_from_srv() {
    let dns = TestDns::start(ZONE).await.unwrap();
    let light = Running::echo(Echo::named("light")).await;
    let heavy = Running::echo(Echo::named("heavy")).await;
    let backup = Running::echo(Echo::named("backup")).await;
    register(&dns, "light", light.addr.port(), 10, 1).await;
    register(&dns, "heavy", heavy.addr.port(), 10, 3).await;
    register(&dns, "backup", backup.addr.port(), 20, 100).await;

    let channel = channel(&dns.srv_target(USERS)).await;
    let client = EchoClient::new(channel.clone());
    // Wait until both primaries are connected: sequential calls then split by weight alone.
    let mut served = HashMap::<String, usize>::new();
    while served.len() < 2 {
        let reply = client.unary(request("hi")).await.unwrap();
        *served
            .entry(served_by(reply.get_ref()).to_owned())
            .or_default() += 1;
    }
    served.clear();
    for _ in 0..2000 {
        let reply = client.unary(request("hi")).await.unwrap();
        *served
            .entry(served_by(reply.get_ref()).to_owned())
            .or_default() += 1;
    }
    let heavy_share = served.get("heavy").copied().unwrap_or(0) as f64 / 2000.0;
    // Weights alone give 3/4 (within 0.03 of it, at 3 standard deviations). The band is wider
    // below: an instance that answers more than 4x slower than the other candidate loses the
    // pick whatever its weight (as the README says), and on a loaded machine a stall of the
    // heavy one moves some calls to the light one for a while. Ignoring weights gives 1/2.
    assert!(
        (0.62..0.82).contains(&heavy_share),
        "weights 1:3 give the heavy one about 3/4: {served:?}"
    );
    assert_eq!(
        served.get("backup"),
        None,
        "priority 20 waits while priority 10 is up: {served:?}"
    );

    // The primaries leave: the backup tier takes over.
    deregister(&dns, "light", light.addr.port()).await;
    deregister(&dns, "heavy", heavy.addr.port()).await;
    wait_for_instances(&channel, 1).await;
    let reply = client.unary(request("hi")).await.unwrap();
    assert_eq!(served_by(reply.get_ref()), "backup");

    for server in [light, heavy, backup] {
        server.stop().await.unwrap();
    }
    dns.stop().await;
}

#[tokio::test]
async fn with_the_dns_server_down_calls_keep_succeeding() {
    let dns = TestDns::start(ZONE).await.unwrap();
    let server = Running::echo(Echo::named("one")).await;
    register(&dns, "one", server.addr.port(), 1, 1).await;
    let channel = channel(&dns.srv_target(USERS)).await;
    let client = EchoClient::new(channel.clone());
    client.unary(request("hi")).await.unwrap();

    dns.stop().await;
    let mut status = channel.discovery_status();
    let failing = status
        .wait_for(|s| matches!(s, DiscoveryStatus::Failing { .. }))
        .await
        .unwrap()
        .clone();
    assert!(
        matches!(failing, DiscoveryStatus::Failing { instances: 1, .. }),
        "{failing:?}"
    );
    for _ in 0..20 {
        let reply = client
            .unary(request("hi"))
            .await
            .expect("the last known instance still serves");
        assert_eq!(served_by(reply.get_ref()), "one");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn nxdomain_fails_calls_fast_with_unavailable() {
    let dns = TestDns::start(ZONE).await.unwrap();
    let channel = channel(&dns.srv_target(USERS)).await;
    assert!(matches!(
        *channel.discovery_status().borrow(),
        DiscoveryStatus::NoInstances { .. }
    ));
    let client = EchoClient::new(channel.clone());
    let started = tokio::time::Instant::now();
    let status = client.unary(request("hi")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("NXDOMAIN"),
        "{}",
        status.message()
    );
    assert!(status.message().contains(USERS), "{}", status.message());
    // Fast: no wait for instances that cannot come (the wait timeout is 10 s).
    assert!(started.elapsed() < Duration::from_secs(5));

    // An instance registers: calls succeed. Every record goes: NXDOMAIN again, calls fail.
    let server = Running::echo(Echo::named("one")).await;
    register(&dns, "one", server.addr.port(), 1, 1).await;
    wait_for_instances(&channel, 1).await;
    let reply = client.unary(request("hi")).await.unwrap();
    assert_eq!(served_by(reply.get_ref()), "one");
    dns.remove_name(USERS).await.unwrap();
    channel
        .discovery_status()
        .wait_for(|s| matches!(s, DiscoveryStatus::NoInstances { .. }))
        .await
        .unwrap();
    assert_eq!(
        client.unary(request("hi")).await.unwrap_err().code(),
        Code::Unavailable
    );
    server.stop().await.unwrap();
    dns.stop().await;
}

#[tokio::test]
async fn dns_discover_is_a_stream_of_changes_keyed_by_address() {
    use meshless::discovery::{DiscoveredInstance, DnsDiscover};
    use tokio_stream::StreamExt;
    use tower::discover::Change;

    let dns = TestDns::start(ZONE).await.unwrap();
    register(&dns, "one", 7001, 5, 2).await;
    let mut discover = DnsDiscover::new(&dns.srv_target(USERS), fast_dns()).unwrap();
    let addr = "127.0.0.1:7001".parse().unwrap();
    match discover.next().await {
        Some(Ok(Change::Insert(key, instance))) => {
            assert_eq!(key, addr);
            assert_eq!(
                instance,
                DiscoveredInstance {
                    addr,
                    priority: 5,
                    weight: 2
                }
            );
        }
        other => panic!("expected an insertion, got {other:?}"),
    }
    deregister(&dns, "one", 7001).await;
    match discover.next().await {
        Some(Ok(Change::Remove(key))) => assert_eq!(key, addr),
        other => panic!("expected a removal, got {other:?}"),
    }
    dns.stop().await;
}

#[tokio::test]
async fn an_srv_target_that_fails_to_resolve_hides_no_other_instance() {
    let dns = TestDns::start(ZONE).await.unwrap();
    let server = Running::echo(Echo::named("one")).await;
    register(&dns, "one", server.addr.port(), 1, 1).await;
    // A second record whose target is outside the zone: looking it up is REFUSED.
    dns.add_srv(
        USERS,
        1,
        1,
        server.addr.port() ^ 1,
        "node.elsewhere.example",
    )
    .await
    .unwrap();
    let channel = channel(&dns.srv_target(USERS)).await;
    tokio::time::timeout(support::PATIENCE, wait_for_instances(&channel, 1))
        .await
        .expect("the healthy target's instance is known");
    let client = EchoClient::new(channel.clone());
    for _ in 0..5 {
        let reply = client.unary(request("hi")).await.expect("served");
        assert_eq!(served_by(reply.get_ref()), "one");
    }
    server.stop().await.unwrap();
    dns.stop().await;
}

#[tokio::test]
async fn a_dns_server_that_never_answers_holds_the_first_call_no_longer_than_the_first_answer_timeout(
) {
    // A UDP socket that takes queries and never answers: a DNS server that is down.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server = silent.local_addr().unwrap();
    let mut settings = DnsSettings::default();
    settings.first_answer_timeout = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let channel = Channel::builder()
        .dns(settings)
        .connect(&format!("dns+srv://{server}/{USERS}"))
        .await
        .expect("the channel is handed out without an answer");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(
        *channel.discovery_status().borrow(),
        DiscoveryStatus::Failing { instances: 0, .. }
    ));
    let status = tokio::time::timeout(
        support::PATIENCE,
        EchoClient::new(channel).unary(request("hi")),
    )
    .await
    .expect("the call ends")
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("DNS"), "{}", status.message());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(silent);
}
