//! A producer process whose events live in Postgres (the `interop-server` example with
//! `--postgres`), killed with SIGKILL in the middle of a burst of transactions, again and
//! again. Each replacement starts under the same stream name with nothing of its own: no data
//! directory, no memory of the killed one. An observer that stays subscribed handles every
//! committed event once, in commit order, without a gap; a consumer group's member handles
//! every one too, and one it handles again is marked as a redelivery.

use std::ffi::OsStr;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use meshless::Channel;
use support::{request, EchoClient, ProducerProcess};

use super::groups::Member;
use super::*;

/// What the burst's calls came to: answered (their transaction committed) or failed (it may
/// have committed before the answer was lost).
#[derive(Default)]
struct Calls {
    committed: Vec<String>,
    unsure: Vec<String>,
}

fn burst(
    client: &EchoClient,
    cycle: usize,
    calls: &Arc<Mutex<Calls>>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..8)
        .map(|task| {
            let (client, calls, stop) = (client.clone(), calls.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let message = format!("c{cycle}-t{task}-{n}");
                    n += 1;
                    let mut call = meshless::Request::new(request(&message));
                    call.set_timeout(Duration::from_secs(2));
                    if client.unary(call).await.is_ok() {
                        calls.lock().unwrap().committed.push(message);
                    } else {
                        calls.lock().unwrap().unsure.push(message);
                        // The producer is down: wait for its replacement.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            })
        })
        .collect()
}

impl Collector {
    /// Waits until every one of `messages` was handled, failing the test after [`PATIENCE`].
    async fn until_all(&self, messages: &[String]) {
        until_all_handled(&self.changed, || self.messages(), messages).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_killed_mid_burst_is_replaced_under_its_name_losing_nothing() {
    const CYCLES: usize = 3;
    let Some(cluster) =
        Cluster::start("a_producer_killed_mid_burst_is_replaced_under_its_name_losing_nothing")
    else {
        return;
    };
    let url = cluster.url();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port();
    let start = || {
        let listen = format!("127.0.0.1:{port}");
        let args: [&OsStr; 3] = ["--postgres".as_ref(), url.as_ref(), "orders-0".as_ref()];
        // Returns once it serves: after it opened the stream.
        tokio::task::block_in_place(|| ProducerProcess::start_with(&listen, &args))
    };
    within(async {
        let mut producer = start();
        let target = format!("ipv4:127.0.0.1:{port}");
        let observer = Collector::default();
        let handle = observer.observe(&target).await;
        let member = Member::default();
        let member_handle = member.join(&target, "billing").await;
        let channel = Channel::builder()
            .attempts(1)
            .wait_timeout(Duration::from_secs(2))
            .connect(&target)
            .await
            .unwrap();
        let client = EchoClient::new(channel);
        let calls = Arc::new(Mutex::new(Calls::default()));
        let mut takeovers = Vec::new();

        for cycle in 0..CYCLES {
            let stop = Arc::new(AtomicBool::new(false));
            let tasks = burst(&client, cycle, &calls, &stop);
            // Killed mid-burst, transactions in flight.
            let goal = calls.lock().unwrap().committed.len() + 50;
            support::eventually("50 more transactions committed", || {
                calls.lock().unwrap().committed.len() >= goal
            })
            .await;
            let killed = Instant::now();
            producer.kill();
            producer = start();
            takeovers.push(killed.elapsed());
            stop.store(true, Ordering::Relaxed);
            for task in tasks {
                tokio::time::timeout(PATIENCE, task)
                    .await
                    .expect("the burst's tasks end")
                    .unwrap();
            }
        }
        // One more after the last replacement: once it is handled, so is everything before.
        let last = "last".to_owned();
        tokio::time::timeout(PATIENCE, async {
            while client.unary(request(&last)).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the replacement takes calls");
        let Calls { committed, unsure } = std::mem::take(&mut *calls.lock().unwrap());
        observer.until_all(&committed).await;
        observer.until_all(std::slice::from_ref(&last)).await;
        member.until_all(&committed).await;
        member.until_all(std::slice::from_ref(&last)).await;
        handle.stop().await;
        member_handle.stop().await;
        drop(producer);

        let seen = observer.seen();
        let messages: Vec<&str> = seen.iter().map(|(_, _, m)| m.as_str()).collect();
        let once: HashSet<&str> = messages.iter().copied().collect();
        assert_eq!(once.len(), messages.len(), "each event handled once");
        let may_have_committed: HashSet<&str> = committed
            .iter()
            .chain(&unsure)
            .map(String::as_str)
            .chain(["last"])
            .collect();
        let never_sent: Vec<_> = messages
            .iter()
            .filter(|m| !may_have_committed.contains(*m))
            .collect();
        assert!(
            never_sent.is_empty(),
            "handled but never sent: {never_sent:?}"
        );
        assert_eq!(
            seen.iter()
                .map(|(e, _, _)| *e)
                .collect::<BTreeSet<_>>()
                .len(),
            1,
            "one epoch: the stream's, across every replacement"
        );
        assert_eq!(
            seen.iter().map(|(_, s, _)| *s).collect::<Vec<_>>(),
            (1..=seen.len() as u64).collect::<Vec<_>>(),
            "in order, every sequence once"
        );
        assert_eq!(observer.gaps.load(Ordering::Relaxed), 0, "no gap");
        let mut by_message: std::collections::HashMap<&str, Vec<u32>> = Default::default();
        let in_group = member.seen.lock().unwrap().clone();
        for (message, _, deliveries) in &in_group {
            by_message.entry(message).or_default().push(*deliveries);
        }
        let unmarked: Vec<_> = by_message
            .iter()
            .filter(|(_, deliveries)| deliveries[1..].iter().any(|count| *count < 2))
            .collect();
        assert!(
            unmarked.is_empty(),
            "handled again without the mark: {unmarked:?}"
        );
        let again = by_message.values().filter(|d| d.len() > 1).count();
        eprintln!(
            "the group member handled {} events, {again} of them again (marked)",
            by_message.len()
        );
        eprintln!(
            "{} transactions committed over {CYCLES} SIGKILLs ({} calls unsure), {} events \
             handled, each once; from SIGKILL to the replacement serving: {takeovers:?}",
            committed.len(),
            unsure.len(),
            seen.len()
        );
    })
    .await;
}

/// A name whose producer crashed and never comes back (a StatefulSet scaled down after the
/// crash): one instance started under that name, once, serves what the name still owes, and
/// on SIGTERM drains, waiting until the consumer group acknowledged everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_never_comes_back_is_drained_by_a_one_off_instance() {
    const EVENTS: usize = 50;
    let Some(cluster) =
        Cluster::start("a_name_that_never_comes_back_is_drained_by_a_one_off_instance")
    else {
        return;
    };
    let url = cluster.url();
    let start = |listen: &str| {
        let args: [&OsStr; 3] = ["--postgres".as_ref(), url.as_ref(), "orders-9".as_ref()];
        tokio::task::block_in_place(|| ProducerProcess::start_with(listen, &args))
    };
    within(async {
        let pool = cluster.pool(2).await;
        let mut crashed = start("127.0.0.1:0");
        let target = format!("ipv4:{}", crashed.addr);
        // The group exists (in the table), its member away, when events are published; then
        // the producer is killed with them all owed to the group.
        let member = Member::default();
        let away = member.join(&target, "billing").await;
        let known = tokio::time::timeout(PATIENCE, async {
            loop {
                let groups: i64 = sqlx::query_scalar("SELECT count(*) FROM meshless.groups")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                if groups == 1 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(known.is_ok(), "the group is in the table");
        away.stop().await;
        let client = EchoClient::new(Channel::builder().connect(&target).await.unwrap());
        let messages: Vec<String> = (0..EVENTS).map(|n| format!("owed-{n}")).collect();
        for message in &messages {
            client.unary(request(message)).await.unwrap();
        }
        crashed.kill();

        // The one-off instance, elsewhere (another port), reachable by the group's member.
        // The member would start a new group at the live edge: it is the group kept in the
        // table that is owed the events.
        let mut one_off = start("127.0.0.1:0");
        let handle = member
            .join_from(
                &format!("ipv4:{}", one_off.addr),
                "billing",
                meshless::v1::StartPosition::Live,
            )
            .await;
        member.until_all(&messages).await;
        // SIGTERM: it drains, waiting for the group, and exits successfully.
        tokio::task::block_in_place(|| one_off.terminate());
        handle.stop().await;

        let (start, acked): (i64, Vec<i64>) =
            sqlx::query_as("SELECT start, acked FROM meshless.groups WHERE name = 'billing'")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(
            (start, acked),
            (EVENTS as i64 + 1, Vec::new()),
            "the group acknowledged every event of the name"
        );
        let handled: HashSet<String> = member
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|(m, _, _)| m.clone())
            .collect();
        assert_eq!(handled.len(), EVENTS);
    })
    .await;
}

/// Two producer processes configured with the same name: the second waits while the first
/// serves (`open_postgres` refuses it; the example tries again), and serves the name, on the
/// same address, once the first is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_the_same_name_waits_until_the_first_is_gone() {
    let Some(cluster) =
        Cluster::start("a_second_process_with_the_same_name_waits_until_the_first_is_gone")
    else {
        return;
    };
    let url = cluster.url();
    let args: [&OsStr; 3] = ["--postgres".as_ref(), url.as_ref(), "orders-0".as_ref()];
    within(async {
        let mut first =
            tokio::task::block_in_place(|| ProducerProcess::start_with("127.0.0.1:0", &args));
        let listen = first.addr.to_string();
        let target = format!("ipv4:{listen}");
        let observer = Collector::default();
        let handle = observer.observe(&target).await;
        let client = EchoClient::new(Channel::builder().connect(&target).await.unwrap());

        let second = ProducerProcess::spawn_with(&listen, &args);
        let said = tokio::task::block_in_place(|| second.next_line());
        assert_eq!(
            said.as_deref(),
            Some("waiting: another instance serves the stream orders-0"),
            "the second is refused the name while the first holds it"
        );
        for n in 0..10 {
            client.unary(request(&format!("first-{n}"))).await.unwrap();
        }
        observer.until_count(10).await;

        first.kill();
        let mut second = tokio::task::block_in_place(|| second.serving());
        assert_eq!(second.addr, first.addr, "the same address");
        tokio::time::timeout(PATIENCE, async {
            while client.unary(request("second")).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the second takes calls");
        observer.until_count(11).await;
        let seen = observer.seen();
        assert_eq!(seen[10].2, "second");
        assert_eq!(
            seen.iter().map(|(_, s, _)| *s).collect::<Vec<_>>(),
            (1..=11).collect::<Vec<_>>(),
            "the second continues the first's sequences"
        );
        assert_eq!(observer.gaps.load(Ordering::Relaxed), 0);
        handle.stop().await;
        tokio::task::block_in_place(|| second.terminate());
    })
    .await;
}
