//! Channelz and the admin service, read over the wire: the servers, connections and channels of
//! the process with exact call counts, an ejected instance with why and for how long, and both
//! services behind an authorization layer.

#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use meshless::admin::channelz_v1::{
    channel_connectivity_state::State, ChannelzClient, GetChannelRequest, GetServerRequest,
    GetServerSocketsRequest, GetServersRequest, GetSocketRequest, GetSubchannelRequest,
    GetTopChannelsRequest,
};
use meshless::admin::v1::{AdminClient, ChannelStatus, GetStatusRequest, InstanceStatus};
use meshless::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use meshless::{Channel, Code, Request, Server, Status};
use support::testing::orders::v1::{
    ChangeReply, ChangeRequest, Order, OrdersClient, OrdersHandler, OrdersService,
};
use support::{request, Echo, EchoClient, EchoRequest, Running, PATIENCE};

/// An Orders instance that takes every change, or fails every one with `UNAVAILABLE`.
#[derive(Clone)]
struct Orders {
    broken: bool,
}

impl OrdersHandler for Orders {
    async fn change(
        &self,
        _: Request<ChangeRequest>,
    ) -> Result<meshless::Response<ChangeReply>, Status> {
        if self.broken {
            return Err(Status::unavailable("broken"));
        }
        Ok(meshless::Response::new(ChangeReply::default()))
    }
}

async fn orders(broken: bool) -> Running {
    Running::start(Server::builder().add_service(OrdersService::new(Orders { broken }))).await
}

fn change(order: usize) -> ChangeRequest {
    ChangeRequest {
        order: Some(Order {
            id: order.to_string(),
        }),
        step: 0,
    }
}

/// A server serving only the introspection services.
async fn introspection() -> Running {
    Running::start(Server::builder().admin(true).channelz(true)).await
}

async fn status(admin: &mut AdminClient) -> InstanceStatus {
    admin
        .get_status(GetStatusRequest {})
        .await
        .expect("GetStatus")
        .into_inner()
}

fn channel_of<'a>(status: &'a InstanceStatus, target: &str) -> &'a ChannelStatus {
    status
        .channels
        .iter()
        .find(|channel| channel.target == target)
        .unwrap_or_else(|| panic!("no channel to {target} in {:?}", status.channels))
}

#[tokio::test]
async fn channelz_counts_a_servers_calls_per_connection_and_a_channels_per_instance() {
    let served = Running::echo(Echo::named("a")).await;
    let introspection = introspection().await;
    let target = served.target();
    let channel = Channel::builder()
        .attempts(1)
        .connect(&target)
        .await
        .expect("channel");
    let client = EchoClient::new(channel);
    for _ in 0..3 {
        client.unary(request("ok")).await.expect("an OK call");
    }
    for _ in 0..2 {
        let failing = EchoRequest {
            message: "no".into(),
            fail_with_code: Code::InvalidArgument as i32,
            ..Default::default()
        };
        let status = client.unary(failing).await.expect_err("a failing call");
        assert_eq!(status.code(), Code::InvalidArgument);
    }

    let channelz = ChannelzClient::new(
        Channel::connect(&introspection.target())
            .await
            .expect("channel"),
    );
    let servers = channelz
        .get_servers(GetServersRequest::default())
        .await
        .expect("GetServers")
        .into_inner();
    assert!(servers.end);
    let server = servers
        .server
        .iter()
        .find(|server| server.r#ref.as_ref().unwrap().name == served.addr.to_string())
        .expect("the echo server is listed");
    let data = server.data.as_ref().unwrap();
    // The channel's readiness check (a health check) is a call the server served too.
    assert_eq!(
        (data.calls_started, data.calls_succeeded, data.calls_failed),
        (6, 4, 2)
    );
    assert!(data.last_call_started_timestamp.is_some());
    let server_id = server.r#ref.as_ref().unwrap().server_id;
    let alone = channelz
        .get_server(GetServerRequest { server_id })
        .await
        .expect("GetServer")
        .into_inner()
        .server
        .unwrap();
    assert_eq!(&alone, server);

    let sockets = channelz
        .get_server_sockets(GetServerSocketsRequest {
            server_id,
            ..Default::default()
        })
        .await
        .expect("GetServerSockets")
        .into_inner();
    assert_eq!(sockets.socket_ref.len(), 1, "one connection: {sockets:?}");
    let socket = channelz
        .get_socket(GetSocketRequest {
            socket_id: sockets.socket_ref[0].socket_id,
        })
        .await
        .expect("GetSocket")
        .into_inner()
        .socket
        .unwrap();
    let streams = socket.data.unwrap();
    assert_eq!(
        (
            streams.streams_started,
            streams.streams_succeeded,
            streams.streams_failed
        ),
        // A socket's stream succeeds when its status is sent, whatever the status.
        (6, 6, 0)
    );
    let local = socket.local.unwrap().address.unwrap();
    let meshless::admin::channelz_v1::address::Address::TcpipAddress(local) = local else {
        panic!("a TCP address");
    };
    assert_eq!(local.ip_address, vec![127, 0, 0, 1]);
    assert_eq!(local.port, i32::from(served.addr.port()));

    let channels = channelz
        .get_top_channels(GetTopChannelsRequest::default())
        .await
        .expect("GetTopChannels")
        .into_inner();
    let listed = channels
        .channel
        .iter()
        .find(|channel| channel.r#ref.as_ref().unwrap().name == target)
        .expect("the channel is listed");
    let data = listed.data.as_ref().unwrap();
    assert_eq!(data.target, target);
    assert_eq!(data.state.unwrap().state(), State::Ready);
    assert_eq!(
        (data.calls_started, data.calls_succeeded, data.calls_failed),
        (5, 3, 2)
    );
    let channel_id = listed.r#ref.as_ref().unwrap().channel_id;
    let again = channelz
        .get_channel(GetChannelRequest { channel_id })
        .await
        .expect("GetChannel")
        .into_inner()
        .channel
        .unwrap();
    assert_eq!(again.subchannel_ref.len(), 1);
    let subchannel = channelz
        .get_subchannel(GetSubchannelRequest {
            subchannel_id: again.subchannel_ref[0].subchannel_id,
        })
        .await
        .expect("GetSubchannel")
        .into_inner()
        .subchannel
        .unwrap();
    let data = subchannel.data.unwrap();
    assert_eq!(data.target, served.addr.to_string());
    assert_eq!(data.state.unwrap().state(), State::Ready);
    // INVALID_ARGUMENT is about the request, not the instance.
    assert_eq!(
        (data.calls_started, data.calls_succeeded, data.calls_failed),
        (5, 5, 0)
    );

    // Pages, and ids that are not there.
    let first = channelz
        .get_top_channels(GetTopChannelsRequest {
            start_channel_id: 0,
            max_results: 1,
        })
        .await
        .expect("a page")
        .into_inner();
    assert_eq!(first.channel.len(), 1);
    assert!(
        !first.end,
        "two channels at least: the echo one and channelz's own"
    );
    let missing = channelz
        .get_channel(GetChannelRequest {
            channel_id: 1 << 40,
        })
        .await
        .expect_err("no such channel");
    assert_eq!(missing.code(), Code::NotFound);
    let negative = channelz
        .get_servers(GetServersRequest {
            start_server_id: 0,
            max_results: -1,
        })
        .await
        .expect_err("a negative page size");
    assert_eq!(negative.code(), Code::InvalidArgument);

    // A server that stopped is no longer listed, nor its connections.
    served.stop().await.expect("stop");
    let servers = channelz
        .get_servers(GetServersRequest::default())
        .await
        .expect("GetServers")
        .into_inner();
    assert!(servers
        .server
        .iter()
        .all(|server| server.r#ref.as_ref().unwrap().server_id != server_id));
    introspection.stop().await.expect("stop");
}

#[tokio::test]
async fn the_admin_view_shows_an_ejected_instance_for_how_long_and_why() {
    let healthy = orders(false).await;
    let broken = orders(true).await;
    let introspection = introspection().await;
    let target = format!("ipv4:{},{}", healthy.addr, broken.addr);
    let channel = Channel::builder()
        .attempts(1)
        .ejection(Duration::from_secs(600), Duration::from_secs(600))
        .connect(&target)
        .await
        .expect("channel");
    support::eventually("both instances ready", || channel.ready_instances() == 2).await;
    let mut admin = AdminClient::new(
        Channel::connect(&introspection.target())
            .await
            .expect("channel"),
    );

    let client = OrdersClient::new(channel.clone());
    let (mut ok, mut failed) = (0u64, 0u64);
    // Calls about one order go to one instance: orders go one after another until one lands
    // on the broken instance, which then gets that order's calls until it is ejected.
    let mut order = 0;
    while channel.ready_instances() == 2 {
        match client.change(change(order)).await {
            Ok(_) => {
                ok += 1;
                order += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                failed += 1;
            }
        }
        assert!(ok + failed < 1_000, "the broken instance was never ejected");
    }
    assert_eq!(failed, 5, "ejected after 5 failures in a row");

    let status = status(&mut admin).await;
    assert_eq!(status.listen_address, introspection.addr.to_string());
    assert_eq!(status.process_id, std::process::id());
    assert!(status
        .services
        .iter()
        .any(|service| service == "meshless.admin.v1.Admin"));
    let listed = channel_of(&status, &target);
    assert_eq!(
        (
            listed.calls_started,
            listed.calls_succeeded,
            listed.calls_failed
        ),
        (ok + failed, ok, failed)
    );
    let discovery = listed.discovery.as_ref().unwrap();
    assert_eq!(discovery.state, "static");
    let mut addresses = vec![healthy.addr.to_string(), broken.addr.to_string()];
    addresses.sort();
    assert_eq!(discovery.addresses, addresses);
    assert!(discovery.answered_ms_ago.is_some());

    let instance = |addr: std::net::SocketAddr| {
        listed
            .instances
            .iter()
            .find(|instance| instance.address == addr.to_string())
            .expect("the instance is listed")
    };
    let ejected = instance(broken.addr);
    assert!(ejected.ejected && !ejected.ready);
    assert_eq!(ejected.connection, "ready");
    assert_eq!(
        ejected.ejected_because,
        "5 calls in a row failed, the last: UNAVAILABLE"
    );
    assert!(
        ejected.ejected_for_ms > 500_000 && ejected.ejected_for_ms <= 600_000,
        "{}",
        ejected.ejected_for_ms
    );
    assert_eq!(
        (ejected.calls_started, ejected.calls_failed),
        (failed, failed)
    );
    let serving = instance(healthy.addr);
    // A failure counts as a slow answer (1 s at least).
    assert!(
        ejected.latency_ewma_ms > 10.0 * serving.latency_ewma_ms,
        "{} against {}",
        ejected.latency_ewma_ms,
        serving.latency_ewma_ms
    );
    assert!(serving.ready && !serving.ejected);
    assert_eq!(
        (
            serving.calls_started,
            serving.calls_succeeded,
            serving.in_flight
        ),
        (ok, ok, 0)
    );

    for running in [healthy, broken, introspection] {
        running.stop().await.expect("stop");
    }
}

fn bearer(request: Request<()>) -> Result<Request<()>, Status> {
    match request.metadata().get("authorization").map(|v| v.to_str()) {
        Some(Ok("Bearer operator")) => Ok(request),
        _ => Err(Status::unauthenticated("a valid bearer token is required")),
    }
}

#[tokio::test]
async fn the_admin_service_and_channelz_refuse_an_anonymous_caller_behind_an_authorization_layer() {
    let guarded = Running::start(
        Server::builder()
            .admin(true)
            .channelz(true)
            .layer(meshless::server::InterceptorLayer::new(bearer)),
    )
    .await;
    let anonymous = Channel::connect(&guarded.target()).await.expect("channel");
    let refused = AdminClient::new(anonymous.clone())
        .get_status(GetStatusRequest {})
        .await
        .expect_err("anonymous");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let refused = ChannelzClient::new(anonymous)
        .get_servers(GetServersRequest::default())
        .await
        .expect_err("anonymous");
    assert_eq!(refused.code(), Code::Unauthenticated);

    let operator = Channel::builder()
        .metadata(
            AsciiMetadataKey::from_static("authorization"),
            AsciiMetadataValue::from_static("Bearer operator"),
        )
        .connect(&guarded.target())
        .await
        .expect("channel");
    let status = tokio::time::timeout(
        PATIENCE,
        AdminClient::new(operator.clone()).get_status(GetStatusRequest {}),
    )
    .await
    .expect("in time")
    .expect("the operator is let in")
    .into_inner();
    assert_eq!(status.listen_address, guarded.addr.to_string());
    ChannelzClient::new(operator)
        .get_servers(GetServersRequest::default())
        .await
        .expect("the operator is let in");
    guarded.stop().await.expect("stop");
}

#[tokio::test]
async fn the_admin_view_shows_an_event_rpcs_subscribers_and_a_groups_lag() {
    use meshless::v1::{Acknowledgement, Cursor, EventGroupsClient, StartPosition, Subscribe};
    use support::{EchoPublisher, EchoService, EchoedEvent};
    use tokio_stream::StreamExt;

    const ECHOED: &str = "/testing.v1.Echo/Echoed";
    let publisher = EchoPublisher::new();
    let server = Running::start(
        Server::builder()
            .admin(true)
            // The member that stays has 6 events it will never acknowledge.
            .grace_period(Duration::from_millis(100))
            .add_service(EchoService::with_publisher(
                Echo::default(),
                publisher.clone(),
            )),
    )
    .await;
    let mut published = Vec::new();
    for i in 0..10 {
        published.push(
            publisher
                .publish_echoed(EchoedEvent {
                    message: format!("event {i}"),
                })
                .expect("publish"),
        );
    }
    let channel = Channel::connect(&server.target()).await.expect("channel");
    let echo = EchoClient::new(channel.clone()).into_tonic();
    // A plain subscriber that read every event.
    let mut plain = echo
        .clone()
        .echoed(Subscribe {
            start: StartPosition::Oldest as i32,
            ..Subscribe::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    for _ in 0..10 {
        tokio::time::timeout(PATIENCE, plain.next())
            .await
            .expect("in time")
            .expect("an event")
            .expect("an event");
    }
    // A consumer group member that got events and acknowledged the first 4.
    let mut member = echo
        .clone()
        .echoed(Subscribe {
            start: StartPosition::Oldest as i32,
            group: "billing".into(),
            member: "billing-1".into(),
            max_unacknowledged: 6,
            lease_ms: 60_000,
            ..Subscribe::default()
        })
        .await
        .expect("join")
        .into_inner();
    for _ in 0..6 {
        tokio::time::timeout(PATIENCE, member.next())
            .await
            .expect("in time")
            .expect("an event")
            .expect("an event");
    }
    EventGroupsClient::new(channel.clone())
        .acknowledge(Acknowledgement {
            rpc: ECHOED.into(),
            group: "billing".into(),
            member: "billing-1".into(),
            handled: Some(Cursor {
                epoch: published[3].epoch,
                sequence: published[3].sequence,
            }),
            ..Acknowledgement::default()
        })
        .await
        .expect("acknowledge");

    let status = status(&mut AdminClient::new(channel)).await;
    assert_eq!(status.event_rpcs.len(), 1, "{status:?}");
    let rpc = &status.event_rpcs[0];
    assert_eq!(rpc.rpc, ECHOED);
    assert_eq!(rpc.epoch, published[0].epoch);
    assert_eq!(
        (rpc.first_sequence, rpc.last_sequence),
        (published[0].sequence, published[9].sequence)
    );
    assert_eq!(rpc.storage, "memory");
    assert_eq!((rpc.bytes_on_disk, rpc.subscribers_cut_off), (0, 0));
    assert_eq!(rpc.last_error, "");
    assert_eq!(rpc.subscribers.len(), 1, "{:?}", rpc.subscribers);
    let subscriber = &rpc.subscribers[0];
    assert_eq!(
        (subscriber.cursor, subscriber.lag),
        (published[9].sequence, 0)
    );
    assert!(
        subscriber.peer.starts_with("127.0.0.1:"),
        "{}",
        subscriber.peer
    );

    assert_eq!(rpc.groups.len(), 1);
    let group = &rpc.groups[0];
    assert_eq!(group.name, "billing");
    assert_eq!(group.members.len(), 1);
    let joined = &group.members[0];
    assert_eq!(
        (
            joined.member.as_str(),
            joined.lease_ms,
            joined.unacknowledged
        ),
        ("billing-1", 60_000, 6)
    );
    assert!(joined.peer.starts_with("127.0.0.1:"));
    // The 4 acknowledged made room for the last 4: all 6 left are delivered.
    assert_eq!(group.unacknowledged, 6);
    assert_eq!(group.acknowledged_through, published[3].sequence);
    assert_eq!(group.lag, 6);
    assert!(group.last_acknowledgement_ms_ago.is_some());
    drop((plain, member));
    server.stop().await.expect("stop");
}
