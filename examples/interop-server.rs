//! A server for interoperability tests with other gRPC implementations: serves
//! `testing.v1.Echo` (echoing metadata, failing on request, replying with payloads of a given
//! size) and publishes every unary message as an `Echoed` event; and `testing.orders.v1.Orders`,
//! publishing every `Change` as an `OrderChanged` event, keyed by its order.
//!
//! Run with: cargo run --example interop-server -- --listen 127.0.0.1:0 [--data-dir DIR]
//! It prints `listening on ADDR` once it serves, and stops on Ctrl-C or SIGTERM.
//!
//! With the `postgres` feature, `--postgres URL NAME` keeps the `Echoed` events in that
//! database under the stream `NAME`, each published in a transaction of its own: a call is
//! answered once its transaction committed. While another process still holds the name, it
//! waits for it (up to 60 s), as a replacement of a killed instance does.
//!
//! Its spans are OpenTelemetry spans (not exported): a unary call with the message
//! `trace-id?` is answered with the trace id of the span that served it, so that a caller can
//! check that its trace context (W3C `traceparent`) went through.

use std::pin::Pin;

use meshless::{Code, Request, Response, Server, Status, Streaming};
use tokio_stream::{Stream, StreamExt};

mod proto {
    #![allow(dead_code, unreachable_pub, missing_docs)]
    meshless::include_protos!();
}

use proto::testing::orders::v1::{
    ChangeReply, ChangeRequest, OrderChangedEvent, OrdersHandler, OrdersPublisher, OrdersService,
};
use proto::testing::v1::{
    EchoHandler, EchoPublisher, EchoReply, EchoRequest, EchoService, EchoedEvent,
};

/// Publishes each change of an order as an event keyed by the order.
struct Orders {
    publisher: OrdersPublisher,
}

impl OrdersHandler for Orders {
    async fn change(
        &self,
        request: Request<ChangeRequest>,
    ) -> Result<Response<ChangeReply>, Status> {
        let ChangeRequest { order, step } = request.into_inner();
        self.publisher
            .publish_order_changed(OrderChangedEvent { order, step })?;
        Ok(Response::new(ChangeReply {
            served_by: "interop-server".into(),
        }))
    }
}

struct Echo {
    publisher: EchoPublisher,
    /// Set when the events are kept in Postgres.
    #[cfg(feature = "postgres")]
    pool: Option<meshless::events::postgres::sqlx::PgPool>,
}

impl Echo {
    async fn publish(&self, event: EchoedEvent) -> Result<(), Status> {
        #[cfg(feature = "postgres")]
        if let Some(pool) = &self.pool {
            let unavailable = |error: meshless::events::postgres::sqlx::Error| {
                Status::unavailable(format!("publishing in Postgres: {error}"))
            };
            let mut tx = pool.begin().await.map_err(unavailable)?;
            self.publisher
                .publish_echoed_in(&mut tx, event)
                .await
                .map_err(unavailable)?;
            return self.publisher.commit(tx).await.map_err(unavailable);
        }
        self.publisher.publish_echoed(event)?;
        Ok(())
    }
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

/// Asked for with the message `trace-id?`.
const TRACE_ID_QUESTION: &str = "trace-id?";

/// The trace id of the span this runs in, as 32 hexadecimal digits.
fn current_trace_id() -> String {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    tracing::Span::current()
        .context()
        .span()
        .span_context()
        .trace_id()
        .to_string()
}

impl EchoHandler for Echo {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        if request.get_ref().message == TRACE_ID_QUESTION {
            return Ok(Response::new(EchoReply {
                message: current_trace_id(),
                ..EchoReply::default()
            }));
        }
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
        self.publish(EchoedEvent {
            message: request.into_inner().message,
        })
        .await?;
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
    let usage = "usage: interop-server --listen ADDR:PORT [--data-dir DIR | --postgres URL NAME]";
    let mut args = std::env::args().skip(1);
    let listen = match (args.next().as_deref(), args.next()) {
        (Some("--listen"), Some(addr)) => addr,
        _ => return Err(usage.into()),
    };
    // With a data directory, the events survive a crash or restart of this process.
    #[cfg(feature = "postgres")]
    let mut pool = None;
    let publisher = match (args.next().as_deref(), args.next()) {
        (None, _) => EchoPublisher::new(),
        (Some("--data-dir"), Some(dir)) => EchoPublisher::open(dir)?,
        #[cfg(feature = "postgres")]
        (Some("--postgres"), Some(url)) => {
            let name = args.next().ok_or(usage)?;
            let opened = postgres::open(&url, &name).await?;
            pool = Some(opened.1);
            opened.0
        }
        #[cfg(not(feature = "postgres"))]
        (Some("--postgres"), _) => {
            return Err("--postgres needs the example built with `--features postgres`".into())
        }
        _ => return Err(usage.into()),
    };
    // Spans become OpenTelemetry spans, children of the caller's when it sent its context.
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt;
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("interop-server"));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))?;
    }
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Kept in memory: the data directory is the Echo publisher's.
    let orders = OrdersPublisher::new();
    Server::builder()
        .reflection(true)
        .channelz(true)
        .admin(true)
        .add_service(EchoService::with_publisher(
            Echo {
                publisher: publisher.clone(),
                #[cfg(feature = "postgres")]
                pool,
            },
            publisher,
        ))
        .add_service(OrdersService::with_publisher(
            Orders {
                publisher: orders.clone(),
            },
            orders,
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

#[cfg(feature = "postgres")]
mod postgres {
    use std::time::{Duration, Instant};

    use meshless::events::postgres::sqlx::PgPool;

    use super::EchoPublisher;

    /// The publisher of the stream `name` in the database at `url`, once no other process
    /// holds the name (a killed one holds it until the server sees its connection closed).
    pub(super) async fn open(
        url: &str,
        name: &str,
    ) -> Result<(EchoPublisher, PgPool), Box<dyn std::error::Error>> {
        let pool = PgPool::connect(url).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut said = false;
        loop {
            match EchoPublisher::open_postgres(&pool, name).await {
                Ok(publisher) => return Ok((publisher, pool)),
                Err(error) if error.is_stream_in_use() && Instant::now() < deadline => {
                    if !said {
                        println!("waiting: another instance serves the stream {name}");
                        said = true;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}
