//! [`AdminStatus`]: the `meshless.admin.v1.Admin` service of a server: its event RPCs (from
//! its publishers) and the channels of the process (from the registry).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};

use super::registry::{self, ServerEntry};
use super::v1 as wire;
use crate::balance::{InstanceSet, State};
use crate::discovery::DiscoveryStatus;
use crate::events::Publisher;

/// The admin service of one server.
#[derive(Debug)]
pub(crate) struct AdminStatus(Arc<Sources>);

/// What the admin view is read from.
#[derive(Debug)]
struct Sources {
    server: Arc<ServerEntry>,
    services: Vec<String>,
    publishers: Vec<Publisher>,
}

impl AdminStatus {
    pub(crate) fn new(
        server: Arc<ServerEntry>,
        services: Vec<String>,
        publishers: Vec<Publisher>,
    ) -> Self {
        Self(Arc::new(Sources {
            server,
            services,
            publishers,
        }))
    }

    pub(crate) fn into_service(self) -> wire::AdminService<Self> {
        wire::AdminService::new(self)
    }
}

impl Sources {
    fn status(&self) -> wire::InstanceStatus {
        let mut event_rpcs: Vec<wire::EventRpcStatus> = self
            .publishers
            .iter()
            .flat_map(Publisher::admin_status)
            .collect();
        event_rpcs.sort_by(|a, b| a.rpc.cmp(&b.rpc));
        let mut channels: Vec<wire::ChannelStatus> = registry::channels()
            .iter()
            .map(|(_, instances, calls)| channel(instances, calls.read()))
            .collect();
        channels.sort_by(|a, b| a.target.cmp(&b.target));
        wire::InstanceStatus {
            listen_address: self
                .server
                .listen
                .map(|addr| addr.to_string())
                .unwrap_or_default(),
            services: self.services.clone(),
            event_rpcs,
            channels,
            uptime_ms: millis(self.server.started.elapsed()),
            process_id: std::process::id(),
            host: host_name(),
            process: registry::process_token().to_owned(),
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The host's name, as the kernel has it (Linux), else from `HOSTNAME`; empty if neither.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
}

fn channel(instances: &InstanceSet, calls: registry::Calls) -> wire::ChannelStatus {
    let mut members = instances.instances();
    members.sort_by(|(a, _), (b, _)| a.key.cmp(&b.key));
    let (discovered, answered) = instances.last_answer();
    let (state, detail) = match discovered {
        DiscoveryStatus::Static => ("static", String::new()),
        DiscoveryStatus::Pending => ("pending", String::new()),
        DiscoveryStatus::Resolved { .. } => ("resolved", String::new()),
        DiscoveryStatus::NoInstances { reason } => ("no_instances", reason),
        DiscoveryStatus::Failing { error, .. } => ("failing", error),
    };
    wire::ChannelStatus {
        target: instances.target().to_owned(),
        discovery: Some(wire::DiscoveryStatus {
            state: state.to_owned(),
            detail,
            addresses: members
                .iter()
                .map(|(instance, _)| instance.key.clone())
                .collect(),
            answered_ms_ago: answered
                .map(|at| millis(Instant::now().duration_since(at.into_std()))),
        }),
        instances: members
            .iter()
            .map(|(instance, ready)| {
                let instance_calls = instance.calls.read();
                let ejection = instance.ejection();
                let placement = instance.placement();
                wire::ChannelInstanceStatus {
                    address: instance.key.clone(),
                    connection: match instance.state() {
                        State::Connecting => "connecting",
                        State::Ready => "ready",
                        State::Failed => "failed",
                    }
                    .to_owned(),
                    ready: *ready,
                    ejected: ejection.is_some(),
                    ejected_for_ms: ejection.as_ref().map_or(0, |(left, _)| millis(*left)),
                    ejected_because: ejection.map(|(_, because)| because).unwrap_or_default(),
                    latency_ewma_ms: instance.latency().as_secs_f64() * 1e3,
                    in_flight: instance.in_flight() as u64,
                    calls_started: instance_calls.started,
                    calls_succeeded: instance_calls.succeeded,
                    calls_failed: instance_calls.failed,
                    priority: placement.priority.into(),
                    weight: placement.weight.into(),
                    last_error: instance.last_error().unwrap_or_default(),
                }
            })
            .collect(),
        calls_started: calls.started,
        calls_succeeded: calls.succeeded,
        calls_failed: calls.failed,
    }
}

impl wire::AdminHandler for AdminStatus {
    async fn get_status(
        &self,
        _request: Request<wire::GetStatusRequest>,
    ) -> Result<Response<wire::InstanceStatus>, Status> {
        // It reads files (the sizes of event logs, the host name): off the async workers.
        let sources = self.0.clone();
        let status = tokio::task::spawn_blocking(move || sources.status())
            .await
            .map_err(|e| Status::internal(format!("gathering the admin view: {e}")))?;
        Ok(Response::new(status))
    }
}
