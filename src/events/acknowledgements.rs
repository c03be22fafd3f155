//! [`Acknowledgements`]: the producer's side of `meshless.v1.EventGroups`, routing each
//! acknowledgement to the event RPC it names.

use super::protocol;
use super::publisher::Publisher;
use crate::peer::PeerIdentity;
use crate::v1::{AcknowledgeResponse, Acknowledgement, EventGroupsHandler, EventGroupsService};

/// Serves `meshless.v1.EventGroups/Acknowledge` for the event RPCs of some publishers, so that
/// consumer group members can acknowledge what they handled.
///
/// [`meshless::Server`](crate::Server) serves it by itself for the services it serves; build
/// one only to serve generated services from a plain tonic server.
#[derive(Debug, Clone, Default)]
pub struct Acknowledgements {
    publishers: Vec<Publisher>,
}

impl Acknowledgements {
    /// Acknowledgements for the event RPCs of `publishers`.
    pub fn new(publishers: impl IntoIterator<Item = Publisher>) -> Self {
        Self {
            publishers: publishers.into_iter().collect(),
        }
    }

    /// The gRPC service, to add to a server.
    pub fn into_service(self) -> EventGroupsService<Self> {
        EventGroupsService::new(self)
    }
}

impl EventGroupsHandler for Acknowledgements {
    async fn acknowledge(
        &self,
        request: tonic::Request<Acknowledgement>,
    ) -> Result<tonic::Response<AcknowledgeResponse>, tonic::Status> {
        let ack = request.get_ref();
        let identity = PeerIdentity::of(request.extensions());
        self.publishers
            .iter()
            .find_map(|publisher| publisher.acknowledge(ack, identity.as_ref()))
            .unwrap_or_else(|| Err(protocol::unknown_event_rpc(&ack.rpc)))
            .map(tonic::Response::new)
    }
}
