//! A reset stream fails its own call and leaves the connection, and the instance, alone.

use meshless::{Channel, Code, Server};

use crate::support::{request, served_by, Echo, EchoClient, EchoRequest, EchoService, Running};

#[tokio::test]
async fn a_request_over_the_size_limit_fails_its_call_and_keeps_the_connection() {
    let echo = Running::echo(Echo::named("e")).await;
    let channel = Channel::connect(&echo.target()).await.unwrap();
    let client = EchoClient::new(channel.clone());
    client.unary(request("first")).await.unwrap();

    let oversized = EchoRequest {
        message: "x".repeat(5 << 20),
        ..EchoRequest::default()
    };
    let status = client
        .client_stream(tokio_stream::iter([oversized]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(channel.ready_instances(), 1, "the connection is kept");
    let reply = client.unary(request("next")).await.unwrap();
    assert_eq!(served_by(reply.get_ref()), "e");
    echo.stop().await.unwrap();
}

#[tokio::test]
async fn a_handler_that_panics_fails_its_call_with_internal_and_keeps_the_connection() {
    let panicking = |request: tonic::Request<()>| {
        assert!(
            !request.metadata().contains_key("x-panic"),
            "asked to panic"
        );
        Ok(request)
    };
    let server = Server::builder()
        .layer(meshless::server::InterceptorLayer::new(panicking))
        .add_service(EchoService::new(Echo::named("e")));
    let running = Running::start(server).await;
    let channel = Channel::builder()
        .attempts(1)
        .connect(&running.target())
        .await
        .unwrap();
    let client = EchoClient::new(channel.clone());
    client.unary(request("first")).await.unwrap();

    let mut panics = meshless::Request::new(request("boom"));
    panics
        .metadata_mut()
        .insert("x-panic", "1".parse().unwrap());
    let status = client.unary(panics).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(channel.ready_instances(), 1, "the connection is kept");
    let reply = client.unary(request("next")).await.unwrap();
    assert_eq!(served_by(reply.get_ref()), "e");
    running.stop().await.unwrap();
}
