//! `meshless tail`: every producer's events, in order per producer, as JSON lines.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::support::{event, eventually, meshless, Cluster, Proxy, Running, Serving, PATIENCE};

const ORDER_CHANGED: &str = "testing.orders.v1.Orders/OrderChanged";

fn lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect()
}

/// The events printed, per instance: (sequence, key, order id, step) in the order printed.
fn per_instance(events: &[Value]) -> BTreeMap<String, Vec<(u64, String, String, u64)>> {
    let mut seen: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for event in events {
        let step = match &event["event"]["step"] {
            // Protobuf's JSON: 64-bit integers as strings, zero left out.
            Value::String(step) => step.parse().expect("a number"),
            Value::Null => 0,
            other => panic!("step {other}"),
        };
        seen.entry(event["instance"].as_str().expect("instance").to_owned())
            .or_default()
            .push((
                event["sequence"].as_u64().expect("sequence"),
                event["key"].as_str().expect("key").to_owned(),
                event["event"]["order"]["id"]
                    .as_str()
                    .expect("order id")
                    .to_owned(),
                step,
            ));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_every_producers_events_in_order_and_stops_after_count() {
    let cluster = Cluster::start(
        "tail",
        2,
        Serving {
            reflection: true,
            ..Serving::default()
        },
    )
    .await;
    // 4 events on the first producer, 3 on the second, orders interleaved.
    let mut expected = BTreeMap::new();
    for (running, count) in cluster.instances.iter().zip([4u64, 3]) {
        let mut published = Vec::new();
        for step in 0..count {
            let order = format!("{}-o{}", running.name, step % 2);
            let cursor = running
                .publisher
                .publish_order_changed(event(&order, step))
                .expect("publish");
            published.push((cursor.sequence, order.clone(), order, step));
        }
        expected.insert(running.addr.to_string(), published);
    }

    let ran = meshless(&[
        "tail",
        &cluster.target,
        ORDER_CHANGED,
        "--from",
        "oldest",
        "--count",
        "7",
    ])
    .await;
    let events = lines(ran.ok());
    assert_eq!(events.len(), 7, "{}", ran.stdout);
    assert_eq!(
        per_instance(&events),
        expected,
        "in order per producer, each once"
    );
    // The keys in fixed order, as the README shows them.
    assert!(
        ran.stdout
            .lines()
            .all(|line| line.starts_with(r#"{"instance":""#)),
        "{}",
        ran.stdout
    );
    println!(
        "$ meshless tail {} {ORDER_CHANGED} --from oldest --count 7\n{}",
        cluster.target, ran.stdout
    );

    // --from live: only what is published after the subscription.
    let tail = tokio::spawn({
        let target = cluster.target.clone();
        async move {
            meshless(&[
                "tail",
                &target,
                ORDER_CHANGED,
                "--from",
                "live",
                "--count",
                "1",
            ])
            .await
        }
    });
    let first = &cluster.instances[0];
    let live = crate::support::eventually("the live tail prints an event", || {
        let _ = first.publisher.publish_order_changed(event("live", 99));
        let done = tail.is_finished();
        async move { done.then_some(()) }
    });
    live.await;
    let ran = tail.await.expect("the tail task");
    let events = lines(ran.ok());
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event"]["order"]["id"], "live", "{}", ran.stdout);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_in_a_group_acknowledges_what_it_printed() {
    let cluster = Cluster::start(
        "grouptail",
        2,
        Serving {
            reflection: true,
            ..Serving::default()
        },
    )
    .await;
    for running in &cluster.instances {
        for step in 0..3 {
            running
                .publisher
                .publish_order_logged(event(&running.name, step))
                .expect("publish");
        }
    }
    let logged = "testing.orders.v1.Orders/OrderLogged";
    let ran = meshless(&[
        "tail",
        &cluster.target,
        logged,
        "--group",
        "audit",
        "--count",
        "6",
    ])
    .await;
    let events = lines(ran.ok());
    assert_eq!(events.len(), 6);
    assert!(
        events.iter().all(|e| e["delivery_count"] == 1),
        "{}",
        ran.stdout
    );

    // The group acknowledged all six and left: the next member gets only what comes next.
    let next = cluster.instances[1]
        .publisher
        .publish_order_logged(event("next", 7))
        .expect("publish");
    let ran = meshless(&[
        "tail",
        &cluster.target,
        logged,
        "--group",
        "audit",
        "--count",
        "1",
    ])
    .await;
    let events = lines(ran.ok());
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["instance"], cluster.instances[1].addr.to_string());
    assert_eq!(events[0]["sequence"], next.sequence, "{}", ran.stdout);
    assert_eq!(events[0]["event"]["order"]["id"], "next");
    cluster.stop().await;
}

/// One producer (named `name`) with 3 events of `OrderLogged`, and `meshless tail --group
/// <group>` on it, with its stdout read line by line.
async fn tailing_in_a_group(
    name: &str,
    group: &str,
) -> (
    Cluster,
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) {
    use std::process::Stdio;
    use tokio::io::{AsyncBufReadExt, BufReader};

    let cluster = Cluster::start(
        name,
        1,
        Serving {
            reflection: true,
            admin: true,
            ..Serving::default()
        },
    )
    .await;
    for step in 0..3 {
        cluster.instances[0]
            .publisher
            .publish_order_logged(event("o", step))
            .expect("publish");
    }
    let logged = "testing.orders.v1.Orders/OrderLogged";
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshless"))
        .args(["tail", &cluster.target, logged, "--group", group])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("meshless starts");
    let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    (cluster, child, stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_tail_cleanly_and_it_leaves_its_group() {
    let (cluster, mut child, mut stdout) = tailing_in_a_group("interrupted", "ops").await;
    let producer = &cluster.instances[0];
    let logged = "testing.orders.v1.Orders/OrderLogged";
    for sequence in 1..=3u64 {
        let line = tokio::time::timeout(crate::support::PATIENCE, stdout.next_line())
            .await
            .expect("an event within the patience")
            .expect("stdout")
            .expect("a line");
        let event: Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(event["sequence"], sequence, "{line}");
    }
    let pid = child.id().expect("running").to_string();
    let signalled = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill -INT");
    assert!(signalled.success());
    let status = tokio::time::timeout(crate::support::PATIENCE, child.wait())
        .await
        .expect("meshless stops on Ctrl-C")
        .expect("its exit status");
    assert_eq!(status.code(), Some(0));

    // It left the group on its way out, having acknowledged the three.
    let group = logged_group(producer, "ops").await.expect("the group");
    assert!(group.members.is_empty(), "{group:?}");
    assert_eq!((group.acknowledged_through, group.lag), (3, 0), "{group:?}");

    // The group's next member gets the next event.
    let next = producer
        .publisher
        .publish_order_logged(event("next", 3))
        .expect("publish");
    let ran = meshless(&[
        "tail",
        &cluster.target,
        logged,
        "--group",
        "ops",
        "--count",
        "1",
    ])
    .await;
    let events = lines(ran.ok());
    assert_eq!(events[0]["sequence"], next.sequence, "{}", ran.stdout);
    cluster.stop().await;
}

/// Group `name` of OrderLogged, as `running`'s admin service reports it.
async fn logged_group(running: &Running, name: &str) -> Option<meshless::admin::v1::GroupStatus> {
    let admin = meshless::admin::v1::AdminClient::new(
        meshless::Channel::connect(&running.target())
            .await
            .expect("channel"),
    );
    let status = admin
        .get_status(meshless::admin::v1::GetStatusRequest {})
        .await
        .expect("GetStatus")
        .into_inner();
    let rpc = status
        .event_rpcs
        .iter()
        .find(|rpc| rpc.rpc == "/testing.orders.v1.Orders/OrderLogged")
        .expect("the event RPC");
    rpc.groups.iter().find(|g| g.name == name).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_stops_tail_cleanly_and_it_leaves_its_group() {
    use tokio::io::AsyncReadExt;

    let (cluster, mut child, mut stdout) = tailing_in_a_group("piped", "pipe").await;
    let producer = &cluster.instances[0];
    let line = tokio::time::timeout(PATIENCE, stdout.next_line())
        .await
        .expect("an event within the patience")
        .expect("stdout")
        .expect("a line");
    let first: Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(first["sequence"], 1, "{line}");
    // The reader has all it wants, as `| head -1` would: it closes its end.
    drop(stdout);

    // tail finds out at its next line: there is one as long as it runs.
    let status = eventually("meshless stops once stdout is closed", || {
        let _ = producer.publisher.publish_order_logged(event("more", 9));
        let exited = child.try_wait().expect("its exit status");
        async move { exited }
    })
    .await;
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .await
        .expect("stderr");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, "", "nothing went wrong");

    // It left the group on its way out.
    let group = logged_group(producer, "pipe").await.expect("the group");
    assert!(group.members.is_empty(), "{group:?}");
    assert!(group.acknowledged_through >= 1, "{group:?}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_leaves_the_group_on_every_producer_at_once() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

    let serving = Serving {
        reflection: true,
        admin: true,
        ..Serving::default()
    };
    let producers = [
        Running::orders("hanging-1", serving).await,
        Running::orders("hanging-2", serving).await,
    ];
    // tail reaches each producer through a proxy, which stops passing anything when frozen.
    let proxies = [
        Proxy::to(producers[0].addr).await,
        Proxy::to(producers[1].addr).await,
    ];
    for producer in &producers {
        producer
            .publisher
            .publish_order_logged(event(&producer.name, 0))
            .expect("publish");
    }
    let target = format!("ipv4:{},{}", proxies[0].addr, proxies[1].addr);
    let logged = "testing.orders.v1.Orders/OrderLogged";
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshless"))
        .args([
            "tail",
            &target,
            logged,
            "--group",
            "hung",
            "--timeout",
            "3s",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("meshless starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    for _ in 0..2 {
        tokio::time::timeout(PATIENCE, stdout.next_line())
            .await
            .expect("an event within the patience")
            .expect("stdout")
            .expect("a line");
    }
    // Both acknowledged, so that nothing is in flight when the producers stop answering.
    for producer in &producers {
        eventually("tail acknowledged the event it printed", || async move {
            logged_group(producer, "hung")
                .await
                .filter(|group| group.acknowledged_through == 1)
        })
        .await;
    }
    for proxy in &proxies {
        proxy.freeze();
    }

    let started = Instant::now();
    let pid = child.id().expect("running").to_string();
    let signalled = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill -INT");
    assert!(signalled.success());
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("meshless stops on Ctrl-C")
        .expect("its exit status");
    let took = started.elapsed();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .await
        .expect("stderr");
    assert_eq!(status.code(), Some(0), "{stderr}");
    // Each leave waits for its --timeout (3 s): one after the other they would take 6 s.
    assert!(
        took < Duration::from_millis(4500),
        "stopping took {took:?}: {stderr}"
    );
    for proxy in &proxies {
        assert!(
            stderr.contains(&format!("meshless: {}: leaving the group", proxy.addr)),
            "{stderr}"
        );
    }
    drop(proxies);
    for producer in producers {
        producer.stop().await;
    }
}
