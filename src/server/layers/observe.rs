//! [`Observe`]: the `meshless.serve` span of each call and the server call metrics (see
//! [`crate::telemetry`]).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use prost::Message as _;
use tower::Layer;
use tower_service::Service;
use tracing::Instrument;

use crate::admin::registry::{ServerEntry, SocketEntry};
use crate::telemetry::{CallMetrics, CallReport, Reported, Side};

#[derive(Debug, Clone)]
pub(crate) struct Observe {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    metrics: CallMetrics,
    /// The path of every method the server's `.proto` descriptors declare: only these, and
    /// the methods of services served without descriptors, get a `method` label of their own.
    methods: HashSet<String>,
    /// `/package.Service/` of each service served without descriptors.
    undescribed: Vec<String>,
    /// The server as channelz lists it: its connections count their calls.
    server: Arc<ServerEntry>,
}

impl Observe {
    /// Metrics and spans for the services named `services`, whose methods the encoded
    /// `FileDescriptorSet`s `descriptors` declare (as far as they do), counted in `server`'s
    /// calls and connections.
    pub(crate) fn new(services: &[&str], descriptors: &[&[u8]], server: Arc<ServerEntry>) -> Self {
        let mut declared: HashMap<String, Vec<String>> = HashMap::new();
        for set in descriptors {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                continue;
            };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let name = match (package.as_str(), service.name()) {
                        ("", service) => service.to_owned(),
                        (package, service) => format!("{package}.{service}"),
                    };
                    let methods = declared.entry(name).or_default();
                    methods.extend(service.method.iter().map(|m| m.name().to_owned()));
                }
            }
        }
        let mut methods = HashSet::new();
        let mut undescribed = Vec::new();
        for service in services {
            match declared.get(*service) {
                Some(names) => methods.extend(names.iter().map(|m| format!("/{service}/{m}"))),
                None => undescribed.push(format!("/{service}/")),
            }
        }
        Self {
            state: Arc::new(State {
                metrics: CallMetrics::new(Side::Server).counting_in(server.calls.clone()),
                methods,
                undescribed,
                server,
            }),
        }
    }
}

impl State {
    /// The method as metrics name it: its path when the server serves it, else `unknown`,
    /// so that made-up names can neither multiply the labels nor take the places of real
    /// methods.
    fn method_label<'a>(&self, path: &'a str) -> &'a str {
        if self.methods.contains(path)
            || self
                .undescribed
                .iter()
                .any(|s| path.starts_with(s.as_str()))
        {
            path
        } else {
            "unknown"
        }
    }
}

impl State {
    /// The server connection `request` came on.
    fn socket_of<B>(&self, request: &http::Request<B>) -> Option<Arc<SocketEntry>> {
        use tonic::transport::server::TcpConnectInfo;
        let extensions = request.extensions();
        let tcp = extensions.get::<TcpConnectInfo>();
        #[cfg(feature = "tls")]
        let tcp = tcp.or_else(|| {
            extensions
                .get::<tonic::transport::server::TlsConnectInfo<TcpConnectInfo>>()
                .map(|tls| tls.get_ref())
        });
        self.server.socket(&tcp?.remote_addr()?)
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
        .with_timeout(crate::deadline::grpc_timeout(&request))
        .on_socket(self.state.socket_of(&request));
        let call = self.inner.call(request).instrument(span);
        Box::pin(async move { call.await.map(|response| report.watch(response)) })
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn only_methods_the_server_serves_get_labels_of_their_own() {
        let observe = Observe::new(
            &["grpc.health.v1.Health", "plain.Undescribed"],
            &[tonic_health::pb::FILE_DESCRIPTOR_SET],
            ServerEntry::register(None, Arc::default()),
        );
        let label = |path| observe.state.method_label(path).to_owned();
        assert_eq!(
            label("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/Check"
        );
        // A made-up method of a served service, or a service not served.
        assert_eq!(label("/grpc.health.v1.Health/Scan0001"), "unknown");
        assert_eq!(
            label("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            "unknown"
        );
        // A service without descriptors is labelled by path, as it has no list of methods.
        assert_eq!(label("/plain.Undescribed/Any"), "/plain.Undescribed/Any");
    }
}
