//! The gate every call to a [`Server`](crate::Server) passes through.
//!
//! - Draining: when a server that publishes events shuts down, new calls are refused with
//!   `UNAVAILABLE` (retry elsewhere) while event streams, acknowledgements and health checks go
//!   on, and the calls already in flight are counted down, so that the events they publish are
//!   delivered before the streams close.
//! - Deadlines: the caller's deadline is recorded as a [`Deadline`](crate::Deadline) in the
//!   request's extensions, for the handler.
//! - Telemetry: a `meshless.serve` span and the server call metrics (see
//!   [`crate::telemetry`]).
//! - Limits: a request message over the size limit is refused with `RESOURCE_EXHAUSTED`, as
//!   gRPC specifies (tonic says `OUT_OF_RANGE`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Notify;
use tracing::Instrument;

use crate::refused::REFUSED_HEADER;
use crate::telemetry::{CallMetrics, CallReport, Reported, Side};
use tower::Layer;
use tower_service::Service;

/// Paths served while draining, besides the event RPCs.
const ALWAYS_OPEN: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/meshless.v1.EventGroups/",
    "/grpc.reflection.v1.ServerReflection/",
];

/// Shared by the layer and the server that drains it.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
    /// The event RPCs' paths: subscriptions are the hubs' to accept or refuse.
    event_paths: Vec<String>,
    /// `/package.Service/` of every service served: other paths are labelled `unknown` in
    /// metrics, so that made-up names cannot multiply them.
    services: Vec<String>,
    metrics: CallMetrics,
}

impl Gate {
    pub(crate) fn new(event_paths: Vec<String>, services: &[&str]) -> Self {
        Self {
            state: Arc::new(State {
                draining: AtomicBool::new(false),
                in_flight: AtomicUsize::new(0),
                idle: Notify::new(),
                event_paths,
                services: services.iter().map(|s| format!("/{s}/")).collect(),
                metrics: CallMetrics::new(Side::Server),
            }),
        }
    }

    /// The method as metrics name it: its path, or `unknown` for a service not served.
    fn method_label<'a>(&self, path: &'a str) -> &'a str {
        if self
            .state
            .services
            .iter()
            .any(|s| path.starts_with(s.as_str()))
        {
            path
        } else {
            "unknown"
        }
    }

    /// Refuses new calls from now on.
    pub(crate) fn close(&self) {
        self.state.draining.store(true, Ordering::SeqCst);
    }

    /// Waits until the calls in flight have returned, or `deadline`. Returns whether they all
    /// returned.
    pub(crate) async fn wait_idle(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let idle = self.state.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.state.in_flight.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return false;
            }
        }
    }

    fn always_open(&self, path: &str) -> bool {
        ALWAYS_OPEN.iter().any(|prefix| path.starts_with(prefix))
            || self.state.event_paths.iter().any(|event| event == path)
    }
}

impl<S> Layer<S> for Gate {
    type Service = Gated<S>;

    fn layer(&self, inner: S) -> Gated<S> {
        Gated {
            gate: self.clone(),
            inner,
        }
    }
}

/// A service behind the drain gate.
#[derive(Debug, Clone)]
pub(crate) struct Gated<S> {
    gate: Gate,
    inner: S,
}

/// One call counted as in flight until dropped.
struct InFlight(Arc<State>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Gated<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Reported<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        crate::Deadline::record(&mut request);
        let method = request.uri().path();
        let span = tracing::debug_span!("meshless.serve", method, status = tracing::field::Empty);
        let report = CallReport::new(
            &self.gate.state.metrics,
            self.gate.method_label(method),
            span.clone(),
        );
        let state = &self.gate.state;
        let in_flight = if self.gate.always_open(method) {
            None
        } else {
            // Counted before the check, so that `close` cannot miss a call that got through.
            state.in_flight.fetch_add(1, Ordering::SeqCst);
            let in_flight = InFlight(state.clone());
            if state.draining.load(Ordering::SeqCst) {
                drop(in_flight);
                let refused = tonic::Status::unavailable(
                    "the server is shutting down and takes no new calls; call another instance",
                );
                let mut response = refused.into_http();
                // Tells meshless clients that the call was not processed: safe to retry
                // elsewhere.
                response
                    .headers_mut()
                    .insert(REFUSED_HEADER, http::HeaderValue::from_static("draining"));
                return Box::pin(std::future::ready(Ok(report.watch(response))));
            }
            Some(in_flight)
        };
        let call = self.inner.call(request).instrument(span);
        Box::pin(async move {
            let response = call.await;
            drop(in_flight);
            response.map(|response| report.watch(too_large_is_resource_exhausted(response)))
        })
    }
}

/// Rewrites tonic's `OUT_OF_RANGE` for a request message over the size limit to
/// `RESOURCE_EXHAUSTED`. Only trailers-only responses carry it in their headers: a request
/// decoded before the handler ran (unary and server-streaming calls).
fn too_large_is_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let too_large = headers.get("grpc-status").is_some_and(|s| s == "11")
        && headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| {
                m.contains("message%20length%20too%20large")
                    || m.contains("message length too large")
            });
    if too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}
