//! Clear errors, exit code 1: nothing to talk to, or an instance without what the command
//! needs.

use crate::support::{meshless, Running, Serving, ZONE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_resolves_to_nothing() {
    let dns = meshless::testing::TestDns::start(ZONE)
        .await
        .expect("the DNS server");
    let target = dns.srv_target(&format!("nobody.{ZONE}"));
    for args in [
        vec!["status", target.as_str()],
        vec![
            "tail",
            target.as_str(),
            "testing.orders.v1.Orders/OrderLogged",
        ],
    ] {
        let ran = meshless(&args).await;
        let stderr = ran.failed(1);
        assert!(
            stderr.starts_with(&format!("error: {target} resolved to no instance: ")),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("NXDOMAIN"), "{stderr}");
    }
    let ran = meshless(&["call", &target, "testing.orders.v1.Orders/Change", "{}"]).await;
    assert!(
        ran.failed(1)
            .starts_with(&format!("error: {target} resolved to no instance: ")),
        "{ran:#?}"
    );
    dns.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_without_admin_or_reflection() {
    let plain = Running::orders("plain", Serving::default()).await;
    let target = plain.target();
    let ran = meshless(&["status", &target]).await;
    assert_eq!(
        ran.failed(1).trim(),
        format!(
            "error: {} does not serve meshless.admin.v1.Admin: enable it with Server::admin(true)",
            plain.addr
        )
    );
    let ran = meshless(&["tail", &target, "testing.orders.v1.Orders/OrderLogged"]).await;
    assert_eq!(
        ran.failed(1).trim(),
        format!(
            "error: {} does not serve gRPC reflection (grpc.reflection.v1.ServerReflection): \
             enable Server::reflection(true) or pass --descriptor-set",
            plain.addr
        )
    );
    plain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_service_behind_a_layer_takes_a_header() {
    fn bearer(request: meshless::Request<()>) -> Result<meshless::Request<()>, meshless::Status> {
        match request.metadata().get("authorization").map(|v| v.to_str()) {
            Some(Ok("Bearer ops")) => Ok(request),
            _ => Err(meshless::Status::unauthenticated(
                "a valid bearer token is required",
            )),
        }
    }
    let guarded = Running::orders_on(
        "guarded",
        Serving {
            admin: true,
            ..Serving::default()
        },
        meshless::Server::builder().layer(meshless::server::InterceptorLayer::new(bearer)),
    )
    .await;
    let target = guarded.target();
    let ran = meshless(&["status", &target]).await;
    assert_eq!(
        ran.failed(1).trim(),
        format!(
            "error: {}: UNAUTHENTICATED: a valid bearer token is required",
            guarded.addr
        )
    );
    let ran = meshless(&["status", &target, "--header", "authorization: Bearer ops"]).await;
    assert!(ran.ok().contains("testing.orders.v1.Orders"), "{ran:#?}");
    guarded.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_server_that_never_answers_is_given_up_on_after_the_timeout() {
    // Takes queries and answers none.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let target = format!(
        "dns+srv://{}/orders.{ZONE}",
        silent.local_addr().expect("local address")
    );
    for mut args in [
        vec!["status", target.as_str()],
        vec![
            "call",
            target.as_str(),
            "testing.orders.v1.Orders/Change",
            "{}",
        ],
    ] {
        args.extend(["--timeout", "400ms"]);
        let started = std::time::Instant::now();
        let ran = meshless(&args).await;
        let took = started.elapsed();
        let stderr = ran.failed(1);
        assert!(
            stderr.contains("no answer from DNS within 400ms"),
            "{args:?}: {stderr}"
        );
        // Not the 5 s that DNS discovery waits for a first answer by default.
        assert!(
            took < std::time::Duration::from_secs(4),
            "{args:?} took {took:?}"
        );
    }
    let ran = meshless(&["call", &target, "a.B/C", "{}", "--timeout", "999999h"]).await;
    assert_eq!(
        ran.failed(2).lines().next(),
        Some("error: --timeout takes at most a year (8760h), not `999999h`")
    );
}

#[tokio::test]
async fn bad_arguments() {
    let ran = meshless(&["status", "ipv4:127.0.0.1:1", "--jsn"]).await;
    assert!(
        ran.failed(2)
            .starts_with("error: unknown flag `--jsn` for `meshless status`"),
        "{ran:#?}"
    );
    let ran = meshless(&["status", "users:50051"]).await;
    assert!(ran.failed(1).contains("unknown scheme `users`"), "{ran:#?}");
    let ran = meshless(&["--help"]).await;
    assert!(ran.ok().contains("meshless status <target>"));
}
