//! [`Observe`]: the `meshless.serve` span of each call and the server call metrics (see
//! [`crate::telemetry`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::Layer;
use tower_service::Service;
use tracing::Instrument;

use crate::telemetry::{CallMetrics, CallReport, Reported, Side};

#[derive(Debug, Clone)]
pub(crate) struct Observe {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    metrics: CallMetrics,
    /// `/package.Service/` of every service served: other paths are labelled `unknown` in
    /// metrics, so that made-up names cannot multiply them.
    services: Vec<String>,
}

impl Observe {
    pub(crate) fn new(services: &[&str]) -> Self {
        Self {
            state: Arc::new(State {
                metrics: CallMetrics::new(Side::Server),
                services: services.iter().map(|s| format!("/{s}/")).collect(),
            }),
        }
    }
}

impl State {
    /// The method as metrics name it: its path, or `unknown` for a service not served.
    fn method_label<'a>(&self, path: &'a str) -> &'a str {
        if self.services.iter().any(|s| path.starts_with(s.as_str())) {
            path
        } else {
            "unknown"
        }
    }
}

impl<S> Layer<S> for Observe {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Observed<S> {
        Observed {
            state: self.state.clone(),
            inner,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Observed<S> {
    state: Arc<State>,
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Observed<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<Reported<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = request.uri().path();
        let span = tracing::debug_span!("meshless.serve", method, status = tracing::field::Empty);
        // The caller's span (W3C `traceparent`), when it sent one, is this one's parent.
        crate::trace_context::adopt_parent(&span, request.headers());
        // A call given up before its handler returned (its deadline passed, or the client
        // cancelled it) is reported when its future is dropped.
        let report = CallReport::new(
            &self.state.metrics,
            self.state.method_label(method),
            span.clone(),
        )
        .with_timeout(crate::deadline::grpc_timeout(&request));
        let call = self.inner.call(request).instrument(span);
        Box::pin(async move { call.await.map(|response| report.watch(response)) })
    }
}
