//! The client side: [`Channel`], which generated clients call through.

mod attempt;
mod budget;
mod call;
mod channel;
mod deadline_body;
mod outcome;
pub(crate) mod routing;

pub use crate::endpoint::{DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT};
pub use channel::{Channel, ChannelBuilder, ResponseFuture, DEFAULT_TIMEOUT};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
