//! What peers can make a producer pay: the memory of 10,000 subscribers of a full retention
//! ring (the producer in a process of its own, so that its resident memory is its own), and
//! the cost of `publish` with 64 consumer groups of 1,024 members each.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use meshless::events::PublisherSettings;
use tokio_stream::StreamExt;

use crate::proto::mesh::testing::v1 as mesh;
use crate::proto::plain::meshless::v1::Subscribe;
use crate::proto::plain::testing::v1::echo_client::EchoClient;
use crate::servers::{start_echo, Echo};
use crate::stats::rss_bytes;
use crate::Bench;

/// The argument that makes this program the producer of the subscriber row.
pub const PRODUCER: &str = "--bounds-producer";
const RETAIN: usize = 10_000;
const START_LIVE: i32 = 2;

fn event() -> mesh::EchoedEvent {
    mesh::EchoedEvent {
        message: "x".repeat(64),
    }
}

/// The producer process: 10,000 events of 64 B retained, served on 127.0.0.1:0. Prints its
/// address, then answers each `rss` line on its standard input with its resident bytes; exits
/// when its standard input closes.
pub fn producer_main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut settings = PublisherSettings::default().retain("Echoed", RETAIN);
        settings.max_subscribers = 2 * RETAIN;
        let publisher = mesh::EchoPublisher::with_settings(settings);
        for _ in 0..RETAIN {
            publisher.publish_echoed(event()).expect("a small event");
        }
        let addr = start_echo(
            Echo {
                name: "bounds",
                delay: Duration::ZERO,
                broken: false,
            },
            publisher,
        )
        .await;
        println!("{addr}");
        std::thread::spawn(|| {
            for line in std::io::stdin().lock().lines() {
                match line.as_deref() {
                    Ok("rss") => {
                        // Free memory back to the system first, so that the figure is what
                        // is held, not the high-water mark of what was.
                        // SAFETY: malloc_trim only releases memory the allocator holds free.
                        unsafe {
                            libc::malloc_trim(0);
                        }
                        println!("{}", rss_bytes());
                    }
                    _ => break,
                }
            }
            std::process::exit(0);
        });
        std::future::pending::<()>().await;
    });
}

/// The producer process, seen from the benchmark.
struct Producer {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    addr: SocketAddr,
}

impl Producer {
    fn start() -> Self {
        let mut child = Command::new(std::env::current_exe().expect("this program"))
            .arg(PRODUCER)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the producer");
        let input = child.stdin.take().expect("its input");
        let mut output = BufReader::new(child.stdout.take().expect("its output"));
        let mut line = String::new();
        output.read_line(&mut line).expect("its address");
        let addr = line.trim().parse().expect("an address");
        Self {
            child,
            input,
            output,
            addr,
        }
    }

    fn rss(&mut self) -> u64 {
        writeln!(self.input, "rss").expect("ask");
        let mut line = String::new();
        self.output.read_line(&mut line).expect("answer");
        line.trim().parse().expect("bytes")
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn channels(addr: SocketAddr, count: usize) -> Vec<tonic::transport::Channel> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("uri");
        channels.push(endpoint.connect().await.expect("connect"));
    }
    channels
}

const MIB: f64 = 1024.0 * 1024.0;

pub async fn subscribers_section() {
    println!(
        "Producer memory for plain subscribers, {RETAIN} events of 64 B retained (the producer in a process of its own; its RSS after malloc_trim)"
    );
    let mut producer = Producer::start();
    let ring = producer.rss();

    // 10,000 subscribers at the live end: what a subscription itself costs.
    const LIVE: usize = 10_000;
    let connections = channels(producer.addr, 20).await;
    let before = producer.rss();
    let mut streams = Vec::with_capacity(LIVE);
    for i in 0..LIVE {
        let mut client = EchoClient::new(connections[i % connections.len()].clone());
        let request = Subscribe {
            start: START_LIVE,
            ..Subscribe::default()
        };
        streams.push(
            client
                .echoed(request)
                .await
                .expect("subscribe")
                .into_inner(),
        );
    }
    let live = producer.rss().saturating_sub(before) as f64;
    println!(
        "  {LIVE} subscribers at the live end: {:.1} MiB ({:.0} bytes each); the producer with its ring: {:.1} MiB before",
        live / MIB,
        live / LIVE as f64,
        ring as f64 / MIB
    );
    drop(streams);
    drop(connections);

    // 1,000 subscribers from the oldest event, each reading all 10,000, then idle.
    const READERS: usize = 1_000;
    let connections = channels(producer.addr, 10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = producer.rss();
    let started = Instant::now();
    let mut readers = tokio::task::JoinSet::new();
    for i in 0..READERS {
        let mut client = EchoClient::new(connections[i % connections.len()].clone());
        readers.spawn(async move {
            let mut stream = client
                .echoed(Subscribe::default())
                .await
                .expect("subscribe")
                .into_inner();
            for _ in 0..RETAIN {
                stream.next().await.expect("an event").expect("no error");
            }
            stream
        });
    }
    let mut idle = Vec::with_capacity(READERS);
    while let Some(stream) = readers.join_next().await {
        idle.push(stream.expect("reader"));
    }
    let caught_up = producer.rss().saturating_sub(before) as f64;
    println!(
        "  {READERS} subscribers from the oldest, caught up ({:.1} s to read {} events): {:.1} MiB ({:.0} bytes each; 10,000 would be {:.1} MiB)",
        started.elapsed().as_secs_f64(),
        READERS * RETAIN,
        caught_up / MIB,
        caught_up / READERS as f64,
        caught_up * 10.0 / MIB
    );
    drop(idle);
    println!();
}

pub async fn groups_section(bench: &Bench) {
    const GROUPS: usize = 64;
    const MEMBERS: usize = 1024;
    const PUBLISHES: usize = 200_000;
    println!(
        "publish with {GROUPS} consumer groups of {MEMBERS} members whose windows are full, against none ({PUBLISHES} events of 64 B)"
    );
    let time_publishes = |publisher: &mesh::EchoPublisher| {
        let started = Instant::now();
        for _ in 0..PUBLISHES {
            publisher.publish_echoed(event()).expect("a small event");
        }
        started.elapsed().as_secs_f64() * 1e9 / PUBLISHES as f64
    };

    let alone = mesh::EchoPublisher::new();
    let none = time_publishes(&alone);

    let publisher = mesh::EchoPublisher::new();
    let addr = {
        let publisher = publisher.clone();
        bench
            .on_server(async move {
                start_echo(
                    Echo {
                        name: "groups",
                        delay: Duration::ZERO,
                        broken: false,
                    },
                    publisher,
                )
                .await
            })
            .await
    };
    let connections = channels(addr, GROUPS * MEMBERS / 512).await;
    let started = Instant::now();
    let mut members = Vec::with_capacity(GROUPS * MEMBERS);
    for group in 0..GROUPS {
        for member in 0..MEMBERS {
            let index = group * MEMBERS + member;
            let mut client = EchoClient::new(connections[index % connections.len()].clone());
            let request = Subscribe {
                group: format!("group-{group}"),
                member: format!("member-{member}"),
                max_unacknowledged: 1,
                start: START_LIVE,
                ..Subscribe::default()
            };
            members.push(client.echoed(request).await.expect("join").into_inner());
        }
    }
    let joined = started.elapsed();
    // One event per member fills every window.
    for _ in 0..MEMBERS {
        publisher.publish_echoed(event()).expect("a small event");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let full = time_publishes(&publisher);
    println!(
        "  no groups: {none:.0} ns per publish; {GROUPS} x {MEMBERS} members: {full:.0} ns ({:.2}x; {} members joined in {:.1} s)",
        full / none,
        GROUPS * MEMBERS,
        joined.as_secs_f64()
    );
    drop(members);
    // No lease timers left behind for 65,536 members: the sections after run on this core.
    publisher.as_publisher().close();
    println!();
}

/// The cost of a keyed `publish` whose key's owner has no room: the event is held for the
/// key's turn. Each group's members have windows of 1 and never acknowledge, so every event
/// of a new key is held; the row times the first batch of held keys and a later one, to show
/// whether the cost per publish grows with the keys already held.
pub async fn keyed_groups_section(bench: &Bench) {
    use crate::proto::mesh::testing::orders::v1::{
        orders_client::OrdersClient, Order, OrderChangedEvent, OrdersPublisher,
    };
    const BATCH: usize = 20_000;
    let rows: &[(usize, usize)] = if bench.quick {
        &[(1, 64), (16, 64)]
    } else {
        &[(1, 64), (16, 1024), (256, 1024)]
    };
    println!(
        "keyed publish with consumer groups whose members have no room (windows of 1, never acknowledged): ns per publish of {BATCH} held keys, the first batch and the fifth, against no groups"
    );
    let keyed_event = |key: usize| OrderChangedEvent {
        order: Some(Order {
            id: format!("order-{key}"),
        }),
        step: 0,
    };
    // A batch gives up after 20 s (a cost that grows with what is held would take hours),
    // and is timed over the events it published.
    let time_batch = |publisher: &OrdersPublisher, batch: usize| {
        let started = Instant::now();
        let mut published = 0;
        for key in batch * BATCH..(batch + 1) * BATCH {
            publisher
                .publish_order_changed(keyed_event(key))
                .expect("a small event");
            published += 1;
            if published % 16 == 0 && started.elapsed() > Duration::from_secs(20) {
                break;
            }
        }
        started.elapsed().as_secs_f64() * 1e9 / published as f64
    };
    let settings = || PublisherSettings::default().retain("OrderChanged", 6 * BATCH);
    let alone = OrdersPublisher::with_settings(settings());
    let none_first = time_batch(&alone, 0);
    for batch in 1..4 {
        time_batch(&alone, batch);
    }
    let none = time_batch(&alone, 4);
    println!("  no groups: first {none_first:.0} ns, fifth {none:.0} ns per publish");
    for &(groups, members) in rows {
        let publisher = OrdersPublisher::with_settings(settings());
        let addr = crate::keyed::serve(bench, &publisher).await;
        let connections = channels(addr, (groups * members / 512).max(1)).await;
        let started = Instant::now();
        let mut streams = Vec::with_capacity(groups * members);
        for group in 0..groups {
            for member in 0..members {
                let index = group * members + member;
                let mut client = OrdersClient::new(connections[index % connections.len()].clone());
                let request = meshless::v1::Subscribe {
                    group: format!("group-{group}"),
                    member: format!("member-{member}"),
                    max_unacknowledged: 1,
                    start: START_LIVE,
                    ..meshless::v1::Subscribe::default()
                };
                streams.push(
                    client
                        .order_changed(request)
                        .await
                        .expect("join")
                        .into_inner(),
                );
            }
        }
        let joined = started.elapsed();
        let first = time_batch(&publisher, 0);
        for batch in 1..4 {
            time_batch(&publisher, batch);
        }
        let fifth = time_batch(&publisher, 4);
        println!(
            "  {groups} x {members} members: first {first:.0} ns ({:.2}x), fifth {fifth:.0} ns ({:.2}x; {} members joined in {:.1} s)",
            first / none_first,
            fifth / none,
            groups * members,
            joined.as_secs_f64()
        );
        drop(streams);
        // No lease timers, nor held keys to hand out again, left behind on the servers' core
        // for the rows and sections after.
        publisher.as_publisher().close();
    }
    println!();
}
