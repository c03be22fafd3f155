//! The client side: [`Channel`], which generated clients call through.

mod call;
mod channel;
mod connection;
mod deadline_body;

pub use channel::{Channel, ChannelBuilder, ResponseFuture, DEFAULT_TIMEOUT};
pub(crate) use connection::Connector;
pub use connection::{DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT};
