//! Gathering: every instance's `GetStatus`, asked at once, each with a timeout, and the facts
//! derived from all of them (consumer groups per producer, ejected instances per process).
//!
//! Servers of one process report the same channels (the channels are the process's), so
//! channels are taken once per process, told apart by the random id each process draws
//! (`InstanceStatus.process`), or by (host, process id) for servers that do not send one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use meshless::admin::v1::{AdminClient, GetStatusRequest, InstanceStatus};

use crate::args::Headers;
use crate::error::status_text;
use crate::resolve::channel_to;

/// What one `meshless status` found.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    /// The target, as given.
    pub(crate) target: String,
    /// Every instance the target resolved to, by address, with its status or why there is
    /// none.
    pub(crate) instances: Vec<Instance>,
    /// Every consumer group on every producer, sorted by (rpc, group, producer).
    pub(crate) groups: Vec<Group>,
    /// Every ejected instance in every process's channels, sorted.
    pub(crate) ejected: Vec<Ejected>,
}

/// One instance of the target.
#[derive(Debug, Clone)]
pub(crate) struct Instance {
    pub(crate) address: SocketAddr,
    pub(crate) status: Result<InstanceStatus, String>,
}

/// One consumer group on one producer instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Group {
    pub(crate) rpc: String,
    pub(crate) group: String,
    pub(crate) producer: SocketAddr,
    pub(crate) members: usize,
    pub(crate) unacknowledged: u64,
    pub(crate) held_keys: u64,
    pub(crate) lag: u64,
    pub(crate) acknowledged_through: u64,
    pub(crate) last_acknowledgement_ms_ago: Option<u64>,
}

/// A process: the servers of the target found in it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Process {
    pub(crate) host: String,
    pub(crate) process_id: u32,
    /// The target's instances served by this process.
    pub(crate) servers: Vec<SocketAddr>,
}

/// An instance that a process's channel has ejected.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Ejected {
    /// The ejected instance's address.
    pub(crate) instance: String,
    /// The channel's target.
    pub(crate) target: String,
    /// The process whose channel ejected it.
    pub(crate) process: Process,
    /// For how much longer.
    pub(crate) ejected_for_ms: u64,
    /// Why.
    pub(crate) because: String,
}

/// Asks every instance in `addresses` for its status, at once, each for at most `timeout`.
pub(crate) async fn gather(
    target: &str,
    addresses: &[SocketAddr],
    timeout: Duration,
    headers: &Headers,
) -> Report {
    let asks: Vec<_> = addresses
        .iter()
        .map(|&address| tokio::spawn(ask(address, timeout, headers.clone())))
        .collect();
    let mut instances = Vec::with_capacity(asks.len());
    for (ask, &address) in asks.into_iter().zip(addresses) {
        let status = ask
            .await
            .unwrap_or_else(|error| Err(format!("{address}: {error}")));
        instances.push(Instance { address, status });
    }
    instances.sort_by_key(|instance| instance.address);
    derive(target, instances)
}

async fn ask(
    address: SocketAddr,
    timeout: Duration,
    headers: Headers,
) -> Result<InstanceStatus, String> {
    let channel = channel_to(address, timeout, &headers)
        .await
        .map_err(|error| error.to_string())?;
    let client = AdminClient::new(channel);
    match tokio::time::timeout(timeout, client.get_status(GetStatusRequest {})).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Err(format!(
            "{address} does not serve meshless.admin.v1.Admin: enable it with Server::admin(true)"
        )),
        Ok(Err(status)) => Err(format!("{address}: {}", status_text(&status))),
        Err(_) => Err(format!("{address}: no answer within {timeout:?}")),
    }
}

/// The groups and ejections of a set of statuses.
pub(crate) fn derive(target: &str, instances: Vec<Instance>) -> Report {
    let mut groups = Vec::new();
    for instance in &instances {
        let Ok(status) = &instance.status else {
            continue;
        };
        for rpc in &status.event_rpcs {
            for group in &rpc.groups {
                groups.push(Group {
                    rpc: rpc.rpc.clone(),
                    group: group.name.clone(),
                    producer: instance.address,
                    members: group.members.len(),
                    unacknowledged: group.unacknowledged,
                    held_keys: group.held_keys,
                    lag: group.lag,
                    acknowledged_through: group.acknowledged_through,
                    last_acknowledgement_ms_ago: group.last_acknowledgement_ms_ago,
                });
            }
        }
    }
    groups.sort_by(|a, b| (&a.rpc, &a.group, a.producer).cmp(&(&b.rpc, &b.group, b.producer)));

    // One status per process: the first of its servers (by address) speaks for it.
    let mut processes: BTreeMap<(String, u32, String), (Vec<SocketAddr>, &InstanceStatus)> =
        BTreeMap::new();
    for instance in &instances {
        let Ok(status) = &instance.status else {
            continue;
        };
        processes
            .entry((
                status.host.clone(),
                status.process_id,
                status.process.clone(),
            ))
            .or_insert_with(|| (Vec::new(), status))
            .0
            .push(instance.address);
    }
    let mut ejected = Vec::new();
    for ((host, process_id, _), (servers, status)) in &processes {
        let process = Process {
            host: host.clone(),
            process_id: *process_id,
            servers: servers.clone(),
        };
        for channel in &status.channels {
            for instance in channel.instances.iter().filter(|i| i.ejected) {
                ejected.push(Ejected {
                    instance: instance.address.clone(),
                    target: channel.target.clone(),
                    process: process.clone(),
                    ejected_for_ms: instance.ejected_for_ms,
                    because: instance.ejected_because.clone(),
                });
            }
        }
    }
    ejected.sort();
    Report {
        target: target.to_owned(),
        instances,
        groups,
        ejected,
    }
}

impl Report {
    /// Why instances did not answer, one line each.
    pub(crate) fn errors(&self) -> Vec<&str> {
        self.instances
            .iter()
            .filter_map(|instance| instance.status.as_ref().err().map(String::as_str))
            .collect()
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use meshless::admin::v1::{ChannelInstanceStatus, ChannelStatus};

    /// A status from `process` on host `h`, PID 1, whose channel ejected `10.0.0.9:1`.
    fn status(process: &str) -> InstanceStatus {
        InstanceStatus {
            host: "h".into(),
            process_id: 1,
            process: process.into(),
            channels: vec![ChannelStatus {
                target: "dns:///x".into(),
                instances: vec![ChannelInstanceStatus {
                    address: "10.0.0.9:1".into(),
                    ejected: true,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn channels_are_taken_once_per_process_told_apart_by_its_random_id() {
        let instance = |port: u16, process: &str| Instance {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            status: Ok(status(process)),
        };
        // Two containers with the same host name and PID: two processes.
        let report = derive("t", vec![instance(1, "aa"), instance(2, "bb")]);
        assert_eq!(report.ejected.len(), 2);
        // Two servers of one process: one.
        let report = derive("t", vec![instance(1, "aa"), instance(2, "aa")]);
        assert_eq!(report.ejected.len(), 1);
        assert_eq!(report.ejected[0].process.servers.len(), 2);
    }
}
