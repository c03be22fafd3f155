//! Every outcome counts against the instance that answered, also one that comes after the
//! response headers (a status in the trailers).

use std::pin::Pin;
use std::time::Duration;

use meshless::{Code, Request, Response, Status, Streaming};
use tokio_stream::StreamExt;

use crate::support::{
    served_by, Echo, EchoClient, EchoHandler, EchoReply, EchoRequest, EchoService, Running,
};

type Replies = Pin<Box<dyn tokio_stream::Stream<Item = Result<EchoReply, Status>> + Send>>;

/// Streams one reply after a few milliseconds, or, when `fails`, a stream whose first item is
/// `UNAVAILABLE`: response headers at once, and the failure in the trailers.
#[derive(Clone)]
struct Streams {
    echo: Echo,
    fails: bool,
}

impl EchoHandler for Streams {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        self.echo.unary(request).await
    }

    type ServerStreamStream = Replies;

    async fn server_stream(
        &self,
        _request: Request<EchoRequest>,
    ) -> Result<Response<Replies>, Status> {
        if self.fails {
            let failure = Err(Status::unavailable(format!("{} fails", self.echo.name)));
            return Ok(Response::new(Box::pin(tokio_stream::iter([failure]))));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let reply = EchoReply {
            message: format!("{}: streamed", self.echo.name),
            ..EchoReply::default()
        };
        Ok(Response::new(Box::pin(tokio_stream::iter([Ok(reply)]))))
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        self.echo.client_stream(request).await
    }

    type BidiStreamStream = Replies;

    async fn bidi_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Replies>, Status> {
        self.echo.bidi_stream(request).await
    }

    async fn old_unary(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<EchoReply>, Status> {
        self.echo.unary(request).await
    }
}

async fn streams(name: &str, fails: bool) -> Running {
    let handler = Streams {
        echo: Echo::named(name),
        fails,
    };
    Running::start(meshless::Server::builder().add_service(EchoService::new(handler))).await
}

#[tokio::test]
async fn a_stream_that_fails_in_its_trailers_counts_against_its_instance() {
    let (healthy, failing) = (
        streams("healthy", false).await,
        streams("failing", true).await,
    );
    let client = EchoClient::connect(format!("ipv4:{},{}", healthy.addr, failing.addr))
        .await
        .unwrap();
    let mut served = 0;
    for _ in 0..300 {
        let read = async {
            let mut stream = client
                .server_stream(EchoRequest::default())
                .await?
                .into_inner();
            let mut last = None;
            while let Some(reply) = stream.next().await {
                last = Some(reply?);
            }
            Ok::<_, Status>(last)
        };
        match tokio::time::timeout(crate::support::PATIENCE, read).await {
            Ok(Ok(Some(reply))) => {
                assert_eq!(served_by(&reply), "healthy");
                served += 1;
            }
            Ok(Ok(None)) => panic!("a stream with no reply"),
            Ok(Err(status)) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
            Err(_) => panic!("a stream did not end in time"),
        }
    }
    assert!(
        served >= 285,
        "the healthy instance served {served} of 300 streams"
    );
    healthy.stop().await.unwrap();
    failing.stop().await.unwrap();
}
