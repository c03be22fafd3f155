//! Benchmarks meshless against what a user would pick instead, side by side in one run, and
//! prints one table with absolute figures and ratios against baselines of the same run.
//!
//! Run with: cargo run --release --manifest-path tests/bench/Cargo.toml [-- --quick]
//! [--only memory|unary|events|keys|filters|compaction|discovery|durable|bounds|tracing|stores|postgres] [--observers 0|1|4|16] [--size 64|1024]
//! [--contender raw|meshless|NATS]
//!
//! The servers and producers run on one thread (a Tokio runtime pinned to core 0), the clients
//! and observers on another (pinned to core 1). NATS rows need `nats-server` on the PATH
//! (Debian: `apt-get install nats-server`); without it they are skipped.

mod bounds;
mod compaction;
mod durable;
mod events;
mod filters;
mod floor;
mod ginepro;
mod keyed;
mod postgres;
mod proto;
mod servers;
mod stats;
mod stores;
mod unary;

use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use meshless::testing::TestDns;

use crate::proto::mesh::testing::v1 as mesh;
use crate::servers::{start_echo, Echo};

const SERVICE: &str = "echo.bench.test";

static START: OnceLock<Instant> = OnceLock::new();

/// Time since the benchmark started: a clock both threads share.
fn since_start() -> Duration {
    START.get_or_init(Instant::now).elapsed()
}

pub struct Bench {
    server: tokio::runtime::Handle,
    duration: Duration,
    quick: bool,
}

impl Bench {
    /// Runs `work` on the server thread and waits for it.
    async fn on_server<F>(&self, work: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.server.spawn(work).await.expect("server task")
    }
}

fn main() {
    if std::env::args().any(|a| a == bounds::PRODUCER) {
        bounds::producer_main();
        return;
    }
    since_start();
    let quick = std::env::args().any(|a| a == "--quick");
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let server_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = server_runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server_core = cores.first().copied();
    // Named, so that a profile can tell the servers' thread apart (`perf report --comm
    // bench-server`).
    let server_thread = std::thread::Builder::new()
        .name("bench-server".into())
        .spawn(move || {
            if let Some(core) = server_core {
                core_affinity::set_for_current(core);
            }
            server_runtime.block_on(async {
                let _ = stopped.await;
            });
        })
        .expect("the servers' thread");
    if let Some(core) = cores.get(1).copied() {
        core_affinity::set_for_current(core);
    }
    let client_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let bench = Bench {
        server,
        duration: if quick {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        },
        quick,
    };
    client_runtime.block_on(run(&bench, cores.len()));
    let _ = stop.send(());
    let _ = server_thread.join();
}

async fn run(bench: &Bench, cores: usize) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    println!(
        "meshless benchmarks: {cpu}, {cores} cores; servers pinned to core 0, clients to core 1"
    );
    println!("(one run: figures vary between runs on a shared machine; compare the ratios within a run)\n");

    let only = std::env::args().skip_while(|a| a != "--only").nth(1);
    let wanted = |section: &str| only.as_deref().is_none_or(|only| only == section);
    // First, while the heap is fresh.
    if wanted("memory") {
        memory_section(bench).await;
    }
    if wanted("unary") {
        let healthy = unary_section(
            bench,
            Third::Slow(Duration::ZERO),
            "Unary, 100 B, 64 in flight, 3 instances",
        )
        .await;
        let slow = "Unary, one of the 3 instances slowed by 1 ms (10x its unloaded service time)";
        unary_section(bench, Third::Slow(Duration::from_millis(1)), slow).await;
        // Slower by 10x what a healthy instance takes at this load: 9x balance_list's p50
        // above, added.
        let p50_us = healthy
            .iter()
            .find(|r| r.name == unary::BALANCE_LIST)
            .map_or(600.0, |r| r.p50_us);
        let added = Duration::from_micros((9.0 * p50_us) as u64);
        let slow = format!(
            "Unary, one of the 3 instances answering 10x slower than the others at this load \
             ({:.1} ms added: 9x balance_list's p50 above)",
            added.as_secs_f64() * 1000.0
        );
        unary_section(bench, Third::Slow(added), &slow).await;
        let broken = "Unary, one of the 3 instances answering INTERNAL at once (failed calls after the first second of the run)";
        unary_section(bench, Third::Broken, broken).await;
    }
    if wanted("events") {
        events_section(bench).await;
    }
    if wanted("keys") {
        keyed::section(bench).await;
    }
    if wanted("filters") {
        filters::section(bench).await;
    }
    if wanted("compaction") {
        compaction::section(bench).await;
    }
    if wanted("discovery") {
        discovery_section(bench).await;
    }
    if wanted("durable") {
        durable::section(bench).await;
    }
    if only.as_deref() == Some("postgres") {
        postgres::section(bench).await;
    }
    if only.as_deref() == Some("stores") {
        stores::section(bench).await;
    }
    if wanted("bounds") {
        bounds::subscribers_section().await;
        bounds::groups_section(bench).await;
        bounds::keyed_groups_section(bench).await;
    }
    // Last: it installs a tracing subscriber for the rest of the process.
    if wanted("tracing") {
        tracing_section(bench).await;
    }
}

/// The meshless unary and event rows without a tracing subscriber (what the default build,
/// without the `opentelemetry` feature, does), then with every span an OpenTelemetry span
/// (the `opentelemetry` feature, `tracing-opentelemetry`, a provider without an exporter).
async fn tracing_section(bench: &Bench) {
    let (dns, _instances) = three_instances(bench, Third::Slow(Duration::ZERO)).await;
    let count: u64 = if bench.quick { 20_000 } else { 200_000 };
    let capacity = (count + 16) as usize;
    let producers = events::producers(bench, capacity, None).await;
    let (_, contender, producer) = producers
        .iter()
        .find(|(name, _, _)| *name == "meshless")
        .expect("the meshless producer");
    let measure = || async {
        let unary = unary::meshless(bench, &dns, 64).await;
        let events = events::throughput(bench, "meshless", contender, producer, 4, 64, count).await;
        (unary, events)
    };
    let (unary_off, events_off) = measure().await;
    {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::{Layer as _, SubscriberExt};
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        // As the README says to: meshless's spans (DEBUG), and INFO from the rest (h2 and hyper
        // log every frame at TRACE).
        let filter = tracing_subscriber::filter::Targets::new()
            .with_target("meshless", tracing::Level::DEBUG)
            .with_default(tracing::Level::INFO);
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("bench"))
            .with_filter(filter);
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("the first tracing subscriber of the process");
    }
    let (unary_on, events_on) = measure().await;
    println!("Tracing: meshless rows without a tracing subscriber, and with every span an OpenTelemetry span (no exporter)");
    println!(
        "  {:<44} {:>10} {:>9} {:>9} {:>8}",
        "", "per second", "p50 us", "p99 us", "x off"
    );
    for (name, report, base) in [
        (
            "unary, 3 instances, 64 in flight: off",
            &unary_off,
            &unary_off,
        ),
        (
            "unary, 3 instances, 64 in flight: on",
            &unary_on,
            &unary_off,
        ),
    ] {
        println!(
            "  {:<44} {:>10.0} {:>9.0} {:>9.0} {:>8.2}   {} failed of {}",
            name,
            report.per_second,
            report.p50_us,
            report.p99_us,
            report.per_second / base.per_second,
            report.errors,
            report.calls
        );
    }
    for (name, report) in [
        ("events, 4 observers, 64 B: off", &events_off),
        ("events, 4 observers, 64 B: on", &events_on),
    ] {
        println!(
            "  {:<44} {:>10.0} {:>9} {:>9} {:>8.2}   {}, producer cpu/ev {} ns",
            name,
            report.per_second,
            "-",
            "-",
            report.per_second / events_off.per_second,
            percent(report.delivered, report.expected),
            report.producer_cpu_per_event.as_nanos()
        );
    }
    println!();
    drop(producers);
    bench.on_server(async move { dns.stop().await }).await;
    let _ = std::fs::remove_dir_all(events::durable_dir());
}

/// What the third of the 3 instances does differently.
#[derive(Clone, Copy)]
enum Third {
    /// Answers after this delay (zero: like the others).
    Slow(Duration),
    /// Answers `INTERNAL` at once.
    Broken,
}

/// Three Echo instances on the server runtime, registered in a DNS server of their own; the
/// third behaves as `third` says.
async fn three_instances(bench: &Bench, third: Third) -> (TestDns, Vec<std::net::SocketAddr>) {
    let dns = bench
        .on_server(async { TestDns::start("bench.test").await.expect("dns") })
        .await;
    let mut instances = Vec::new();
    for (i, name) in ["one", "two", "three"].into_iter().enumerate() {
        let (delay, broken) = match (i, third) {
            (2, Third::Slow(delay)) => (delay, false),
            (2, Third::Broken) => (Duration::ZERO, true),
            _ => (Duration::ZERO, false),
        };
        let addr = bench
            .on_server(async move {
                let echo = Echo {
                    name,
                    delay,
                    broken,
                };
                start_echo(echo, mesh::EchoPublisher::new()).await
            })
            .await;
        let host = format!("{name}.bench.test");
        dns.add_ip(&host, addr.ip()).await.expect("dns");
        dns.add_srv(SERVICE, 1, 1, addr.port(), &host)
            .await
            .expect("dns");
        instances.push(addr);
    }
    (dns, instances)
}

async fn unary_section(bench: &Bench, third: Third, title: &str) -> Vec<unary::Report> {
    let (dns, instances) = three_instances(bench, third).await;
    let reports = unary::run(bench, &instances, &dns, 64).await;
    println!("{title}");
    println!(
        "  {:<32} {:>10} {:>9} {:>9} {:>8} {:>8} {:>9}",
        "", "req/s", "p50 us", "p99 us", "x req/s", "x p99", "failed %"
    );
    let (base_rate, base_p99) = reports
        .first()
        .map_or((1.0, 1.0), |r| (r.per_second, r.p99_us));
    for r in &reports {
        println!(
            "  {:<32} {:>10.0} {:>9.0} {:>9.0} {:>8.2} {:>8.2} {:>9.2}",
            r.name,
            r.per_second,
            r.p50_us,
            r.p99_us,
            r.per_second / base_rate,
            r.p99_us / base_p99,
            100.0 * r.errors as f64 / r.calls.max(1) as f64
        );
    }
    println!();
    bench.on_server(async move { dns.stop().await }).await;
    reports
}

fn start_nats() -> Option<(std::process::Child, String)> {
    start_nats_with(&[])
}

/// Starts `nats-server` on a free port of 127.0.0.1 with `extra` arguments; `None` without
/// one on the PATH.
fn start_nats_with(extra: &[&str]) -> Option<(std::process::Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = std::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((child, format!("nats://127.0.0.1:{port}")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

async fn events_section(bench: &Bench) {
    let nats = start_nats();
    if nats.is_none() {
        println!(
            "(nats-server not found: NATS rows skipped; Debian: apt-get install nats-server)\n"
        );
    }
    let count_64: u64 = if bench.quick { 20_000 } else { 200_000 };
    let count_1k: u64 = if bench.quick { 5_000 } else { 50_000 };
    let capacity = (count_64 + 16) as usize;
    let _ = std::fs::remove_dir_all(events::durable_dir());
    let producers =
        events::producers(bench, capacity, nats.as_ref().map(|(_, url)| url.as_str())).await;

    println!("Events, 1 producer -> N observers, every event delivered (cursors on for meshless)");
    println!(
        "  {:<32} {:>5} {:>9} {:>13} {:>10} {:>12} {:>9}",
        "", "N", "size", "events/s", "x raw", "delivered", "cpu/ev ns"
    );
    let mut cpu_by_observers = Vec::new();
    let only_sizes = number_args("--size");
    let only_observers = number_args("--observers");
    // `--observers 0`: the latency rows only.
    for size in [64usize, 1024] {
        if only_observers == [0] || !only_sizes.is_empty() && !only_sizes.contains(&size) {
            continue;
        }
        for observers in [1usize, 4, 16] {
            if !only_observers.is_empty() && !only_observers.contains(&observers) {
                continue;
            }
            let count = if size == 64 { count_64 } else { count_1k };
            let mut raw_rate = f64::NAN;
            for (name, contender, producer) in &producers {
                if !wanted_contender(name) {
                    continue;
                }
                let r =
                    events::throughput(bench, name, contender, producer, observers, size, count)
                        .await;
                if r.name.starts_with("raw") {
                    raw_rate = r.per_second;
                }
                if r.name == "meshless" && size == 64 {
                    cpu_by_observers.push((observers, r.producer_cpu_per_event));
                }
                println!(
                    "  {:<32} {:>5} {:>8}B {:>13.0} {:>10} {:>12} {:>9}",
                    r.name,
                    r.observers,
                    r.size,
                    r.per_second,
                    if raw_rate.is_nan() {
                        "-".to_owned()
                    } else {
                        format!("{:.2}", r.per_second / raw_rate)
                    },
                    percent(r.delivered, r.expected),
                    r.producer_cpu_per_event.as_nanos()
                );
            }
        }
    }
    if let (Some((_, one)), Some((_, sixteen))) =
        (cpu_by_observers.first(), cpu_by_observers.last())
    {
        println!(
            "  meshless producer CPU per event, 16 observers vs 1: {:.2}x",
            sixteen.as_secs_f64() / one.as_secs_f64()
        );
    }
    println!();

    if !only_sizes.is_empty() || !only_observers.is_empty() && only_observers != [0] {
        // Some throughput rows only: no latency rows.
        stop_nats(nats);
        return;
    }
    let rate = 10_000;
    let duration = if bench.quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    println!("Events at {rate}/s to 4 observers, 64 B: publish-to-handler latency");
    println!(
        "  {:<24} {:>9} {:>9} {:>10}",
        "", "p50 us", "p99 us", "x p99"
    );
    let mut raw_p99 = f64::NAN;
    // One event at a time: the batch rows publish bursts.
    let mut rows: Vec<(&str, &events::Contender, &events::Producer)> = producers
        .iter()
        .filter(|(name, _, _)| !name.contains("batches"))
        .map(|(n, c, p)| (*n, c, p))
        .collect();
    let plain_on_meshless =
        producers
            .iter()
            .find_map(|(name, contender, producer)| match contender {
                events::Contender::Meshless(addr) if *name == "meshless" => {
                    Some((events::Contender::Raw(*addr), producer))
                }
                _ => None,
            });
    if let Some((contender, producer)) = &plain_on_meshless {
        rows.push(("meshless server, plain client", contender, producer));
    }
    for (name, contender, producer) in rows {
        let (p50, p99, _) = events::latency(bench, contender, producer, 4, rate, duration).await;
        if name.starts_with("raw") {
            raw_p99 = p99;
        }
        let ratio = if raw_p99.is_nan() {
            "-".to_owned()
        } else {
            format!("{:.2}", p99 / raw_p99)
        };
        println!("  {:<24} {:>9.0} {:>9.0} {:>10}", name, p50, p99, ratio);
    }
    // The floor: one round trip, one message in flight.
    let rounds = if bench.quick { 2_000 } else { 20_000 };
    for (name, (p50, p99)) in [
        (
            "floor: HTTP/2 round trip",
            floor::http2(bench, rounds).await,
        ),
        ("floor: TCP round trip", floor::tcp(bench, rounds).await),
    ] {
        println!("  {:<24} {:>9.0} {:>9.0} {:>10}", name, p50, p99, "-");
    }
    println!();
    stop_nats(nats);
    drop(producers);
    let _ = std::fs::remove_dir_all(events::durable_dir());
}

fn stop_nats(nats: Option<(std::process::Child, String)>) {
    if let Some((mut child, _)) = nats {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Whether `--contender` (a name's first word: raw, meshless, NATS) leaves this one in.
fn wanted_contender(name: &str) -> bool {
    let only = std::env::args().skip_while(|a| a != "--contender").nth(1);
    only.is_none_or(|only| name.split(' ').next() == Some(only.as_str()))
}

/// Every value given to `flag` (`--size 64 --size 1024`), to run some event rows only.
fn number_args(flag: &str) -> Vec<usize> {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .filter(|pair| pair[0] == flag)
        .filter_map(|pair| pair[1].parse().ok())
        .collect()
}

fn percent(delivered: u64, expected: u64) -> String {
    if delivered == expected {
        "all".to_owned()
    } else {
        format!("{:.1}%", delivered as f64 * 100.0 / expected as f64)
    }
}

async fn memory_section(bench: &Bench) {
    const SUBSCRIPTIONS: usize = 1000;
    const CONNECTIONS: usize = 10;
    let producers = events::producers(bench, 1024, None).await;
    println!("Memory per idle subscription ({SUBSCRIPTIONS} plain tonic subscribers over {CONNECTIONS} connections; RSS of the whole process, both ends)");
    let mut raw = f64::NAN;
    // The batch rows' producers are the same servers: measured once.
    for (name, contender, _) in producers
        .iter()
        .filter(|(name, _, _)| !name.contains("batches"))
    {
        let addr = match contender {
            events::Contender::Meshless(addr) | events::Contender::Raw(addr) => *addr,
            events::Contender::Nats { .. } => continue,
        };
        let mut channels = Vec::new();
        for _ in 0..CONNECTIONS {
            let endpoint =
                tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("uri");
            channels.push(endpoint.connect().await.expect("connect"));
        }
        let before = stats::rss_bytes();
        let mut streams = Vec::with_capacity(SUBSCRIPTIONS);
        for i in 0..SUBSCRIPTIONS {
            let mut client = proto::plain::testing::v1::echo_client::EchoClient::new(
                channels[i % CONNECTIONS].clone(),
            );
            streams.push(
                client
                    .echoed(crate::proto::plain::meshless::v1::Subscribe::default())
                    .await
                    .expect("subscribe")
                    .into_inner(),
            );
        }
        let per = (stats::rss_bytes().saturating_sub(before)) as f64 / SUBSCRIPTIONS as f64;
        if name.starts_with("raw") {
            raw = per;
        }
        let ratio = if raw.is_nan() {
            "-".to_owned()
        } else {
            format!("{:.2}x", per / raw)
        };
        println!(
            "  {:<24} {:>8.0} bytes per subscription {:>8}",
            name, per, ratio
        );
        drop(streams);
    }
    println!();
}

async fn discovery_section(bench: &Bench) {
    let dns = bench
        .on_server(async { TestDns::start("bench.test").await.expect("dns") })
        .await;
    let first = bench
        .on_server(async {
            start_echo(
                Echo {
                    name: "first",
                    delay: Duration::ZERO,
                    broken: false,
                },
                mesh::EchoPublisher::new(),
            )
            .await
        })
        .await;
    let second = bench
        .on_server(async {
            start_echo(
                Echo {
                    name: "second",
                    delay: Duration::ZERO,
                    broken: false,
                },
                mesh::EchoPublisher::new(),
            )
            .await
        })
        .await;
    dns.add_ip("node.bench.test", first.ip())
        .await
        .expect("dns");
    dns.add_srv(SERVICE, 1, 1, first.port(), "node.bench.test")
        .await
        .expect("dns");
    let client = mesh::EchoClient::connect(dns.srv_target(SERVICE))
        .await
        .expect("client");
    client
        .unary(mesh::EchoRequest::default())
        .await
        .expect("call");

    let changed = Instant::now();
    dns.add_srv(SERVICE, 1, 1, second.port(), "node.bench.test")
        .await
        .expect("dns");
    let mut calls = 0u64;
    loop {
        calls += 1;
        let reply = client
            .unary(mesh::EchoRequest::default())
            .await
            .expect("call");
        if reply.get_ref().message == "second" || changed.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    println!(
        "Discovery convergence (default settings: refresh floor 1 s, TTL 0 as Consul): {:.0} ms from the DNS change to the first call served by the new instance ({calls} calls meanwhile, none failed)",
        changed.elapsed().as_secs_f64() * 1000.0
    );
    bench.on_server(async move { dns.stop().await }).await;
    large_srv_answer(bench).await;
}

/// What an SRV answer of 1,000 instances costs a client: the time from `connect` to the first
/// call's reply, until every instance is ready, and the client thread's CPU per refresh while
/// idle (each refresh looks up the SRV name and the instances' 1,000 target names, 16 at a
/// time, and diffs the answer).
async fn large_srv_answer(bench: &Bench) {
    const INSTANCES: usize = 1000;
    let dns = bench
        .on_server(async { TestDns::start("bench.test").await.expect("dns") })
        .await;
    let addrs = bench
        .on_server(async move {
            let mut addrs = Vec::with_capacity(INSTANCES);
            for _ in 0..INSTANCES {
                let echo = Echo {
                    name: "many",
                    delay: Duration::ZERO,
                    broken: false,
                };
                addrs.push(start_echo(echo, mesh::EchoPublisher::new()).await);
            }
            addrs
        })
        .await;
    for (i, addr) in addrs.iter().enumerate() {
        let host = format!("n{i}.bench.test");
        dns.add_ip(&host, addr.ip()).await.expect("dns");
        dns.add_srv("many.bench.test", 1, 1, addr.port(), &host)
            .await
            .expect("dns");
    }
    let started = Instant::now();
    let channel = meshless::Channel::connect(&dns.srv_target("many.bench.test"))
        .await
        .expect("channel");
    let client = mesh::EchoClient::new(channel.clone());
    client
        .unary(mesh::EchoRequest::default())
        .await
        .expect("call");
    let first_call = started.elapsed();
    let status = channel.discovery_status().borrow().clone();
    // Every instance answered a call: each is connected (the picks are random, so this takes
    // a few thousand calls).
    let mut calls = 0u64;
    while started.elapsed() < Duration::from_secs(60) {
        let ready = channel.ready_instances();
        if ready >= INSTANCES {
            break;
        }
        client
            .unary(mesh::EchoRequest::default())
            .await
            .expect("call");
        calls += 1;
    }
    let all_ready = started.elapsed();
    let window = if bench.quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(10)
    };
    let cpu_before = stats::thread_cpu_time();
    tokio::time::sleep(window).await;
    let cpu = stats::thread_cpu_time().saturating_sub(cpu_before);
    // The refresh floor is 1 s and TestDns answers with TTL 0: one refresh per second.
    let refreshes = window.as_secs().max(1);
    println!(
        "Discovery of one SRV answer of {INSTANCES} instances (distinct target names): first call {:.0} ms after connect ({status:?}); every instance ready after {:.1} s ({calls} calls); client CPU per refresh while idle {:.1} ms ({refreshes} refreshes)",
        first_call.as_secs_f64() * 1000.0,
        all_ready.as_secs_f64(),
        cpu.as_secs_f64() * 1000.0 / refreshes as f64
    );
    drop((client, channel));
    bench.on_server(async move { dns.stop().await }).await;
}
