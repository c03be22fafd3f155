//! A draining server is reconnected with backoff, and its refusals do not make it look fast.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use meshless::events::ObserverOptions;
use meshless::Server;

use super::{targets, Stuck};
use crate::support::testing::v1::EchoObserver;
use crate::support::{
    request, served_by, Echo, EchoClient, EchoPublisher, EchoService, EchoedEvent, Gate, Running,
};

#[tokio::test]
async fn a_draining_server_is_not_called_again_and_again() {
    // Every request the draining server gets: calls, and the checks of reconnections.
    let requests = Arc::new(AtomicUsize::new(0));
    let count = {
        let requests = requests.clone();
        move |request: tonic::Request<()>| {
            requests.fetch_add(1, Ordering::SeqCst);
            Ok(request)
        }
    };
    let publisher = EchoPublisher::new();
    let mut draining = Running::start(
        Server::builder()
            .layer(meshless::server::InterceptorLayer::new(count))
            .add_service(EchoService::with_publisher(
                Echo::named("draining"),
                publisher.clone(),
            )),
    )
    .await;
    let other = Running::echo(Echo::named("other")).await;
    // The producer drains for as long as a consumer group member is stuck on an event.
    let gate = Gate::default();
    let member = EchoObserver::new()
        .echoed(Stuck(gate.clone()))
        .options(ObserverOptions::default().consumer_group("g"))
        .start(&draining.target())
        .await
        .unwrap();
    publisher
        .publish_echoed(EchoedEvent {
            message: "hold".into(),
        })
        .expect("a small event");
    gate.entered().await;
    let client = EchoClient::connect(targets(&[&draining, &other]))
        .await
        .unwrap();
    client.unary(request("before")).await.unwrap();
    let before = requests.load(Ordering::SeqCst);
    draining.signal_stop();
    for _ in 0..200 {
        let reply = client.unary(request("during")).await.unwrap();
        assert_eq!(served_by(reply.get_ref()), "other");
    }
    let requests = requests.load(Ordering::SeqCst) - before;
    assert!(
        requests <= 10,
        "the draining server got {requests} requests during 200 calls"
    );
    gate.open();
    draining.stop().await.unwrap();
    member.stop().await;
    other.stop().await.unwrap();
}
