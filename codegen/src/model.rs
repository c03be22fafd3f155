//! What the generators need to know about a service, gathered from prost-build's view (Rust
//! names and types) and the descriptor pool (custom options).

use prost_reflect::{MethodDescriptor, Value};

use crate::compile::Compiled;
use crate::keys::{self, KeyField};

/// Full name of the request message of every event RPC.
pub(crate) const SUBSCRIBE_MESSAGE: &str = "meshless.v1.Subscribe";
/// Full name of the method option that marks event RPCs.
pub(crate) const EVENT_EXTENSION: &str = "meshless.v1.event";
/// Full name of the method option that routes calls by a key of the request.
pub(crate) const ROUTING_EXTENSION: &str = "meshless.v1.routing";
/// Field number that carries event metadata in every event message.
pub(crate) const EVENT_METADATA_FIELD: u32 = 536_870_000;

/// The options of an event RPC, read from `option (meshless.v1.event)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventOptions {
    /// `retain`, 0 when unset (the runtime's default applies).
    pub(crate) retain: u64,
    /// `key`, as written; empty when unset.
    pub(crate) key: String,
    /// `compact_by_key`: keep the latest event of every key past `retain`.
    pub(crate) compact_by_key: bool,
}

/// The event options of `method`, or `None` when it is not an event RPC.
pub(crate) fn event_options(
    compiled: &Compiled,
    method: &MethodDescriptor,
) -> Option<EventOptions> {
    let extension = compiled.pool.get_extension_by_name(EVENT_EXTENSION)?;
    let options = method.options();
    if !options.has_extension(&extension) {
        return None;
    }
    let (retain, key, compact_by_key) = match &*options.get_extension(&extension) {
        Value::Message(message) => (
            message
                .get_field_by_name("retain")
                .and_then(|value| value.as_u64())
                .unwrap_or(0),
            message
                .get_field_by_name("key")
                .and_then(|value| value.as_str().map(str::to_owned))
                .unwrap_or_default(),
            message
                .get_field_by_name("compact_by_key")
                .and_then(|value| value.as_bool())
                .unwrap_or(false),
        ),
        _ => (0, String::new(), false),
    };
    Some(EventOptions {
        retain,
        key,
        compact_by_key,
    })
}

/// The routing key of `method` as written in `option (meshless.v1.routing)`, or `None` when it
/// has none (or an empty one).
pub(crate) fn routing_key(compiled: &Compiled, method: &MethodDescriptor) -> Option<String> {
    let extension = compiled.pool.get_extension_by_name(ROUTING_EXTENSION)?;
    let options = method.options();
    if !options.has_extension(&extension) {
        return None;
    }
    match &*options.get_extension(&extension) {
        Value::Message(message) => message
            .get_field_by_name("key")
            .and_then(|value| value.as_str().map(str::to_owned))
            .filter(|key| !key.is_empty()),
        _ => None,
    }
}

/// How a method is called and served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Shape {
    Unary,
    ServerStreaming,
    ClientStreaming,
    Streaming,
    /// A server-streaming RPC marked `option (meshless.v1.event)`: served by the framework.
    Event(EventOptions),
}

/// One RPC of a service, as the generators see it.
#[derive(Debug, Clone)]
pub(crate) struct Method {
    /// The name in the `.proto` file, `SignUp`.
    pub(crate) proto_name: String,
    /// The Rust method name, `sign_up`.
    pub(crate) name: String,
    /// Rust paths of the request and response messages, relative to the package module.
    pub(crate) input_type: String,
    pub(crate) output_type: String,
    /// The response message's full proto name, `.package.Message`.
    pub(crate) output_message: String,
    pub(crate) shape: Shape,
    /// Doc comment lines from the `.proto` file.
    pub(crate) docs: Vec<String>,
    pub(crate) deprecated: bool,
    /// `option idempotency_level = IDEMPOTENT` (or `NO_SIDE_EFFECTS`): safe to call again.
    pub(crate) idempotent: bool,
    /// An event RPC's key in the event message, or a unary RPC's routing key in the request.
    pub(crate) key: Option<KeyField>,
}

/// One service, as the generators see it.
#[derive(Debug, Clone)]
pub(crate) struct Service {
    /// The name in the `.proto` file, `Users`.
    pub(crate) proto_name: String,
    /// `package.Service`, the gRPC service name.
    pub(crate) full_name: String,
    /// The Rust module tonic generates for its server, `users_server`.
    pub(crate) tonic_server_module: String,
    /// The Rust module tonic generates for its client, `users_client`.
    pub(crate) tonic_client_module: String,
    pub(crate) docs: Vec<String>,
    pub(crate) methods: Vec<Method>,
}

impl Service {
    pub(crate) fn new(compiled: &Compiled, service: &prost_build::Service) -> Self {
        let full_name = if service.package.is_empty() {
            service.proto_name.clone()
        } else {
            format!("{}.{}", service.package, service.proto_name)
        };
        let descriptor = compiled.pool.get_service_by_name(&full_name);
        let methods = service
            .methods
            .iter()
            .map(|method| {
                let reflected = descriptor
                    .as_ref()
                    .and_then(|d| d.methods().find(|m| m.name() == method.proto_name));
                let event = reflected.as_ref().and_then(|m| event_options(compiled, m));
                // Checked by `validate` before anything is generated.
                let key = reflected.as_ref().and_then(|m| match &event {
                    Some(options) if !options.key.is_empty() => {
                        keys::resolve(&m.output(), &options.key).ok()
                    }
                    Some(_) => None,
                    None => routing_key(compiled, m)
                        .and_then(|key| keys::resolve(&m.input(), &key).ok()),
                });
                let shape = match (event, method.client_streaming, method.server_streaming) {
                    (Some(options), false, true) => Shape::Event(options),
                    (_, false, false) => Shape::Unary,
                    (_, false, true) => Shape::ServerStreaming,
                    (_, true, false) => Shape::ClientStreaming,
                    (_, true, true) => Shape::Streaming,
                };
                Method {
                    proto_name: method.proto_name.clone(),
                    name: method.name.clone(),
                    input_type: method.input_type.clone(),
                    output_type: method.output_type.clone(),
                    output_message: reflected
                        .as_ref()
                        .map(|m| format!(".{}", m.output().full_name()))
                        .unwrap_or_default(),
                    shape,
                    docs: doc_lines(&method.comments),
                    deprecated: method.options.deprecated(),
                    idempotent: method.options.idempotency_level()
                        != prost_types::method_options::IdempotencyLevel::IdempotencyUnknown,
                    key,
                }
            })
            .collect();
        let snake = to_snake_case(&service.name);
        Self {
            proto_name: service.proto_name.clone(),
            full_name,
            tonic_server_module: format!("{snake}_server"),
            tonic_client_module: format!("{snake}_client"),
            docs: doc_lines(&service.comments),
            methods,
        }
    }

    pub(crate) fn has_events(&self) -> bool {
        self.methods
            .iter()
            .any(|m| matches!(m.shape, Shape::Event(_)))
    }
}

fn doc_lines(comments: &prost_build::Comments) -> Vec<String> {
    comments
        .leading
        .iter()
        .chain(&comments.trailing)
        .map(|line| line.strip_prefix(' ').unwrap_or(line).to_owned())
        .collect()
}

/// `UsersService` -> `users_service`, exactly as tonic-build names its modules.
fn to_snake_case(name: &str) -> String {
    let mut snake = String::with_capacity(name.len() + 4);
    let mut chars = name.chars().peekable();
    while let Some(ch) = chars.next() {
        snake.push(ch.to_ascii_lowercase());
        if chars.peek().is_some_and(|next| next.is_uppercase()) {
            snake.push('_');
        }
    }
    snake
}
