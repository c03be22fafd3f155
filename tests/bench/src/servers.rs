//! The servers the benchmarks call: Echo instances on the server runtime.

use std::net::SocketAddr;
use std::time::Duration;

use meshless::{Request, Response, Server, Status, Streaming};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;

use crate::proto::mesh::testing::v1::{
    EchoHandler, EchoPublisher, EchoReply, EchoRequest, EchoService,
};

/// Answers `Unary` with its name and the request's payload, after `delay` (to make an
/// instance slow); when `broken`, with `INTERNAL` at once.
#[derive(Clone)]
pub struct Echo {
    pub name: &'static str,
    pub delay: Duration,
    pub broken: bool,
}

type Replies =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<EchoReply, Status>> + Send>>;

impl EchoHandler for Echo {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        if self.broken {
            return Err(Status::internal("broken"));
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let request = request.into_inner();
        Ok(Response::new(EchoReply {
            message: self.name.to_owned(),
            at: None,
            payload: request.payload,
        }))
    }

    type ServerStreamStream = Replies;

    async fn server_stream(&self, _: Request<EchoRequest>) -> Result<Response<Replies>, Status> {
        Err(Status::unimplemented("not benchmarked"))
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        let mut stream = request.into_inner();
        while stream.next().await.is_some() {}
        Err(Status::unimplemented("not benchmarked"))
    }

    type BidiStreamStream = Replies;

    async fn bidi_stream(
        &self,
        _: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Replies>, Status> {
        Err(Status::unimplemented("not benchmarked"))
    }

    async fn old_unary(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<EchoReply>, Status> {
        self.unary(request).await
    }
}

/// Starts an Echo server (with `publisher` for its events) on 127.0.0.1:0; runs until the
/// runtime it was spawned on ends.
pub async fn start_echo(echo: Echo, publisher: EchoPublisher) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(
        Server::builder()
            .add_service(EchoService::with_publisher(echo, publisher))
            .serve_with_listener(listener, std::future::pending()),
    );
    addr
}
