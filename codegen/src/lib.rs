//! Code generator of [meshless](https://docs.rs/meshless): compiles `.proto` files into typed
//! Rust stubs, from a build script, with no `protoc` and no system package.
//!
//! For every service it writes what tonic-build writes (the standard gRPC client and server,
//! so nothing tonic can do is lost), and next to it:
//!
//! - `{Service}Handler`: a trait with one plain `async fn` per request-response RPC, which the
//!   producer implements;
//! - `{Service}Service`: the tonic service that serves a handler, for `meshless::Server` or
//!   `tonic::transport::Server`;
//! - `{Service}Client`: a typed client built from a target string such as
//!   `dns:///users.service.consul:50051`, whose methods take `&self`.
//!
//! Server-streaming RPCs marked `option (meshless.v1.event)` are event RPCs. The generator
//! checks that they take `meshless.v1.Subscribe` and that their message leaves the metadata
//! field free, and writes for them:
//!
//! - `{Service}Publisher`: one non-blocking `publish_{event}` per event RPC; the
//!   `{Service}Service` serves the event RPCs from it;
//! - `{Event}Observer`: one trait per event RPC, with one plain `async fn`;
//! - `{Service}Observer`: subscribes the observers given to it on every instance of a target.
//!
//! `meshless/v1/meshless.proto` is built in; import it without copying it.
//!
//! # Example
//!
//! ```no_run
//! // build.rs
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     meshless_build::compile_protos("proto/users.proto")?;
//!     // or, with several files and include paths:
//!     meshless_build::configure()
//!         .build_client(true)
//!         .compile_protos(&["proto/signup/v1/users.proto"], &["proto"])?;
//!     Ok(())
//! }
//! ```
//!
//! Then, in the crate: `mod users { meshless::include_proto!("signup.v1"); }`.
//!
//! Generated code reaches tonic and prost only through `meshless`'s re-exports, so the crate
//! needs no dependency on them (and one that has them is not disturbed).
//!
//! # Errors
//!
//! Problems in the `.proto` files are reported as `file:line:col: what is wrong` with a hint,
//! never as a panic or a rustc error inside generated code: syntax errors, missing imports,
//! undefined types, misdeclared event RPCs, a reserved field number in an event message, and
//! names that `protoc` would reject although the pure-Rust compiler accepts them.

mod builder;
mod client;
mod compile;
mod docs;
mod error;
mod events;
mod generator;
mod keys;
mod model;
mod rewrite;
mod server;
mod validate;

pub use builder::{compile_protos, configure, Builder, DEFAULT_INCLUDE_FILE};
pub use error::{Error, ErrorKind};

/// The import name of meshless's own proto file, always available to `import`.
pub const MESHLESS_PROTO_NAME: &str = "meshless/v1/meshless.proto";

/// The text of `meshless/v1/meshless.proto`: the event annotation and the wire messages.
pub const MESHLESS_PROTO: &str = include_str!("../proto/meshless/v1/meshless.proto");

/// The field number that carries event metadata in every event message; event messages must
/// not use it.
pub const EVENT_METADATA_FIELD: u32 = model::EVENT_METADATA_FIELD;
