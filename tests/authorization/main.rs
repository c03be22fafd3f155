//! `Server::layer` as an authorization hook: a bearer-token layer guards every path the server
//! serves (calls, event RPCs, acknowledgements, health, reflection), clients and observers send
//! the token, and consumer group members belong to the identity that joined them.

#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use meshless::events::ObserverOptions;
use meshless::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use meshless::v1::{Acknowledgement, Cursor, EventGroupsClient, Subscribe};
use meshless::{Channel, Code, PeerIdentity, Request, Server, Status};
use support::{request, Echo, EchoClient, EchoPublisher, EchoService, Forward, Running, PATIENCE};
use tokio_stream::StreamExt;

const ECHOED: &str = "/testing.v1.Echo/Echoed";

/// The layer under test: `Bearer <name>-token` is the caller `<name>`.
fn bearer_token(mut request: Request<()>) -> Result<Request<()>, Status> {
    let token = request
        .metadata()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .and_then(|token| token.strip_suffix("-token"))
        .map(str::to_owned);
    match token {
        Some(caller) => {
            request.extensions_mut().insert(PeerIdentity::new(caller));
            Ok(request)
        }
        None => Err(Status::unauthenticated("a bearer token is required")),
    }
}

async fn guarded(publisher: EchoPublisher) -> Running {
    Running::start(
        Server::builder()
            .reflection(true)
            .layer(meshless::server::InterceptorLayer::new(bearer_token))
            .add_service(EchoService::with_publisher(Echo::default(), publisher)),
    )
    .await
}

fn token(caller: &str) -> AsciiMetadataValue {
    format!("Bearer {caller}-token").parse().unwrap()
}

fn authorization() -> AsciiMetadataKey {
    AsciiMetadataKey::from_static("authorization")
}

async fn channel(target: &str, caller: Option<&str>) -> Channel {
    let builder = Channel::builder().wait_timeout(Duration::from_secs(3));
    let builder = match caller {
        Some(caller) => builder.metadata(authorization(), token(caller)),
        None => builder,
    };
    builder.connect(target).await.unwrap()
}

#[tokio::test]
async fn the_layer_guards_every_path_the_server_serves() {
    let publisher = EchoPublisher::new();
    let server = guarded(publisher.clone()).await;
    let anonymous = channel(&server.target(), None).await;

    let call = EchoClient::new(anonymous.clone())
        .unary(request("hi"))
        .await;
    assert_eq!(call.unwrap_err().code(), Code::Unauthenticated);

    let subscribe = EchoClient::new(anonymous.clone())
        .into_tonic()
        .echoed(Subscribe::default())
        .await;
    assert_eq!(subscribe.unwrap_err().code(), Code::Unauthenticated);

    let ack = EventGroupsClient::new(anonymous.clone())
        .acknowledge(Acknowledgement {
            rpc: ECHOED.into(),
            group: "g".into(),
            member: "m".into(),
            leave: true,
            ..Acknowledgement::default()
        })
        .await;
    assert_eq!(ack.unwrap_err().code(), Code::Unauthenticated);

    let health = tonic_health::pb::health_client::HealthClient::new(anonymous.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await;
    assert_eq!(health.unwrap_err().code(), Code::Unauthenticated);

    let reflection = {
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        ServerReflectionClient::new(anonymous)
            .server_reflection_info(tokio_stream::iter([request]))
            .await
    };
    assert_eq!(reflection.unwrap_err().code(), Code::Unauthenticated);

    // With the token, calls go through, and an observer in a consumer group gets the events
    // (its subscriptions and acknowledgements carry the token too).
    let billing = EchoClient::new(channel(&server.target(), Some("billing")).await);
    assert_eq!(
        billing
            .unary(request("hi"))
            .await
            .unwrap()
            .get_ref()
            .message,
        "hi"
    );
    let (sender, mut handled) = tokio::sync::mpsc::unbounded_channel();
    let observer = support::testing::v1::EchoObserver::new()
        .echoed(Forward(sender))
        .options(
            ObserverOptions::default()
                .consumer_group("mailers")
                .metadata(authorization(), token("billing")),
        )
        .start(&server.target())
        .await
        .unwrap();
    for n in 0..10 {
        publisher
            .publish_echoed(support::EchoedEvent {
                message: format!("event {n}"),
            })
            .unwrap();
    }
    for n in 0..10 {
        let message = tokio::time::timeout(PATIENCE, handled.recv())
            .await
            .unwrap();
        assert_eq!(message.unwrap(), format!("event {n}"));
    }
    // Stopping leaves the group. Had its acknowledgements been refused, its ten events would
    // now go to the next member; acknowledged, the next member starts with the next event.
    observer.stop().await;
    let mut next_member = EchoClient::new(channel(&server.target(), Some("billing")).await)
        .into_tonic()
        .echoed(Subscribe {
            group: "mailers".into(),
            member: "next".into(),
            lease_ms: 100,
            ..Subscribe::default()
        })
        .await
        .unwrap()
        .into_inner();
    publisher
        .publish_echoed(support::EchoedEvent {
            message: "event 10".into(),
        })
        .unwrap();
    let (first, _) = tokio::time::timeout(PATIENCE, next_member.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_parts()
        .unwrap();
    assert_eq!(first.message, "event 10");
    drop(next_member);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_member_belongs_to_the_identity_that_joined_it() {
    let publisher = EchoPublisher::new();
    let server = guarded(publisher.clone()).await;
    let alice = channel(&server.target(), Some("alice")).await;
    let mallory = channel(&server.target(), Some("mallory")).await;
    let join = Subscribe {
        group: "workers".into(),
        member: "worker-1".into(),
        max_unacknowledged: 4,
        lease_ms: 100,
        ..Subscribe::default()
    };
    let mut stream = EchoClient::new(alice.clone())
        .into_tonic()
        .echoed(join.clone())
        .await
        .unwrap()
        .into_inner();
    let published = publisher
        .publish_echoed(support::EchoedEvent {
            message: "work".into(),
        })
        .unwrap();
    let (_, metadata) = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_parts()
        .unwrap();
    assert_eq!(metadata.sequence, published.sequence);
    let handled = Acknowledgement {
        rpc: ECHOED.into(),
        group: "workers".into(),
        member: "worker-1".into(),
        handled: Some(Cursor {
            epoch: published.epoch,
            sequence: published.sequence,
        }),
        leave: false,
        ..Acknowledgement::default()
    };

    // Another identity can neither take the member over, nor acknowledge or leave for it.
    let takeover = EchoClient::new(mallory.clone())
        .into_tonic()
        .echoed(join.clone())
        .await;
    let takeover = takeover.unwrap_err();
    assert_eq!(takeover.code(), Code::PermissionDenied, "{takeover:?}");
    let groups = EventGroupsClient::new(mallory);
    for leave in [false, true] {
        let refused = groups
            .acknowledge(Acknowledgement {
                leave,
                ..handled.clone()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }
    // The identity that joined may (the member is still there: mallory's leave was refused).
    let reply = EventGroupsClient::new(alice)
        .acknowledge(handled)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.unacknowledged, 0);
    drop(stream);
    server.stop().await.unwrap();
}
