//! [`Drain`]: when a server that publishes events shuts down, new calls are refused with
//! `UNAVAILABLE` (retry elsewhere) while event streams, acknowledgements and health checks go
//! on, and the calls already in flight are counted down, so that the events they publish are
//! delivered before the streams close.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Notify;
use tonic::body::Body;
use tower::Layer;
use tower_service::Service;

use crate::refused::REFUSED_HEADER;

/// Paths served while draining, besides the event RPCs.
const ALWAYS_OPEN: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/meshless.v1.EventGroups/",
    "/grpc.reflection.v1.ServerReflection/",
];

/// Shared by the layer and the shutdown that closes it.
#[derive(Debug, Clone)]
pub(crate) struct Drain {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
    /// The event RPCs' paths: subscriptions are the hubs' to accept or refuse.
    event_paths: Vec<String>,
}

impl Drain {
    pub(crate) fn new(event_paths: Vec<String>) -> Self {
        Self {
            state: Arc::new(State {
                draining: AtomicBool::new(false),
                in_flight: AtomicUsize::new(0),
                idle: Notify::new(),
                event_paths,
            }),
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

impl<S> Layer<S> for Drain {
    type Service = Draining<S>;

    fn layer(&self, inner: S) -> Draining<S> {
        Draining {
            drain: self.clone(),
            inner,
        }
    }
}

/// A service behind the drain.
#[derive(Debug, Clone)]
pub(crate) struct Draining<S> {
    drain: Drain,
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

impl<S, ReqBody> Service<http::Request<ReqBody>> for Draining<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if self.drain.always_open(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        let state = &self.drain.state;
        // Counted before the check, so that `close` cannot miss a call that got through.
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        let in_flight = InFlight(state.clone());
        if state.draining.load(Ordering::SeqCst) {
            drop(in_flight);
            let refused = tonic::Status::unavailable(
                "the server is shutting down and takes no new calls; call another instance",
            );
            let mut response = refused.into_http();
            // Tells meshless clients that the call was not processed: safe to retry elsewhere.
            response
                .headers_mut()
                .insert(REFUSED_HEADER, http::HeaderValue::from_static("draining"));
            return Box::pin(std::future::ready(Ok(response)));
        }
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await;
            drop(in_flight);
            response
        })
    }
}
