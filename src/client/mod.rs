//! The client side: [`Channel`], which generated clients call through.

mod channel;
mod connection;
mod deadline;

pub use channel::{Channel, ChannelBuilder, ResponseFuture};
pub(crate) use connection::Connector;
pub(crate) use connection::{DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT};
