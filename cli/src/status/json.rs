//! The report as one JSON object, for scripts: every instance with its full status (the admin
//! service's messages with their proto field names, 64-bit integers as numbers, fields at
//! their default values included), plus the derived `groups` and `ejected` lists. Keys are
//! sorted, rows in the tables' order.
//!
//! Epochs are strings of their decimal digits, as protobuf's JSON writes 64-bit integers: they
//! are random 64-bit numbers, which jq and JavaScript would round to the nearest double.
//! Counts and sequences stay numbers.

use std::sync::OnceLock;

use meshless::admin::v1::InstanceStatus;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::{json, Value};

use super::gather::{Process, Report};

/// The whole report as JSON.
pub(crate) fn render(report: &Report) -> Value {
    let instances: Vec<Value> = report
        .instances
        .iter()
        .map(|instance| match &instance.status {
            Ok(status) => json!({
                "address": instance.address.to_string(),
                "status": status_json(status),
            }),
            Err(error) => json!({
                "address": instance.address.to_string(),
                "error": error,
            }),
        })
        .collect();
    let groups: Vec<Value> = report
        .groups
        .iter()
        .map(|group| {
            json!({
                "rpc": group.rpc,
                "group": group.group,
                "producer": group.producer.to_string(),
                "members": group.members,
                "unacknowledged": group.unacknowledged,
                "held_keys": group.held_keys,
                "lag": group.lag,
                "acknowledged_through": group.acknowledged_through,
                "last_acknowledgement_ms_ago": group.last_acknowledgement_ms_ago,
            })
        })
        .collect();
    let ejected: Vec<Value> = report
        .ejected
        .iter()
        .map(|ejected| {
            json!({
                "instance": ejected.instance,
                "target": ejected.target,
                "process": process(&ejected.process),
                "ejected_for_ms": ejected.ejected_for_ms,
                "because": ejected.because,
            })
        })
        .collect();
    json!({
        "target": report.target,
        "instances": instances,
        "groups": groups,
        "ejected": ejected,
        "errors": report.errors(),
    })
}

fn process(process: &Process) -> Value {
    json!({
        "host": process.host,
        "process_id": process.process_id,
        "servers": process.servers.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

/// `InstanceStatus` as JSON through its descriptor, so that every field the admin service has
/// is printed, new ones included.
pub(crate) fn status_json(status: &InstanceStatus) -> Value {
    let options = SerializeOptions::new()
        .stringify_64_bit_integers(false)
        .use_proto_field_name(true)
        .skip_default_fields(false);
    let mut value = DynamicMessage::decode(instance_status(), status.encode_to_vec().as_slice())
        .map_err(|error| error.to_string())
        .and_then(|message| {
            message
                .serialize_with_options(serde_json::value::Serializer, &options)
                .map_err(|error| error.to_string())
        })
        .unwrap_or_else(|error| json!({ "undecodable": error }));
    stringify_epochs(&mut value);
    value
}

/// Every number under a key `epoch` or `..._epoch`, at any depth, as a string.
fn stringify_epochs(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            for (key, field) in fields.iter_mut() {
                if key == "epoch" || key.ends_with("_epoch") {
                    if let Value::Number(number) = field {
                        *field = Value::String(number.to_string());
                        continue;
                    }
                }
                stringify_epochs(field);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(stringify_epochs),
        _ => {}
    }
}

fn instance_status() -> MessageDescriptor {
    static DESCRIPTOR: OnceLock<MessageDescriptor> = OnceLock::new();
    DESCRIPTOR
        .get_or_init(|| {
            DescriptorPool::decode(meshless::admin::v1::FILE_DESCRIPTOR_SET)
                .ok()
                .and_then(|pool| pool.get_message_by_name("meshless.admin.v1.InstanceStatus"))
                .unwrap_or_else(|| unreachable!("meshless.admin.v1's descriptors are built in"))
        })
        .clone()
}

#[cfg(test)]
mod test {
    use super::*;
    use meshless::admin::v1::{EventRpcStatus, GroupStatus};

    #[test]
    fn full_status_with_proto_names_and_numbers() {
        let status = InstanceStatus {
            listen_address: "127.0.0.1:50051".into(),
            event_rpcs: vec![EventRpcStatus {
                rpc: "/a.B/C".into(),
                epoch: u64::MAX,
                groups: vec![GroupStatus {
                    name: "billing".into(),
                    lag: 3,
                    ..GroupStatus::default()
                }],
                ..EventRpcStatus::default()
            }],
            process_id: 42,
            ..InstanceStatus::default()
        };
        let value = status_json(&status);
        assert_eq!(value["listen_address"], "127.0.0.1:50051");
        assert_eq!(value["process_id"], 42);
        assert_eq!(value["uptime_ms"], 0, "default values are printed");
        // Epochs as strings, every digit kept; other 64-bit integers as numbers.
        assert_eq!(value["event_rpcs"][0]["epoch"], "18446744073709551615");
        assert_eq!(value["event_rpcs"][0]["groups"][0]["lag"], 3);
        let text = value.to_string();
        assert!(text.contains(r#""epoch":"18446744073709551615""#), "{text}");
    }
}
