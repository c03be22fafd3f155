//! [`RecordDeadline`]: records the caller's deadline (`grpc-timeout`) as a
//! [`Deadline`](crate::Deadline) in the request's extensions, for the handler.

use tower::Layer;
use tower_service::Service;

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RecordDeadline;

impl<S> Layer<S> for RecordDeadline {
    type Service = Recording<S>;

    fn layer(&self, inner: S) -> Recording<S> {
        Recording(inner)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Recording<S>(S);

impl<S, B> Service<http::Request<B>> for Recording<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> S::Future {
        crate::Deadline::record(&mut request);
        self.0.call(request)
    }
}
