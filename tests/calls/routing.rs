//! Routing keys travel in a request header, so that calls whose body the channel cannot read
//! (compressed) keep to one instance per key, and other clients can route by it too.

use std::sync::{Arc, Mutex};

use meshless::{Channel, Request, Response, Server, Status};

use crate::support::testing::orders::v1::{
    ChangeReply, ChangeRequest, Order, OrdersClient, OrdersHandler, OrdersService,
};
use crate::support::Running;

#[derive(Clone)]
struct Orders;

impl OrdersHandler for Orders {
    async fn change(&self, _: Request<ChangeRequest>) -> Result<Response<ChangeReply>, Status> {
        Ok(Response::new(ChangeReply::default()))
    }
}

/// An Orders server that records the routing key header of every call it gets (the
/// readiness check has none).
async fn recording(seen: Arc<Mutex<Vec<String>>>) -> Running {
    let record = move |request: tonic::Request<()>| {
        let key = request
            .metadata()
            .get("meshless-routing-key")
            .and_then(|value| value.to_str().ok());
        if let Some(key) = key {
            seen.lock().unwrap().push(key.to_owned());
        }
        Ok(request)
    };
    let server = Server::builder()
        .layer(meshless::server::InterceptorLayer::new(record))
        .add_service(OrdersService::new(Orders));
    Running::start(server).await
}

fn change(id: &str) -> ChangeRequest {
    ChangeRequest {
        order: Some(Order { id: id.into() }),
        ..ChangeRequest::default()
    }
}

#[tokio::test]
async fn a_call_with_a_routing_key_sends_it_in_a_header() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let server = recording(seen.clone()).await;
    let client = OrdersClient::connect(server.target()).await.unwrap();
    client.change(change("o-42")).await.unwrap();
    assert_eq!(seen.lock().unwrap().clone(), ["o-42"]);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn compressed_calls_with_one_key_keep_to_one_instance() {
    let seen: Vec<Arc<Mutex<Vec<String>>>> = (0..3).map(|_| Arc::default()).collect();
    let mut servers = Vec::new();
    for seen in &seen {
        servers.push(recording(seen.clone()).await);
    }
    let addrs: Vec<String> = servers.iter().map(|s| s.addr.to_string()).collect();
    let channel = Channel::connect(&format!("ipv4:{}", addrs.join(",")))
        .await
        .unwrap();
    crate::support::eventually("every instance is ready", || channel.ready_instances() == 3).await;
    // What a client with gzip on sends: a compressed message the channel cannot read, and
    // the key in its header.
    for _ in 0..30 {
        let request = http::Request::builder()
            .method("POST")
            .uri("/testing.orders.v1.Orders/Change")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-encoding", "gzip")
            .header("meshless-routing-key", "o-7")
            .body(tonic::body::Body::new(http_body_util::Full::new(
                bytes::Bytes::from_static(&[1, 0, 0, 0, 3, 1, 2, 3]),
            )))
            .unwrap();
        let _ = tower::ServiceExt::oneshot(channel.clone(), request).await;
    }
    let counts: Vec<usize> = seen.iter().map(|s| s.lock().unwrap().len()).collect();
    assert!(counts.contains(&30), "calls per instance: {counts:?}");
    for server in servers {
        server.stop().await.unwrap();
    }
}
