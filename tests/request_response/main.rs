//! Request-response end to end: generated handler, service and client over real connections
//! on 127.0.0.1, with the server's health, reflection and shutdown.

#[path = "../support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::Duration;

use meshless::metadata::{BinaryMetadataValue, MetadataValue};
use meshless::{Channel, Code, Request, Server};
use support::{dead_port, request, Echo, EchoClient, EchoRequest, Running, WAIT};
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[tokio::test]
async fn unary_call_reaches_the_handler_with_metadata_both_ways() {
    let server = Running::echo(Echo::default()).await;
    let client = EchoClient::connect(server.target()).await.unwrap();

    let mut call = Request::new(request("hello"));
    call.metadata_mut()
        .insert("x-request-id", MetadataValue::from_static("req-7"));
    call.metadata_mut().insert_bin(
        "x-trace-bin",
        BinaryMetadataValue::from_bytes(&[0, 159, 255]),
    );
    let reply = client.unary(call).await.unwrap();

    assert_eq!(reply.get_ref().message, "hello");
    assert_eq!(reply.metadata().get("x-request-id").unwrap(), "req-7");
    assert_eq!(
        reply
            .metadata()
            .get_bin("x-trace-bin")
            .unwrap()
            .to_bytes()
            .unwrap()
            .as_ref(),
        &[0, 159, 255]
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn status_codes_and_messages_reach_the_caller() {
    let server = Running::echo(Echo::default()).await;
    let client = EchoClient::connect(server.target()).await.unwrap();
    for code in [
        Code::InvalidArgument,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::Internal,
    ] {
        let status = client
            .unary(EchoRequest {
                message: "boom".into(),
                fail_with_code: code as i32,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), code);
        assert_eq!(status.message(), "failed as asked: boom");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn empty_and_large_messages_pass() {
    let server = Running::echo(Echo::default()).await;
    let client = EchoClient::connect(server.target()).await.unwrap();
    let empty = client.unary(EchoRequest::default()).await.unwrap();
    assert_eq!(empty.into_inner(), Default::default());
    let large = client
        .unary(EchoRequest {
            payload: vec![7; 271_828],
            reply_size: 314_159,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(large.get_ref().payload.len(), 314_159);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn every_streaming_shape_passes_through() {
    let server = Running::echo(Echo::default()).await;
    let client = EchoClient::connect(server.target()).await.unwrap();

    let replies: Vec<String> = client
        .server_stream(request("abc"))
        .await
        .unwrap()
        .into_inner()
        .map(|reply| reply.unwrap().message)
        .collect()
        .await;
    assert_eq!(replies, ["a", "b", "c"]);

    let joined = client
        .client_stream(tokio_stream::iter([request("one"), request("two")]))
        .await
        .unwrap();
    assert_eq!(joined.get_ref().message, "one two");

    let echoed: Vec<String> = client
        .bidi_stream(tokio_stream::iter([request("x"), request("y")]))
        .await
        .unwrap()
        .into_inner()
        .map(|reply| reply.unwrap().message)
        .collect()
        .await;
    assert_eq!(echoed, ["x", "y"]);

    #[allow(deprecated)]
    let old = client.old_unary(request("still works")).await.unwrap();
    assert_eq!(old.get_ref().message, "still works");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_services_and_methods_are_unimplemented() {
    let server = Running::echo(Echo::default()).await;
    let channel = Channel::connect(&server.target()).await.unwrap();

    // A service this server does not have.
    let shop = support::testing::shop::v1::ShopClient::new(channel.clone());
    let status = shop
        .buy(support::testing::shop::v1::BuyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);

    // A method the service does not have.
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let status = grpc
        .unary::<EchoRequest, support::EchoReply, _>(
            Request::new(EchoRequest::default()),
            http::uri::PathAndQuery::from_static("/testing.v1.Echo/NoSuchMethod"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn health_reports_each_service_serving_then_not_serving_while_shutting_down() {
    let echo = Echo::default();
    let gate = echo.gate.clone();
    let mut server = Running::echo(echo).await;
    let channel = Channel::connect(&server.target()).await.unwrap();
    let mut health = HealthClient::new(channel.clone());

    for service in ["", "testing.v1.Echo"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap();
        assert_eq!(
            status.get_ref().status(),
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // A call in flight, and a health watch, when the shutdown signal comes.
    let client = EchoClient::new(channel.clone());
    let in_flight = tokio::spawn(async move { client.unary(request(WAIT)).await });
    gate.entered().await;
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "testing.v1.Echo".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );

    server.signal_stop();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status(),
        ServingStatus::NotServing
    );

    // The call in flight finishes normally.
    gate.open();
    let reply = in_flight.await.unwrap().unwrap();
    assert_eq!(reply.get_ref().message, WAIT);

    let addr = server.addr;
    drop((watch, health, channel));
    server.stop().await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn the_grace_period_bounds_shutdown() {
    let echo = Echo::default();
    let gate = echo.gate.clone();
    let server = Running::start(
        Server::builder()
            .grace_period(Duration::from_millis(50))
            .add_service(support::EchoService::new(echo)),
    )
    .await;
    let client = EchoClient::connect(server.target()).await.unwrap();
    let stuck = tokio::spawn(async move { client.unary(request(WAIT)).await });
    gate.entered().await;
    // The handler never finishes: serve still returns once the grace period is over.
    server.stop().await.unwrap();
    // And the connection does not outlive serve: the call in it fails instead of waiting on.
    let ended = tokio::time::timeout(Duration::from_secs(5), stuck)
        .await
        .expect("the call ends when serve returns")
        .unwrap();
    assert!(ended.is_err(), "{ended:?}");
}

#[tokio::test]
async fn reflection_describes_the_services() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let server = Running::start(
        Server::builder()
            .reflection(true)
            .add_service(support::EchoService::new(Echo::default())),
    )
    .await;
    let channel = Channel::connect(&server.target()).await.unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("testing.v1.Echo".into()),
    ]
    .map(|message| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    });
    let responses: Vec<_> = reflection
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap().message_response.unwrap())
        .collect()
        .await;

    let MessageResponse::ListServicesResponse(list) = &responses[0] else {
        panic!("expected a service list, got {:?}", responses[0]);
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"testing.v1.Echo"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    assert!(
        !names.contains(&"signup.v1.Users"),
        "only the services served are listed: {names:?}"
    );
    let MessageResponse::FileDescriptorResponse(files) = &responses[1] else {
        panic!("expected file descriptors, got {:?}", responses[1]);
    };
    assert!(!files.file_descriptor_proto.is_empty());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_ipv4_list_spreads_calls_over_its_instances() {
    let one = Running::echo(Echo::named("one")).await;
    let two = Running::echo(Echo::named("two")).await;
    let client = EchoClient::connect(format!("ipv4:{},{}", one.addr, two.addr))
        .await
        .unwrap();

    let mut served = HashMap::<String, usize>::new();
    for _ in 0..100 {
        let reply = client.unary(request("hi")).await.unwrap().into_inner();
        let name = reply.message.split(':').next().unwrap().to_owned();
        *served.entry(name).or_default() += 1;
    }
    // Each draw is a fair coin between idle instances: both get calls.
    assert_eq!(served.len(), 2, "{served:?}");
    one.stop().await.unwrap();
    two.stop().await.unwrap();
}

#[tokio::test]
async fn an_instance_that_cannot_be_reached_is_never_picked() {
    let live = Running::echo(Echo::named("live")).await;
    let dead = dead_port().await;
    let client = EchoClient::connect(format!("ipv4:{dead},{}", live.addr))
        .await
        .unwrap();
    for _ in 0..50 {
        let reply = client
            .unary(request("hi"))
            .await
            .expect("every call goes to the live instance");
        assert_eq!(reply.get_ref().message, "live: hi");
    }
    live.stop().await.unwrap();
}

#[tokio::test]
async fn no_reachable_instance_fails_with_unavailable_naming_the_target() {
    let dead = dead_port().await;
    let target = format!("ipv4:{dead}");
    let client = EchoClient::connect(&target).await.unwrap();
    let status = client.unary(request("hi")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains(&target), "{}", status.message());
    assert!(
        status.message().contains("reachable"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn bad_targets_are_errors_that_name_them() {
    let error = EchoClient::connect("users:50051").await.unwrap_err();
    assert!(error.is_invalid_target());
    assert!(error.to_string().contains("`users:50051`"), "{error}");

    let error = EchoClient::connect("dns:///users.service.consul")
        .await
        .unwrap_err();
    assert!(error.is_invalid_target());
    assert!(error.to_string().contains("has no port"), "{error}");
}

#[tokio::test]
async fn reflection_is_off_unless_asked_for() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let server = Running::echo(Echo::default()).await;
    let channel = Channel::connect(&server.target()).await.unwrap();
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let status = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    server.stop().await.unwrap();
}
