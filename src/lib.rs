//! meshless: gRPC microservices with smart endpoints and dumb pipes.
//!
//! Services declare their API in `.proto` files. `meshless-build` turns them into typed Rust:
//! a handler trait the producer implements with plain `async fn`s, a service to serve it, and a
//! client built from a target string. Everything on the wire is standard gRPC, so any gRPC
//! client or server in any language can take part.
//!
//! - [`Server`] serves generated services (and any tonic service), with the gRPC health
//!   service, server reflection and graceful shutdown.
//! - [`Channel`] finds the instances of a [`Target`] (`dns:` A/AAAA records, `dns+srv:` SRV
//!   records, `ipv4:`/`ipv6:` lists, `http://host:port`) through [`discovery`], and spreads
//!   calls over them with power of two choices over calls in flight, skipping instances whose
//!   connection failed. No load balancer in between. A method with a routing key
//!   (`option (meshless.v1.routing)`) sends the calls of one key to one instance.
//! - [`events`] serves event RPCs from a publisher (encode once, retention for resume, never a
//!   silent gap) and runs observers that subscribe to every producer instance, alone or in
//!   consumer groups; events with a key are handled in order per key, keys in parallel. No
//!   broker.
//! - [`admin`]: what each process can tell operators, served on request
//!   ([`Server::admin`], [`Server::channelz`]): gRPC channelz, and meshless's admin service
//!   (event RPCs, consumer groups and their lag, instances and ejections), which the `meshless`
//!   command line (`cli/`) reads from every instance of a target.
//!
//! # Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `testing` | `testing::TestDns`, an in-process DNS server whose records tests change at run time |
//! | `tls` | TLS and mutual TLS with rustls for servers, clients and observers (`meshless::tls`) |
//! | `opentelemetry` | W3C trace context through calls and events: server spans continue their caller's trace, observers' spans (for events published in a sampled span; other events are handled without one) link to the publisher's (through `tracing-opentelemetry`; see the README) |
//! | `postgres` | events kept in the service's own PostgreSQL database and published inside its sqlx transactions: `{Service}Publisher::open_postgres`, `publish_*_in`; observers' cursors there, written in the handler's transaction: `PgCursors` (`meshless::events::postgres`; see the README) |
//!
//! # Example
//!
//! With `proto/signup/v1/users.proto` declaring
//! `service Users { rpc SignUp(SignUpRequest) returns (SignUpReply); rpc UserSignedUp(meshless.v1.Subscribe) returns (stream UserSignedUpEvent) { option (meshless.v1.event) = { retain: 10000 }; } }`
//! and `meshless_build::compile_protos("proto/signup/v1/users.proto")` in `build.rs`:
//!
//! ```no_run
//! mod users {
//!     meshless::include_proto!("signup.v1");
//! }
//! use meshless::events::{Event, HandlerError, ObserverOptions};
//! use users::{
//!     SignUpReply, SignUpRequest, User, UserSignedUpEvent, UserSignedUpObserver, UsersClient,
//!     UsersHandler, UsersObserver, UsersPublisher, UsersService,
//! };
//!
//! /// The producer: answers calls and publishes an event for each sign-up.
//! struct Users {
//!     events: UsersPublisher,
//! }
//!
//! impl UsersHandler for Users {
//!     async fn sign_up(
//!         &self,
//!         request: meshless::Request<SignUpRequest>,
//!     ) -> Result<meshless::Response<SignUpReply>, meshless::Status> {
//!         let request = request.into_inner();
//!         let user = User { id: 1, email: request.email, name: request.name };
//!         // Never blocks on observers; fails only if the event cannot be kept.
//!         self.events
//!             .publish_user_signed_up(UserSignedUpEvent { user: Some(user) })
//!             .map_err(meshless::Status::from)?;
//!         Ok(meshless::Response::new(SignUpReply { id: 1 }))
//!     }
//!
//!     async fn get_user(
//!         &self,
//!         _request: meshless::Request<users::GetUserRequest>,
//!     ) -> Result<meshless::Response<User>, meshless::Status> {
//!         Err(meshless::Status::not_found("no such user"))
//!     }
//! }
//!
//! /// An observing service: gets every sign-up from every Users instance.
//! struct WelcomeEmail;
//!
//! impl UserSignedUpObserver for WelcomeEmail {
//!     async fn user_signed_up(&self, event: Event<UserSignedUpEvent>) -> Result<(), HandlerError> {
//!         let user = event.user.as_ref().ok_or("a sign-up without its user")?;
//!         println!("welcome, {}", user.email);
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let publisher = UsersPublisher::new();
//! let users = Users { events: publisher.clone() };
//! tokio::spawn(
//!     meshless::Server::builder()
//!         .add_service(UsersService::with_publisher(users, publisher))
//!         .serve("127.0.0.1:50051".parse()?),
//! );
//!
//! // Every instance `users.service.consul` lists (SRV records), one consumer group.
//! let target = "dns+srv:users.service.consul";
//! let observer = UsersObserver::new()
//!     .user_signed_up(WelcomeEmail)
//!     .options(ObserverOptions::default().consumer_group("welcome-email"))
//!     .start(target)
//!     .await?;
//!
//! // Calls go straight to one instance, picked by the client.
//! let client = UsersClient::connect(target).await?;
//! let reply = client
//!     .sign_up(SignUpRequest { email: "ada@example.com".into(), name: "Ada".into() })
//!     .await?;
//! println!("signed up as {}", reply.into_inner().id);
//! observer.stop().await;
//! # Ok(())
//! # }
//! ```
//!
//! The README has the whole guide; `examples/signup.rs` runs it.

// Generated code names this crate `::meshless`, in here too.
extern crate self as meshless;

pub mod admin;
mod backoff;
mod balance;
mod client;
mod deadline;
pub mod discovery;
mod endpoint;
mod error;
pub mod events;
mod extra_metadata;
mod keys;
mod peer;
mod refused;
pub mod server;
pub mod target;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
mod text;
#[cfg(feature = "tls")]
pub mod tls;
mod trace_context;
pub mod v1;

#[doc(hidden)]
pub mod codegen;

pub use client::{
    Channel, ChannelBuilder, ResponseFuture, DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_TIMEOUT,
};
pub use deadline::Deadline;
pub use error::Error;
pub use peer::PeerIdentity;
pub use server::Server;
pub use target::{Target, TargetError};

pub use tonic::metadata;

/// The largest message generated services and clients send or accept, in either direction,
/// unless told otherwise (`max_decoding_message_size`, `max_encoding_message_size`): 4 MiB. A
/// larger one fails with `RESOURCE_EXHAUSTED`.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;
pub use tonic::{Code, IntoRequest, IntoStreamingRequest, Request, Response, Status, Streaming};

/// Includes the code generated for one protobuf package, as `tonic::include_proto!` does.
///
/// ```no_run
/// pub mod users {
///     meshless::include_proto!("signup.v1");
/// }
/// ```
///
/// Generated code refers to other packages through `super::`, so a package that uses
/// another package's types must sit in modules that mirror the package names
/// (`pub mod signup { pub mod v1 { meshless::include_proto!("signup.v1"); } }`), or be
/// included with [`include_protos!`].
#[macro_export]
macro_rules! include_proto {
    ($package:tt) => {
        include!(concat!(env!("OUT_DIR"), concat!("/", $package, ".rs")));
    };
}

/// Includes the code generated for every package, in modules that mirror the package names
/// (`signup.v1` becomes `signup::v1`), so packages that refer to each other compile.
///
/// ```no_run
/// meshless::include_protos!();
/// use signup::v1::UsersClient;
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! include_protos {
    () => {
        include!(concat!(env!("OUT_DIR"), "/_meshless_includes.rs"));
    };
}
