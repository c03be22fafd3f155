//! The ginepro contender: its `LoadBalancedChannel` over the same instances as the others.
//!
//! ginepro 0.9 is built on tonic 0.13, so it is driven through that tonic with a codec that
//! passes bytes: requests are encoded, and replies decoded, by the same prost 0.14 messages
//! the other contenders use. Its lookup returns the instances' addresses, as `balance_list`
//! is given them: what is measured is the channel and its balancing, not a DNS lookup.

use std::collections::HashSet;
use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes};
use ginepro::{LoadBalancedChannel, LookupService, ServiceDefinition};
use prost::Message;
use tonic013::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::proto::plain::testing::v1::{EchoReply, EchoRequest};

/// A lookup that always finds the same instances.
struct Fixed(Vec<SocketAddr>);

#[async_trait::async_trait]
impl LookupService for Fixed {
    async fn resolve_service_endpoints(
        &self,
        _: &ServiceDefinition,
    ) -> Result<HashSet<SocketAddr>, anyhow::Error> {
        Ok(self.0.iter().copied().collect())
    }
}

/// A ginepro channel over `instances`.
pub async fn channel(instances: &[SocketAddr]) -> LoadBalancedChannel {
    LoadBalancedChannel::builder(("echo.bench.test", instances[0].port()))
        .lookup_service(Fixed(instances.to_vec()))
        .channel()
        .await
        .expect("ginepro channel")
}

/// One `Echo/Unary` call through `channel`; whether it succeeded with the payload back.
pub async fn unary(channel: LoadBalancedChannel, request: &EchoRequest) -> bool {
    let mut grpc = tonic013::client::Grpc::new(channel);
    if grpc.ready().await.is_err() {
        return false;
    }
    let path = http::uri::PathAndQuery::from_static("/testing.v1.Echo/Unary");
    let request = tonic013::Request::new(Bytes::from(request.encode_to_vec()));
    match grpc.unary(request, path, BytesCodec).await {
        Ok(reply) => EchoReply::decode(reply.into_inner()).is_ok(),
        Err(_) => false,
    }
}

/// Passes messages through as bytes.
#[derive(Clone, Copy, Default)]
struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;

    fn encoder(&mut self) -> Self::Encoder {
        BytesCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesCodec
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = tonic013::Status;

    fn encode(&mut self, item: Bytes, buf: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        buf.put(item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = tonic013::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Self::Error> {
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }
}
