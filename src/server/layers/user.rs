//! The tower layers a user adds with [`Server::layer`](crate::Server::layer), kept type-erased
//! so that the server's type does not grow with each one, and applied to everything the server
//! serves.

use std::convert::Infallible;
use std::sync::Arc;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::body::Body;
use tower::util::BoxCloneSyncService;

use tower::Layer;
use tower_service::Service;

/// Every call the server serves, as the user's layers see it.
pub(crate) type Routes = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

type Wrap = Arc<dyn Fn(Routes) -> Routes + Send + Sync>;

/// The user's layers, outermost first.
#[derive(Clone, Default)]
pub(crate) struct UserLayers(Vec<Wrap>);

impl std::fmt::Debug for UserLayers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserLayers({})", self.0.len())
    }
}

impl UserLayers {
    /// Adds `layer` inside the ones added before. Its service's errors become statuses as
    /// tonic makes them (`Status::from_error`), and its response body becomes tonic's.
    pub(crate) fn push<L, S, ResBody>(&mut self, layer: L)
    where
        L: Layer<Routes, Service = S> + Send + Sync + 'static,
        S: Service<http::Request<Body>, Response = http::Response<ResBody>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.0.push(Arc::new(move |inner: Routes| {
            BoxCloneSyncService::new(Answering {
                inner: layer.layer(inner),
                unready: None,
            })
        }));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<S> Layer<S> for UserLayers
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    type Service = Routes;

    fn layer(&self, inner: S) -> Routes {
        self.0
            .iter()
            .rev()
            .fold(BoxCloneSyncService::new(inner), |service, wrap| {
                wrap(service)
            })
    }
}

/// A user layer's service, answering every call: its errors become statuses.
struct Answering<S> {
    inner: S,
    /// Why the service was not ready: the next call is answered with it, without the service.
    unready: Option<tonic::Status>,
}

impl<S: Clone> Clone for Answering<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            unready: None,
        }
    }
}

impl<S, ResBody> Service<http::Request<Body>> for Answering<S>
where
    S: Service<http::Request<Body>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.unready.is_none() {
            if let Err(error) = std::task::ready!(self.inner.poll_ready(cx)) {
                self.unready = Some(tonic::Status::from_error(error.into()));
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if let Some(status) = self.unready.take() {
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        let call = self.inner.call(request);
        Box::pin(async move {
            Ok(match call.await {
                Ok(response) => response.map(Body::new),
                Err(error) => tonic::Status::from_error(error.into()).into_http(),
            })
        })
    }
}
