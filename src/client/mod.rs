//! The client side: [`Channel`], which generated clients call through.

mod channel;
mod deadline;

pub use channel::{Channel, ChannelBuilder, ResponseFuture};
