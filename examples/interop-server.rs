//! A server for interoperability tests with other gRPC implementations: serves
//! `testing.v1.Echo` (echoing metadata, failing on request, replying with payloads of a given
//! size) and publishes every unary message as an `Echoed` event.
//!
//! Run with: cargo run --example interop-server -- --listen 127.0.0.1:0 [--data-dir DIR]
//! It prints `listening on ADDR` once it serves, and stops on Ctrl-C or SIGTERM.

use std::pin::Pin;

use meshless::{Code, Request, Response, Server, Status, Streaming};
use tokio_stream::{Stream, StreamExt};

mod proto {
    #![allow(dead_code, unreachable_pub, missing_docs)]
    meshless::include_protos!();
}

use proto::testing::v1::{
    EchoHandler, EchoPublisher, EchoReply, EchoRequest, EchoService, EchoedEvent,
};

struct Echo {
    publisher: EchoPublisher,
}

type Replies = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

fn reply(request: &EchoRequest) -> Result<EchoReply, Status> {
    if request.fail_with_code != 0 {
        return Err(Status::new(
            Code::from(request.fail_with_code),
            format!("failed as asked: {}", request.message),
        ));
    }
    Ok(EchoReply {
        message: request.message.clone(),
        at: None,
        payload: vec![b'x'; request.reply_size as usize],
    })
}

impl EchoHandler for Echo {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let mut response = Response::new(reply(request.get_ref())?);
        // Custom metadata comes back as it came, ASCII and binary alike.
        for entry in request.metadata().iter() {
            match entry {
                meshless::metadata::KeyAndValueRef::Ascii(key, value)
                    if key.as_str().starts_with("x-") =>
                {
                    response.metadata_mut().insert(key.clone(), value.clone());
                }
                meshless::metadata::KeyAndValueRef::Binary(key, value)
                    if key.as_str().starts_with("x-") =>
                {
                    response
                        .metadata_mut()
                        .insert_bin(key.clone(), value.clone());
                }
                _ => {}
            }
        }
        self.publisher.publish_echoed(EchoedEvent {
            message: request.into_inner().message,
        })?;
        Ok(response)
    }

    type ServerStreamStream = Replies;

    async fn server_stream(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<Replies>, Status> {
        let replies: Vec<_> = request
            .into_inner()
            .message
            .chars()
            .map(|c| {
                reply(&EchoRequest {
                    message: c.to_string(),
                    ..Default::default()
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(replies))))
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        let mut joined = Vec::new();
        let mut stream = request.into_inner();
        while let Some(request) = stream.next().await {
            joined.push(request?.message);
        }
        Ok(Response::new(reply(&EchoRequest {
            message: joined.join(" "),
            ..Default::default()
        })?))
    }

    type BidiStreamStream = Replies;

    async fn bidi_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Replies>, Status> {
        Ok(Response::new(Box::pin(
            request.into_inner().map(|r| reply(&r?)),
        )))
    }

    async fn old_unary(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<EchoReply>, Status> {
        Ok(Response::new(reply(request.get_ref())?))
    }
}

#[tokio::main]
async fn main() {
    if let Err(error) = run().await {
        eprintln!("interop-server: {error}");
        std::process::exit(2);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: interop-server --listen ADDR:PORT [--data-dir DIR]";
    let mut args = std::env::args().skip(1);
    let listen = match (args.next().as_deref(), args.next()) {
        (Some("--listen"), Some(addr)) => addr,
        _ => return Err(usage.into()),
    };
    // With a data directory, the events survive a crash or restart of this process.
    let publisher = match (args.next().as_deref(), args.next()) {
        (None, _) => EchoPublisher::new(),
        (Some("--data-dir"), Some(dir)) => EchoPublisher::open(dir)?,
        _ => return Err(usage.into()),
    };
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Server::builder()
        .reflection(true)
        .add_service(EchoService::with_publisher(
            Echo {
                publisher: publisher.clone(),
            },
            publisher,
        ))
        .serve_with_listener(listener, async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        })
        .await?;
    Ok(())
}
