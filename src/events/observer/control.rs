//! Between the supervisor and the instance streams: what it spawns per instance
//! ([`Subscription`], one per event RPC), what it tells each stream ([`Instance`]), and what it
//! gives all of them ([`Shared`]).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use prost::Message;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tonic::transport::Endpoint;

use super::book::Book;
use super::handling::Handler;
use super::options::ObserverOptions;
use super::run::InstanceStream;
use super::subscribe::Remote;

/// What one subscription needs, shared by its instances.
pub(crate) struct Shared {
    pub(crate) options: ObserverOptions,
    pub(crate) handlers: Option<Arc<Semaphore>>,
    /// This observer's name in its consumer group, the same on every producer instance.
    pub(crate) member: String,
    /// Where this observer stands with each producer (plain subscriptions).
    pub(crate) book: Book,
    /// The filters of the event RPCs observed with one, by gRPC path.
    pub(crate) filters: HashMap<&'static str, crate::v1::Filter>,
}

/// What the supervisor says of one producer instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Instance {
    /// In discovery: subscribe, and resubscribe whenever the stream ends.
    Active,
    /// Gone from discovery: read the stream until the producer ends it or it breaks, but at
    /// most until then; never subscribe again.
    Retired(Instant),
    /// The observer stops.
    Stopped,
}

/// A subscription to one event RPC, without its event type: spawns one task per instance.
pub(crate) trait Subscription: Send + Sync {
    fn spawn(
        &self,
        instance: String,
        endpoint: Endpoint,
        shared: Arc<Shared>,
        control: watch::Receiver<Instance>,
    ) -> tokio::task::JoinHandle<()>;
}

pub(crate) struct Typed<T, H> {
    pub(crate) rpc: &'static str,
    pub(crate) handler: Arc<H>,
    pub(crate) event: PhantomData<fn() -> T>,
    /// Whether the event RPC declares a key: its events may then go to keyed lanes.
    pub(crate) keyed: bool,
}

impl<T, H> Subscription for Typed<T, H>
where
    T: Message + Default + Clone + Send + Sync + 'static,
    H: Handler<T>,
{
    fn spawn(
        &self,
        instance: String,
        endpoint: Endpoint,
        shared: Arc<Shared>,
        control: watch::Receiver<Instance>,
    ) -> tokio::task::JoinHandle<()> {
        let source = Remote {
            rpc: self.rpc,
            endpoint,
            metadata: shared.options.metadata.clone(),
            connect_timeout: shared.options.connect_timeout,
        };
        let stream = InstanceStream::new(self, instance.into(), Arc::new(source), shared, control);
        tokio::spawn(stream.run())
    }
}
