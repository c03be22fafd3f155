//! `meshless call`: JSON in, a unary call through a balanced channel, JSON out.

use crate::support::{meshless, orders, Cluster, Running, Serving};

const CHANGE: &str = "testing.orders.v1.Orders/Change";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_with_json_in_and_out_through_reflection() {
    let cluster = Cluster::start(
        "call",
        2,
        Serving {
            reflection: true,
            ..Serving::default()
        },
    )
    .await;
    let ran = meshless(&[
        "call",
        &cluster.target,
        CHANGE,
        r#"{"order": {"id": "o-7"}, "step": 3}"#,
    ])
    .await;
    let reply: serde_json::Value = serde_json::from_str(ran.ok()).expect("JSON on stdout");
    let served_by = reply["servedBy"].as_str().expect("servedBy");
    assert!(
        served_by == "call-1 took o-7" || served_by == "call-2 took o-7",
        "{reply}"
    );
    println!(
        "$ meshless call {} {CHANGE} '{{\"order\": {{\"id\": \"o-7\"}}, \"step\": 3}}'\n{}",
        cluster.target, ran.stdout
    );

    // A method that does not exist: the service's methods are listed.
    let ran = meshless(&[
        "call",
        &cluster.target,
        "testing.orders.v1.Orders/Cancel",
        "{}",
    ])
    .await;
    assert_eq!(
        ran.failed(1).trim(),
        "error: `testing.orders.v1.Orders` has no method `Cancel`; its methods: Change, OrderChanged, OrderLogged, OrderState"
    );
    // A service that does not exist: what the server serves is listed.
    let ran = meshless(&["call", &cluster.target, "shop.v1.Carts/Add", "{}"]).await;
    assert_eq!(
        ran.failed(1).trim(),
        format!(
            "error: {} does not serve `shop.v1.Carts`; it serves testing.orders.v1.Orders",
            cluster.target
        )
    );
    // An event RPC is not for `call`.
    let ran = meshless(&[
        "call",
        &cluster.target,
        "testing.orders.v1.Orders/OrderLogged",
        "{}",
    ])
    .await;
    assert!(ran.failed(1).contains("use `meshless tail`"), "{ran:#?}");
    // Bad JSON, with serde's message.
    let ran = meshless(&["call", &cluster.target, CHANGE, r#"{"order": {"id": 7}}"#]).await;
    let stderr = ran.failed(1);
    assert!(
        stderr.starts_with("error: the request is not a testing.orders.v1.ChangeRequest in JSON: "),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 1 column"),
        "serde's position: {stderr}"
    );
    let ran = meshless(&["call", &cluster.target, CHANGE, r#"{"order": "#]).await;
    assert!(ran.failed(1).contains("EOF while parsing"), "{ran:#?}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_prints_its_status_and_a_descriptor_set_replaces_reflection() {
    // No reflection: the descriptors come from a file, as protoc writes it.
    let broken = Running::orders(
        "broken",
        Serving {
            broken: true,
            ..Serving::default()
        },
    )
    .await;
    let set = std::env::temp_dir().join(format!("meshless-cli-call-{}.bin", std::process::id()));
    std::fs::write(&set, orders::FILE_DESCRIPTOR_SET).expect("write the descriptor set");
    let set_arg = set.display().to_string();
    let target = broken.target();

    let ran = meshless(&[
        "call",
        &target,
        CHANGE,
        r#"{"order": {"id": "o-1"}}"#,
        "--descriptor-set",
        &set_arg,
    ])
    .await;
    assert_eq!(ran.failed(1).trim(), "error: UNAVAILABLE: broken is broken");
    assert_eq!(ran.stdout, "");

    let ran = meshless(&["call", &target, CHANGE, "{}"]).await;
    assert_eq!(
        ran.failed(1).trim(),
        format!(
            "error: {target} does not serve gRPC reflection (grpc.reflection.v1.ServerReflection): \
             enable Server::reflection(true) or pass --descriptor-set"
        )
    );
    let _ = std::fs::remove_file(&set);
    broken.stop().await;
}
