//! Rules that valid protobuf must also follow to be a meshless service, checked before any
//! code is generated so that mistakes surface as `file:line:col` errors, not as rustc errors
//! inside generated code.

use prost_reflect::{MethodDescriptor, ServiceDescriptor};

use crate::compile::{place, source_text, Compiled};
use crate::keys;
use crate::model::{event_options, routing_key, EVENT_METADATA_FIELD, SUBSCRIBE_MESSAGE};
use crate::{Error, ErrorKind};

// Field numbers in descriptor.proto, for source locations.
const FILE_SERVICE: i32 = 6;
const SERVICE_METHOD: i32 = 2;
const METHOD_INPUT_TYPE: i32 = 2;
const METHOD_OUTPUT_TYPE: i32 = 3;
const METHOD_OPTIONS: i32 = 4;
const EVENT_OPTION: i32 = 50901;
const ROUTING_OPTION: i32 = 50902;

/// Checks every service of the files that code is generated for; all problems are reported
/// together, one per line.
pub(crate) fn validate(compiled: &Compiled) -> Result<(), Error> {
    let mut problems = Vec::new();
    for file in &compiled.to_generate.file {
        let Some(file) = compiled.pool.get_file_by_name(file.name()) else {
            continue;
        };
        // `ServiceDescriptor::index` counts services over the whole pool; source locations
        // count them within their file.
        for (index_in_file, service) in file.services().enumerate() {
            check_service(compiled, &service, index_in_file, &mut problems);
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::Rule, problems.join("\n")))
    }
}

fn check_service(
    compiled: &Compiled,
    service: &ServiceDescriptor,
    index_in_file: usize,
    problems: &mut Vec<String>,
) {
    let file = service.parent_file();
    for method in service.methods() {
        let method_path = [
            FILE_SERVICE,
            index_in_file as i32,
            SERVICE_METHOD,
            method.index() as i32,
        ];
        let here = place(compiled, &file, &method_path);

        for (field, written_path) in [
            (METHOD_INPUT_TYPE, "request"),
            (METHOD_OUTPUT_TYPE, "response"),
        ] {
            let type_path = [&method_path[..], &[field]].concat();
            if let Some(problem) =
                shadowed_type(compiled, service, &method, &type_path, written_path)
            {
                problems.push(format!("{}: {problem}", place(compiled, &file, &type_path)));
            }
        }

        // Where an option is written: the option itself when the source says, else the rpc.
        let option_place = |option: i32| {
            let option_path = [&method_path[..], &[METHOD_OPTIONS, option]].concat();
            let at = place(compiled, &file, &option_path);
            if at.contains(':') {
                at
            } else {
                here.clone()
            }
        };
        let name = method.name();

        if let Some(key) = routing_key(compiled, &method) {
            if event_options(compiled, &method).is_some() || method.is_client_streaming() {
                problems.push(format!(
                    "{}: rpc `{name}` has `option (meshless.v1.routing)`, which only unary and \
                     server-streaming RPCs may have (a routing key is read from the one request)\n  \
                     help: remove the option; event RPCs declare a key with \
                     `option (meshless.v1.event) = {{ key: \"...\" }}`",
                    option_place(ROUTING_OPTION)
                ));
            } else if let Err(problem) = keys::resolve(&method.input(), &key) {
                problems.push(format!(
                    "{}: rpc `{name}`: routing {problem}\n  help: name a field of `{}`, \
                     with dots for fields of its message fields",
                    option_place(ROUTING_OPTION),
                    method.input().full_name()
                ));
            }
        }

        let Some(options) = event_options(compiled, &method) else {
            continue;
        };
        if options.compact_by_key && options.key.is_empty() {
            problems.push(format!(
                "{}: event rpc `{name}` asks for `compact_by_key` but has no `key`: compaction \
                 keeps the latest event of every key\n  help: name the event's key, as in \
                 `option (meshless.v1.event) = {{ key: \"order.order_id\", compact_by_key: true }}`, \
                 or remove `compact_by_key`",
                option_place(EVENT_OPTION)
            ));
        }
        if !options.key.is_empty() {
            if let Err(problem) = keys::resolve(&method.output(), &options.key) {
                problems.push(format!(
                    "{}: event rpc `{name}`: {problem}\n  help: name a field of `{}`, with dots \
                     for fields of its message fields",
                    option_place(EVENT_OPTION),
                    method.output().full_name()
                ));
            }
        }
        if method.is_client_streaming() || !method.is_server_streaming() {
            problems.push(format!(
                "{here}: rpc `{name}` has `option (meshless.v1.event)` but is not a server-streaming RPC\n  \
                 help: declare it as `rpc {name}({SUBSCRIBE_MESSAGE}) returns (stream {}) {{ option (meshless.v1.event) = {{}}; }}`",
                method.output().name()
            ));
            continue;
        }
        if method.input().full_name() != SUBSCRIBE_MESSAGE {
            problems.push(format!(
                "{here}: event rpc `{name}` takes `{}`, but event RPCs take `{SUBSCRIBE_MESSAGE}`\n  \
                 help: declare it as `rpc {name}({SUBSCRIBE_MESSAGE}) returns (stream {})`",
                method.input().full_name(),
                method.output().name()
            ));
        }
        let event = method.output();
        if let Some(field) = event.get_field(EVENT_METADATA_FIELD) {
            let field_path = field.path().to_vec();
            problems.push(format!(
                "{}: field `{}` of event message `{}` uses number {EVENT_METADATA_FIELD}, which \
                 meshless reserves for event metadata\n  help: give the field another number",
                place(compiled, &event.parent_file(), &field_path),
                field.name(),
                event.full_name(),
            ));
        }
    }
}

/// protoc looks a type name up in the service's scope first, where an rpc of the same name
/// hides the message: `returns (stream UserSignedUp)` next to `rpc UserSignedUp` is accepted by
/// protox but rejected by protoc ("is not a message type"), and so by other languages' tools.
fn shadowed_type(
    compiled: &Compiled,
    service: &ServiceDescriptor,
    method: &MethodDescriptor,
    type_path: &[i32],
    role: &str,
) -> Option<String> {
    let message = if role == "request" {
        method.input()
    } else {
        method.output()
    };
    let written = source_text(compiled, &service.parent_file(), type_path)
        .map(|text| {
            let text = text.trim();
            text.strip_prefix("stream ")
                .unwrap_or(text)
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|| {
            let package = service.package_name();
            let full = message.full_name();
            full.strip_prefix(package)
                .map(|rest| rest.trim_start_matches('.'))
                .unwrap_or(full)
                .to_owned()
        });
    if written.starts_with('.') {
        return None;
    }
    let first = written.split('.').next()?;
    let shadowing = service.methods().find(|m| m.name() == first)?;
    Some(format!(
        "the {role} type `{written}` of rpc `{}` has the name of rpc `{}` in the same service: \
         protoc (and every other language's tooling) resolves it to the rpc and rejects the file\n  \
         help: rename the message (for example `{}Event`) or the rpc, or write the type fully \
         qualified as `.{}`",
        method.name(),
        shadowing.name(),
        message.name(),
        message.full_name(),
    ))
}
