//! [`Channelz`]: gRPC channelz (`grpc.channelz.v1.Channelz`), filled from the registry.
//!
//! How meshless maps onto channelz's entities:
//! - a server is a [`Server`](crate::Server) while it serves, with its listening socket and the
//!   connections it has accepted as sockets. The server counts its calls as succeeded when
//!   their status is `OK`; a connection counts its streams as succeeded when they ended with
//!   their status sent (whatever it was), failed when reset or dropped before (channelz's
//!   meaning for sockets);
//! - a top channel is a [`Channel`](crate::Channel), named by its target; its subchannels are
//!   the target's instances, named by address. A channel's calls succeed with an `OK` status;
//!   an instance counts as failed the calls that failed against it (the ones that eject it:
//!   `UNAVAILABLE`, `INTERNAL`, `UNKNOWN`, `DATA_LOSS`, `RESOURCE_EXHAUSTED`, a deadline it
//!   missed, a broken connection), that it refused or that were given up before an answer;
//!   answers about the request (`NOT_FOUND`...) say nothing of it and count as succeeded.
//!
//! Pages hold at most [`PAGE`] results.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use tonic::{Request, Response, Status};

use super::channelz_v1 as wire;
use super::registry::{self, CallCounts, Calls, ServerEntry, SocketEntry};
use crate::balance::{Instance, InstanceSet, State};
use crate::discovery::DiscoveryStatus;

/// The most results a page holds.
const PAGE: usize = 100;

/// The channelz service of the process.
#[derive(Debug, Default)]
pub(crate) struct Channelz;

impl Channelz {
    pub(crate) fn into_service(self) -> wire::ChannelzService<Self> {
        wire::ChannelzService::new(self)
    }
}

fn timestamp(at: Option<SystemTime>) -> Option<prost_types::Timestamp> {
    at.map(prost_types::Timestamp::from)
}

fn count(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn channel_data(
    target: &str,
    state: wire::channel_connectivity_state::State,
    calls: Calls,
) -> wire::ChannelData {
    wire::ChannelData {
        state: Some(wire::ChannelConnectivityState {
            state: state.into(),
        }),
        target: target.to_owned(),
        calls_started: count(calls.started),
        calls_succeeded: count(calls.succeeded),
        calls_failed: count(calls.failed),
        last_call_started_timestamp: timestamp(calls.last_started),
    }
}

fn address(addr: SocketAddr) -> wire::Address {
    let ip_address = match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    wire::Address {
        address: Some(wire::address::Address::TcpipAddress(
            wire::address::TcpIpAddress {
                ip_address,
                port: i32::from(addr.port()),
            },
        )),
    }
}

/// The connectivity state of an instance, as channelz names it.
fn instance_state(instance: &Instance) -> wire::channel_connectivity_state::State {
    use wire::channel_connectivity_state::State as Wire;
    match instance.state() {
        State::Connecting => Wire::Connecting,
        State::Ready => Wire::Ready,
        State::Failed => Wire::TransientFailure,
    }
}

/// The connectivity state of a channel: ready when an instance is, connecting while one
/// connects, failing otherwise (no instance, or all failing).
fn channel_state(instances: &InstanceSet) -> wire::channel_connectivity_state::State {
    use wire::channel_connectivity_state::State as Wire;
    let states: Vec<State> = instances
        .instances()
        .iter()
        .map(|(instance, _)| instance.state())
        .collect();
    if states.contains(&State::Ready) {
        Wire::Ready
    } else if states.contains(&State::Connecting)
        || (states.is_empty() && instances.last_answer().0 == DiscoveryStatus::Pending)
    {
        Wire::Connecting
    } else {
        Wire::TransientFailure
    }
}

fn channel(id: i64, instances: &InstanceSet, calls: &CallCounts) -> wire::Channel {
    let mut members = instances.instances();
    members.sort_by_key(|(instance, _)| instance.id);
    wire::Channel {
        r#ref: Some(wire::ChannelRef {
            channel_id: id,
            name: instances.target().to_owned(),
        }),
        data: Some(channel_data(
            instances.target(),
            channel_state(instances),
            calls.read(),
        )),
        channel_ref: Vec::new(),
        subchannel_ref: members
            .iter()
            .map(|(instance, _)| subchannel_ref(instance))
            .collect(),
        socket_ref: Vec::new(),
    }
}

fn subchannel_ref(instance: &Instance) -> wire::SubchannelRef {
    wire::SubchannelRef {
        subchannel_id: instance.id,
        name: instance.key.clone(),
    }
}

fn socket_ref(socket: &SocketEntry) -> wire::SocketRef {
    wire::SocketRef {
        socket_id: socket.id,
        name: socket.remote.to_string(),
    }
}

fn server(entry: &ServerEntry) -> wire::Server {
    let calls = entry.calls.read();
    wire::Server {
        r#ref: Some(wire::ServerRef {
            server_id: entry.id,
            name: entry
                .listen
                .map(|addr| addr.to_string())
                .unwrap_or_default(),
        }),
        data: Some(wire::ServerData {
            calls_started: count(calls.started),
            calls_succeeded: count(calls.succeeded),
            calls_failed: count(calls.failed),
            last_call_started_timestamp: timestamp(calls.last_started),
        }),
        listen_socket: vec![wire::SocketRef {
            socket_id: entry.listen_socket_id,
            name: entry
                .listen
                .map(|addr| addr.to_string())
                .unwrap_or_default(),
        }],
    }
}

fn socket(entry: &SocketEntry) -> wire::Socket {
    let streams = entry.streams.read();
    wire::Socket {
        r#ref: Some(socket_ref(entry)),
        data: Some(wire::SocketData {
            streams_started: count(streams.started),
            streams_succeeded: count(streams.succeeded),
            streams_failed: count(streams.failed),
            last_remote_stream_created_timestamp: timestamp(streams.last_started),
            ..Default::default()
        }),
        local: entry.local.map(address),
        remote: Some(address(entry.remote)),
        remote_name: String::new(),
    }
}

/// A listening socket: its address, no data.
fn listen_socket(entry: &ServerEntry) -> wire::Socket {
    wire::Socket {
        r#ref: Some(wire::SocketRef {
            socket_id: entry.listen_socket_id,
            name: entry
                .listen
                .map(|addr| addr.to_string())
                .unwrap_or_default(),
        }),
        data: Some(wire::SocketData::default()),
        local: entry.listen.map(address),
        remote: None,
        remote_name: String::new(),
    }
}

/// At most `max` (0: [`PAGE`], and never more than it) of `items` from `start` on, by id;
/// and whether they are the last.
fn page<T>(
    items: Vec<T>,
    id: impl Fn(&T) -> i64,
    start: i64,
    max: i64,
) -> Result<(Vec<T>, bool), Status> {
    if max < 0 {
        return Err(Status::invalid_argument("max_results must not be negative"));
    }
    let max = match usize::try_from(max) {
        Ok(0) | Err(_) => PAGE,
        Ok(max) => max.min(PAGE),
    };
    let mut from: Vec<T> = items.into_iter().filter(|item| id(item) >= start).collect();
    let end = from.len() <= max;
    from.truncate(max);
    Ok((from, end))
}

fn not_found(what: &str, id: i64) -> Status {
    Status::not_found(format!("no {what} with id {id} in this process"))
}

impl wire::ChannelzHandler for Channelz {
    async fn get_top_channels(
        &self,
        request: Request<wire::GetTopChannelsRequest>,
    ) -> Result<Response<wire::GetTopChannelsResponse>, Status> {
        let request = request.into_inner();
        let (channels, end) = page(
            registry::channels(),
            |(id, _, _)| *id,
            request.start_channel_id,
            request.max_results,
        )?;
        Ok(Response::new(wire::GetTopChannelsResponse {
            channel: channels
                .iter()
                .map(|(id, instances, calls)| channel(*id, instances, calls))
                .collect(),
            end,
        }))
    }

    async fn get_servers(
        &self,
        request: Request<wire::GetServersRequest>,
    ) -> Result<Response<wire::GetServersResponse>, Status> {
        let request = request.into_inner();
        let (servers, end) = page(
            registry::servers(),
            |server| server.id,
            request.start_server_id,
            request.max_results,
        )?;
        Ok(Response::new(wire::GetServersResponse {
            server: servers.iter().map(|entry| server(entry)).collect(),
            end,
        }))
    }

    async fn get_server(
        &self,
        request: Request<wire::GetServerRequest>,
    ) -> Result<Response<wire::GetServerResponse>, Status> {
        let id = request.into_inner().server_id;
        let entry = registry::servers()
            .into_iter()
            .find(|server| server.id == id)
            .ok_or_else(|| not_found("server", id))?;
        Ok(Response::new(wire::GetServerResponse {
            server: Some(server(&entry)),
        }))
    }

    async fn get_server_sockets(
        &self,
        request: Request<wire::GetServerSocketsRequest>,
    ) -> Result<Response<wire::GetServerSocketsResponse>, Status> {
        let request = request.into_inner();
        let entry = registry::servers()
            .into_iter()
            .find(|server| server.id == request.server_id)
            .ok_or_else(|| not_found("server", request.server_id))?;
        let (sockets, end) = page(
            entry.sockets(),
            |socket| socket.id,
            request.start_socket_id,
            request.max_results,
        )?;
        Ok(Response::new(wire::GetServerSocketsResponse {
            socket_ref: sockets.iter().map(|socket| socket_ref(socket)).collect(),
            end,
        }))
    }

    async fn get_channel(
        &self,
        request: Request<wire::GetChannelRequest>,
    ) -> Result<Response<wire::GetChannelResponse>, Status> {
        let id = request.into_inner().channel_id;
        let (_, instances, calls) = registry::channels()
            .into_iter()
            .find(|(channel, _, _)| *channel == id)
            .ok_or_else(|| not_found("channel", id))?;
        Ok(Response::new(wire::GetChannelResponse {
            channel: Some(channel(id, &instances, &calls)),
        }))
    }

    async fn get_subchannel(
        &self,
        request: Request<wire::GetSubchannelRequest>,
    ) -> Result<Response<wire::GetSubchannelResponse>, Status> {
        let id = request.into_inner().subchannel_id;
        let instance: Option<Arc<Instance>> = registry::channels()
            .iter()
            .flat_map(|(_, instances, _)| instances.instances())
            .map(|(instance, _)| instance)
            .find(|instance| instance.id == id);
        let instance = instance.ok_or_else(|| not_found("subchannel", id))?;
        Ok(Response::new(wire::GetSubchannelResponse {
            subchannel: Some(wire::Subchannel {
                r#ref: Some(subchannel_ref(&instance)),
                data: Some(channel_data(
                    &instance.key,
                    instance_state(&instance),
                    instance.calls.read(),
                )),
                channel_ref: Vec::new(),
                subchannel_ref: Vec::new(),
                socket_ref: Vec::new(),
            }),
        }))
    }

    async fn get_socket(
        &self,
        request: Request<wire::GetSocketRequest>,
    ) -> Result<Response<wire::GetSocketResponse>, Status> {
        let id = request.into_inner().socket_id;
        for entry in registry::servers() {
            if entry.listen_socket_id == id {
                return Ok(Response::new(wire::GetSocketResponse {
                    socket: Some(listen_socket(&entry)),
                }));
            }
            if let Some(found) = entry.sockets().iter().find(|socket| socket.id == id) {
                return Ok(Response::new(wire::GetSocketResponse {
                    socket: Some(socket(found)),
                }));
            }
        }
        Err(not_found("socket", id))
    }
}
