//! [`Connection`]: the HTTP/2 connection that calls to one instance go over.
//!
//! Without TLS, calls are handed to hyper's HTTP/2 connection directly: one call is one stream,
//! passed to the connection's task with nothing in between. tonic's `Channel` would put a
//! `tower::Buffer` in front (a queue and a worker task that every call goes through, one more
//! task wake-up per call), and layers this path does itself (the origin, the user agent) or does
//! not need (the timeout: calls keep their own deadline). With TLS, calls go through tonic's
//! channel, which owns the TLS handshake.

use std::sync::Arc;

use http::uri::{Authority, Scheme};
use http::HeaderValue;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tonic::body::Body;
use tonic::transport::Channel as TonicChannel;
use tower::ServiceExt;

use crate::endpoint::Connector;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What calls say they are, unless they say so themselves.
const USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("grpc-rust-meshless/", env!("CARGO_PKG_VERSION")));

/// An open HTTP/2 connection to one instance.
pub(crate) enum Connection {
    /// Plaintext HTTP/2 through hyper.
    Direct {
        send: SendRequest<Body>,
        authority: Authority,
    },
    /// Through tonic's channel (TLS).
    Tonic(TonicChannel),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Connection::Direct { authority, .. } => write!(f, "Direct({authority})"),
            Connection::Tonic(_) => f.write_str("Tonic"),
        }
    }
}

impl Connection {
    /// Connects to the instance at `authority` (`10.0.0.7:50051`) as `connector` says, within
    /// its connect timeout. `closed` is notified once the connection is over (the server closed
    /// it, or it broke).
    pub(crate) async fn connect(
        authority: &str,
        endpoint: &tonic::transport::Endpoint,
        connector: &Connector,
        closed: Arc<Notify>,
    ) -> Result<Self, String> {
        if connector.uses_tls() {
            let watched = super::watched::WatchedConnector::new(closed);
            return endpoint
                .connect_with_connector(watched)
                .await
                .map(Connection::Tonic)
                .map_err(|error| crate::text::error_chain(&error));
        }
        let parsed: Authority = authority
            .parse()
            .map_err(|error| format!("`{authority}` is not a host and port: {error}"))?;
        let handshake = async {
            let stream = TcpStream::connect(authority).await?;
            stream.set_nodelay(true)?;
            let (send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(connector.keepalive_interval)
                .keep_alive_timeout(connector.keepalive_timeout)
                .keep_alive_while_idle(false)
                .handshake(TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "connection ended");
                }
                closed.notify_one();
            });
            Ok::<_, std::io::Error>(send)
        };
        match tokio::time::timeout(connector.connect_timeout, handshake).await {
            Ok(Ok(send)) => Ok(Connection::Direct {
                send,
                authority: parsed,
            }),
            Ok(Err(error)) => Err(crate::text::error_chain(&error)),
            Err(_) => Err(format!(
                "no connection within {:?}",
                connector.connect_timeout
            )),
        }
    }

    /// Sends one call. The request's URI is its path; the connection adds the origin.
    pub(crate) async fn call(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, BoxError> {
        match self {
            Connection::Tonic(channel) => {
                channel.clone().oneshot(request).await.map_err(Into::into)
            }
            Connection::Direct { send, authority } => {
                let (mut parts, body) = request.into_parts();
                let mut uri = std::mem::take(&mut parts.uri).into_parts();
                uri.scheme = Some(Scheme::HTTP);
                uri.authority = Some(authority.clone());
                parts.uri = http::Uri::from_parts(uri)?;
                parts
                    .headers
                    .entry(http::header::USER_AGENT)
                    .or_insert(USER_AGENT);
                let response = send
                    .clone()
                    .send_request(http::Request::from_parts(parts, body))
                    .await?;
                Ok(response.map(Body::new))
            }
        }
    }
}
