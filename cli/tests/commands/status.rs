//! `meshless status`: three producers, a consumer group of two whose lag is known on each, and
//! a channel of this process with an ejected instance; the JSON and the tables say so exactly.

use std::time::Duration;

use meshless::admin::v1::{AdminClient, GetStatusRequest};
use meshless::events::{Event, HandlerError, ObserverHandle, ObserverOptions};
use meshless::{Channel, Code};
use serde_json::Value;

use crate::support::{
    eventually, meshless, orders, ChangeRequest, Cluster, Order, OrderChangedEvent, OrdersClient,
    Running, Serving,
};

const LOGGED: &str = "/testing.orders.v1.Orders/OrderLogged";
/// Events each producer publishes, and how many of them the group acknowledges.
const PUBLISHED: [u64; 3] = [5, 6, 7];
const HANDLED: u64 = 2;

/// Handles the first events of each producer (steps below [`HANDLED`]) and never returns
/// from the others: the group's lag on each producer is known.
struct Blocking;

impl orders::OrderLoggedObserver for Blocking {
    async fn order_logged(&self, event: Event<OrderChangedEvent>) -> Result<(), HandlerError> {
        if event.step >= HANDLED {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

async fn member(target: &str) -> ObserverHandle {
    orders::OrdersObserver::new()
        .order_logged(Blocking)
        .options(ObserverOptions::default().consumer_group("billing"))
        .start(target)
        .await
        .expect("a group member")
}

/// A channel of this process to two instances, one always `UNAVAILABLE`, which ejects it for
/// ten minutes.
async fn ejecting_channel(healthy: &Running, broken: &Running) -> (Channel, String) {
    let target = format!("ipv4:{},{}", healthy.addr, broken.addr);
    let channel = Channel::builder()
        .attempts(1)
        .ejection(Duration::from_secs(600), Duration::from_secs(600))
        .connect(&target)
        .await
        .expect("channel");
    eventually("both instances ready", || {
        let ready = channel.ready_instances() == 2;
        async move { ready.then_some(()) }
    })
    .await;
    let client = OrdersClient::new(channel.clone());
    // Calls about one order go to one instance: orders go one after another until one lands
    // on the broken instance, which then gets that order's calls until it is ejected.
    let mut order = 0;
    let mut calls = 0;
    while channel.ready_instances() == 2 {
        let request = ChangeRequest {
            order: Some(Order {
                id: order.to_string(),
            }),
            step: 0,
        };
        match client.change(request).await {
            Ok(_) => order += 1,
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        }
        calls += 1;
        assert!(calls < 1_000, "the broken instance was never ejected");
    }
    (channel, target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_instances_group_lag_per_producer_and_the_ejected_instance() {
    let cluster = Cluster::start(
        "orders",
        3,
        Serving {
            admin: true,
            reflection: true,
            ..Serving::default()
        },
    )
    .await;
    // Each producer's epoch, as its publisher told it.
    let mut epochs = Vec::new();
    for (running, published) in cluster.instances.iter().zip(PUBLISHED) {
        let mut epoch = 0;
        for step in 0..published {
            epoch = running
                .publisher
                .publish_order_logged(crate::support::event(&running.name, step))
                .expect("publish")
                .epoch;
        }
        epochs.push(epoch);
    }
    let members = [member(&cluster.target).await, member(&cluster.target).await];

    let healthy = Running::orders("downstream-1", Serving::default()).await;
    let broken = Running::orders(
        "downstream-2",
        Serving {
            broken: true,
            ..Serving::default()
        },
    )
    .await;
    let (channel, downstream) = ejecting_channel(&healthy, &broken).await;

    // The group's acknowledgements reach every producer.
    for (running, published) in cluster.instances.iter().zip(PUBLISHED) {
        let admin = AdminClient::new(Channel::connect(&running.target()).await.expect("channel"));
        eventually("the group acknowledged what it handled", || {
            let admin = admin.clone();
            async move {
                let status = admin
                    .get_status(GetStatusRequest {})
                    .await
                    .ok()?
                    .into_inner();
                let rpc = status.event_rpcs.iter().find(|rpc| rpc.rpc == LOGGED)?;
                let group = rpc.groups.iter().find(|group| group.name == "billing")?;
                (group.members.len() == 2 && group.lag == published - HANDLED).then_some(())
            }
        })
        .await;
    }

    let ran = meshless(&["status", &cluster.target, "--json"]).await;
    let report: Value = serde_json::from_str(ran.ok()).expect("JSON");
    let addresses: Vec<String> = cluster
        .instances
        .iter()
        .map(|r| r.addr.to_string())
        .collect();
    let reported: Vec<&str> = report["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|instance| instance["address"].as_str().expect("address"))
        .collect();
    assert_eq!(reported, addresses, "exactly the three instances, sorted");
    for (instance, epoch) in report["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .zip(&epochs)
    {
        let status = &instance["status"];
        assert_eq!(status["listen_address"], instance["address"]);
        // The epoch as a string of its digits: random 64-bit numbers, which a JSON number
        // would not carry whole to jq or JavaScript.
        let rpc = status["event_rpcs"]
            .as_array()
            .expect("event_rpcs")
            .iter()
            .find(|rpc| rpc["rpc"] == LOGGED)
            .expect("the event RPC");
        assert_eq!(rpc["epoch"], Value::String(epoch.to_string()), "{rpc}");
        assert_eq!(status["process_id"], std::process::id());
        assert!(status["services"]
            .as_array()
            .expect("services")
            .contains(&Value::from("testing.orders.v1.Orders")));
    }
    let groups: Vec<(String, String, String, u64, u64)> = report["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|group| {
            (
                group["rpc"].as_str().expect("rpc").to_owned(),
                group["group"].as_str().expect("group").to_owned(),
                group["producer"].as_str().expect("producer").to_owned(),
                group["members"].as_u64().expect("members"),
                group["lag"].as_u64().expect("lag"),
            )
        })
        .collect();
    let expected: Vec<_> = addresses
        .iter()
        .zip(PUBLISHED)
        .map(|(addr, published)| {
            (
                LOGGED.to_owned(),
                "billing".to_owned(),
                addr.clone(),
                2,
                published - HANDLED,
            )
        })
        .collect();
    assert_eq!(groups, expected, "the lag of the group on each producer");

    let ejected = report["ejected"].as_array().expect("ejected");
    assert_eq!(
        ejected.len(),
        1,
        "one ejected instance, listed once: {ejected:#?}"
    );
    let ejected = &ejected[0];
    assert_eq!(ejected["instance"], broken.addr.to_string());
    assert_eq!(ejected["target"], downstream);
    assert_eq!(ejected["process"]["process_id"], std::process::id());
    assert_eq!(ejected["process"]["servers"], serde_json::json!(addresses));
    let ejected_for = ejected["ejected_for_ms"].as_u64().expect("ejected_for_ms");
    assert!(
        ejected_for > 500_000 && ejected_for <= 600_000,
        "{ejected_for}"
    );
    let because = ejected["because"].as_str().expect("because");
    assert!(!because.is_empty(), "why it was ejected");
    assert_eq!(report["errors"], serde_json::json!([]));

    // The tables say the same.
    let ran = meshless(&["status", &cluster.target]).await;
    let text = ran.ok();
    println!("$ meshless status {}\n{text}", cluster.target);
    let section = |title: &str| -> Vec<Vec<String>> {
        let mut lines = text.lines().skip_while(|line| *line != title).skip(1);
        let _header = lines.next();
        lines
            .take_while(|line| !line.is_empty())
            .map(|line| line.split_whitespace().map(str::to_owned).collect())
            .collect()
    };
    let instances = section("INSTANCES");
    assert_eq!(
        instances
            .iter()
            .map(|row| row[0].clone())
            .collect::<Vec<_>>(),
        addresses
    );
    for row in &instances {
        assert_eq!(row[2], "testing.orders.v1.Orders", "{row:?}");
        assert_eq!(row[3], "3", "three event RPCs: {row:?}");
    }
    // The table writes epochs in hex.
    let rpcs = section("EVENT RPCS");
    for (addr, epoch) in addresses.iter().zip(&epochs) {
        let row = rpcs
            .iter()
            .find(|row| row[0] == *addr && row[1] == LOGGED)
            .unwrap_or_else(|| panic!("{addr} {LOGGED} in {text}"));
        assert_eq!(row[2], format!("{epoch:016x}"), "{row:?}");
    }
    let groups = section("GROUPS");
    assert_eq!(groups.len(), 3, "{text}");
    for ((row, addr), published) in groups.iter().zip(&addresses).zip(PUBLISHED) {
        let lag = (published - HANDLED).to_string();
        assert_eq!(
            row[..7],
            [
                LOGGED,
                "billing",
                addr.as_str(),
                "2",
                lag.as_str(),
                "0",
                lag.as_str()
            ],
            "{row:?}"
        );
    }
    let ejected = section("EJECTED");
    assert_eq!(ejected.len(), 1, "{text}");
    assert_eq!(ejected[0][0], broken.addr.to_string());
    assert_eq!(ejected[0][1], downstream);
    assert!(
        ejected[0][2].ends_with(&format!(":{}", std::process::id())),
        "{:?}",
        ejected[0]
    );
    assert!(text.contains(because), "why, in the table too: {text}");
    assert!(!text.contains("ERRORS"), "{text}");

    drop(members);
    drop(channel);
    healthy.stop().await;
    broken.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_redraws_in_place_until_ctrl_c() {
    use std::process::Stdio;
    use tokio::io::AsyncReadExt;

    let running = Running::orders(
        "watched",
        Serving {
            admin: true,
            ..Serving::default()
        },
    )
    .await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshless"))
        .args([
            "status",
            &running.target(),
            "--watch",
            "--interval",
            "100ms",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("meshless starts");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut seen = String::new();
    tokio::time::timeout(crate::support::PATIENCE, async {
        let mut buffer = [0u8; 4096];
        while seen.matches("\x1b[H\x1b[2J").count() < 3 {
            let read = stdout.read(&mut buffer).await.expect("stdout");
            assert!(read > 0, "meshless stopped: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buffer[..read]));
        }
    })
    .await
    .expect("three reports within the patience");
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
    // The first report drawn whole: between the first two clears.
    let report = seen.split("\x1b[H\x1b[2J").nth(1).expect("a report");
    assert!(report.contains(&running.addr.to_string()), "{seen}");
    assert!(report.contains("every 100ms; Ctrl-C to stop"), "{seen}");
    running.stop().await;
}
