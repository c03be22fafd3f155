//! One trace across services and events (the `opentelemetry` feature): a client's call, the
//! handler that serves it and publishes an event, the observer's handling of that event and a
//! call it makes, exported through OpenTelemetry's in-memory exporter, with their parent and
//! link relations.

#[path = "../support/mod.rs"]
mod support;

use std::pin::Pin;

use meshless::events::{Event, HandlerError, ObserverOptions};
use meshless::{Request, Response, Server, Status, Streaming};
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use support::testing::v1::EchoObserver;
use support::{
    request, Echo, EchoClient, EchoHandler, EchoPublisher, EchoReply, EchoRequest, EchoService,
    EchoedEvent, EchoedObserver, Running, PATIENCE,
};
use tokio::sync::mpsc;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

/// Publishes every unary message as an `Echoed` event, as a sign-up handler publishes
/// `UserSignedUp`.
struct Publishing {
    publisher: EchoPublisher,
}

type Replies =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<EchoReply, Status>> + Send + 'static>>;

impl EchoHandler for Publishing {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let message = request.into_inner().message;
        self.publisher.publish_echoed(EchoedEvent {
            message: message.clone(),
        })?;
        Ok(Response::new(EchoReply {
            message,
            ..EchoReply::default()
        }))
    }

    type ServerStreamStream = Replies;

    async fn server_stream(&self, _: Request<EchoRequest>) -> Result<Response<Replies>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn client_stream(
        &self,
        _: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type BidiStreamStream = Replies;

    async fn bidi_stream(
        &self,
        _: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Replies>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn old_unary(&self, _: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

/// Handles each event by calling another service, as a welcome-email service calls a mailer.
#[derive(Clone)]
struct CallsDownstream {
    downstream: EchoClient,
    done: mpsc::UnboundedSender<String>,
}

impl EchoedObserver for CallsDownstream {
    async fn echoed(&self, event: Event<EchoedEvent>) -> Result<(), HandlerError> {
        self.downstream.unary(request(&event.message)).await?;
        let _ = self.done.send(event.message.clone());
        Ok(())
    }
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|span| span.name == name).collect()
}

fn child_of<'a>(spans: &'a [SpanData], parent: &SpanData, name: &str) -> &'a SpanData {
    let children: Vec<_> = spans
        .iter()
        .filter(|span| span.name == name)
        .filter(|span| span.parent_span_id == parent.span_context.span_id())
        .collect();
    assert_eq!(
        children.len(),
        1,
        "one `{name}` under `{}`: {spans:#?}",
        parent.name
    );
    assert_eq!(
        children[0].span_context.trace_id(),
        parent.span_context.trace_id()
    );
    children[0]
}

#[tokio::test]
async fn one_trace_from_a_call_through_an_event_to_the_call_its_handler_makes() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("meshless-test"));
    // This test's thread only: the runtime is single-threaded, so every task runs here.
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));

    let mailer = Running::echo(Echo::named("mailer")).await;
    let publisher = EchoPublisher::new();
    let users = Running::start(Server::builder().add_service(EchoService::with_publisher(
        Publishing {
            publisher: publisher.clone(),
        },
        publisher.clone(),
    )))
    .await;
    let (done, mut handled) = mpsc::unbounded_channel();
    let downstream = EchoClient::connect(&format!("ipv4:{}", mailer.addr))
        .await
        .unwrap();
    let observer = EchoObserver::new()
        .echoed(CallsDownstream { downstream, done })
        .options(ObserverOptions::default())
        .start(&format!("ipv4:{}", users.addr))
        .await
        .unwrap();

    let client = EchoClient::connect(&format!("ipv4:{}", users.addr))
        .await
        .unwrap();
    client
        .unary(request("ada@example.com"))
        .instrument(tracing::info_span!("sign up"))
        .await
        .unwrap();
    let message = tokio::time::timeout(PATIENCE, handled.recv())
        .await
        .expect("the event is handled in time");
    assert_eq!(message.as_deref(), Some("ada@example.com"));
    // An event published outside any trace is handled without a span of its own.
    publisher
        .publish_echoed(EchoedEvent {
            message: "untraced".into(),
        })
        .unwrap();
    let message = tokio::time::timeout(PATIENCE, handled.recv())
        .await
        .expect("the event is handled in time");
    assert_eq!(message.as_deref(), Some("untraced"));

    observer.stop().await;
    users.stop().await.unwrap();
    mailer.stop().await.unwrap();
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    // The caller's side: its span, the call, the attempt; then the handler's server span.
    let root = named(&spans, "sign up");
    assert_eq!(root.len(), 1, "{spans:#?}");
    let root = root[0];
    let call = child_of(&spans, root, "meshless.call");
    let attempt = child_of(&spans, call, "meshless.attempt");
    let serve = child_of(&spans, attempt, "meshless.serve");

    // The observer's span is linked to the span the event was published in, not its child;
    // the untraced event has none.
    let handling = named(&spans, "meshless.event");
    assert_eq!(handling.len(), 1, "{spans:#?}");
    let handling = handling[0];
    assert_ne!(
        handling.span_context.trace_id(),
        root.span_context.trace_id()
    );
    assert_eq!(handling.parent_span_id, SpanId::INVALID);
    let links: Vec<_> = handling
        .links
        .iter()
        .map(|link| (link.span_context.trace_id(), link.span_context.span_id()))
        .collect();
    assert_eq!(
        links,
        [(root.span_context.trace_id(), serve.span_context.span_id())],
        "linked to the publishing handler's span"
    );

    // The handler's own call continues the observer's trace, to the mailer's server span.
    let downstream_call = child_of(&spans, handling, "meshless.call");
    let downstream_attempt = child_of(&spans, downstream_call, "meshless.attempt");
    let mailer_serve = child_of(&spans, downstream_attempt, "meshless.serve");
    assert_ne!(mailer_serve.span_context.trace_id(), TraceId::INVALID);
}
