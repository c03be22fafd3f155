//! What meshless reports about itself: `tracing` spans, and metrics through the [`metrics`]
//! facade, which any exporter (Prometheus, StatsD, OpenTelemetry...) installed by the
//! application collects. Without an exporter, recording costs next to nothing. The metrics
//! (labels in braces):
//!
//! | name | kind | what |
//! |---|---|---|
//! | `meshless_client_calls_total` {target, method, code} | counter | calls made, by gRPC status |
//! | `meshless_client_call_duration_seconds` {target, method} | histogram | from the call to its status |
//! | `meshless_client_retries_total` {target} | counter | calls sent again (see [`ChannelBuilder::attempts`](crate::ChannelBuilder::attempts)) |
//! | `meshless_client_ready_instances` {target} | gauge | instances calls can be sent to |
//! | `meshless_server_calls_total` {method, code} | counter | calls served, by gRPC status |
//! | `meshless_server_call_duration_seconds` {method} | histogram | from the request to the status |
//! | `meshless_server_connections_refused_total` {reason} | counter | connections closed as soon as accepted: `max_connections` (the server's cap) or `max_connections_per_peer` (the cap of one IP address, or of one IPv6 /64) |
//! | `meshless_events_published_total` {rpc} | counter | events published |
//! | `meshless_events_refused_total` {rpc} | counter | events `publish_*` refused (too large) |
//! | `meshless_event_subscribers` {rpc} | gauge | open streams of subscribers without a group |
//! | `meshless_event_subscribers_cut_off_total` {rpc} | counter | subscribers that fell behind |
//! | `meshless_event_redeliveries_total` {rpc} | counter | events handed out again to a consumer group (a member left, or its lease ran out, with them unacknowledged; or after a restart of the producer) |
//! | `meshless_event_log_errors_total` {rpc} | counter | writes and syncs of the event log that failed (`publish_*` returned `PublishError::Io`) |
//! | `meshless_event_compaction_dropped_total` {rpc} | counter | with `compact_by_key`: kept events dropped because more keys were kept than `PublisherSettings::max_compacted_keys` |
//! | `meshless_observer_events_total` {rpc, outcome} | counter | events handled (`handled`, `dead_letter`) |
//! | `meshless_observer_lag_seconds` {rpc} | gauge | publish-to-handled time of the latest event handled, from any producer instance (no per-instance label: instances come and go) |
//! | `meshless_observer_missed_events_total` {rpc} | counter | events reported missed (gaps of a known count) |
//! | `meshless_observer_gaps_total` {rpc} | counter | gap reports, those of an unknown count (a producer that restarted) included |
//! | `meshless_observer_redelivered_events_total` {rpc} | counter | events received with a delivery count above 1 |
//!
//! Every name above is made in this module (the `metrics::*!` calls below), nowhere else.
//!
//! Spans: `meshless.call` (client: target, method, instance, status), `meshless.serve`
//! (server: method, status), `meshless.event` (observer: rpc, instance, epoch, sequence,
//! delivery count), all at DEBUG level.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use crate::admin::registry::{wall_nanos, CallCounts, SocketEntry};
use bytes::Bytes;
use http_body::Frame;

pub(crate) use code::code_name;

mod code;

/// The header (or trailer) that carries a call's status.
pub(crate) const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

fn status_of(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let status = headers
        .get(GRPC_STATUS)?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(tonic::Code::from(status))
}

/// Which end of a call is reporting.
#[derive(Debug, Clone)]
pub(crate) enum Side {
    Client { target: Arc<str> },
    Server,
}

/// The metric handles of calls, per method, made on first use: labelling metrics per call
/// would allocate per call. One per channel (client side) or server.
#[derive(Debug)]
pub(crate) struct CallMetrics {
    side: Side,
    /// Read by every call without a lock; replaced whole when a method is added.
    by_method: arc_swap::ArcSwap<HashMap<String, Arc<MethodMetrics>>>,
    /// Held while a method is added.
    adding: Mutex<()>,
    /// Calls started and ended, over all methods, for channelz and the admin service.
    pub(crate) counts: Arc<CallCounts>,
}

/// How many methods get handles of their own; more share one entry labelled `other`, so that
/// a peer sending made-up method names cannot grow the table (or a metrics backend) at will.
const MAX_METHODS: usize = 512;

#[derive(Debug)]
struct MethodMetrics {
    side: Side,
    method: metrics::SharedString,
    /// By gRPC status code, 0 to 16.
    calls: [OnceLock<metrics::Counter>; 17],
    duration: metrics::Histogram,
    /// The channel's or server's [`CallMetrics::counts`].
    counts: Arc<CallCounts>,
}

impl CallMetrics {
    pub(crate) fn new(side: Side) -> Self {
        Self {
            side,
            by_method: arc_swap::ArcSwap::default(),
            adding: Mutex::new(()),
            counts: Arc::default(),
        }
    }

    /// Counts the calls in `counts` (a server's, shared with its registry entry).
    pub(crate) fn counting_in(mut self, counts: Arc<CallCounts>) -> Self {
        self.counts = counts;
        self
    }

    fn method(&self, method: &str) -> Arc<MethodMetrics> {
        if let Some(found) = self.by_method.load().get(method) {
            return found.clone();
        }
        let _adding = self.adding.lock().unwrap_or_else(|e| e.into_inner());
        let known = self.by_method.load_full();
        let key = if known.len() < MAX_METHODS || known.contains_key(method) {
            method
        } else {
            "other"
        };
        if let Some(found) = known.get(key) {
            return found.clone();
        }
        let metrics = Arc::new(MethodMetrics::new(
            self.side.clone(),
            key,
            self.counts.clone(),
        ));
        let mut by_method = HashMap::clone(&known);
        by_method.insert(key.to_owned(), metrics.clone());
        self.by_method.store(Arc::new(by_method));
        metrics
    }
}

impl MethodMetrics {
    fn new(side: Side, method: &str, counts: Arc<CallCounts>) -> Self {
        let label: metrics::SharedString = Arc::<str>::from(method).into();
        let duration = match &side {
            Side::Client { target } => metrics::histogram!(
                "meshless_client_call_duration_seconds",
                "target" => metrics::SharedString::from(target.clone()),
                "method" => label.clone()
            ),
            Side::Server => {
                metrics::histogram!("meshless_server_call_duration_seconds", "method" => label.clone())
            }
        };
        Self {
            side,
            method: label,
            calls: Default::default(),
            duration,
            counts,
        }
    }

    fn calls(&self, code: tonic::Code) -> &metrics::Counter {
        self.calls[(code as usize).min(16)].get_or_init(|| {
            let code = code_name(code);
            match &self.side {
                Side::Client { target } => metrics::counter!(
                    "meshless_client_calls_total",
                    "target" => metrics::SharedString::from(target.clone()),
                    "method" => self.method.clone(),
                    "code" => code
                ),
                Side::Server => metrics::counter!(
                    "meshless_server_calls_total",
                    "method" => self.method.clone(),
                    "code" => code
                ),
            }
        })
    }
}

/// One call, reported once its status is known: in the response headers (trailers-only),
/// in the trailers, or when it is dropped before either: `DEADLINE_EXCEEDED` when its deadline
/// had passed (the call was given up for it), `CANCELLED` otherwise.
#[derive(Debug)]
pub(crate) struct CallReport {
    metrics: Arc<MethodMetrics>,
    started: Instant,
    /// When it started, by the wall clock ([`wall_nanos`]).
    started_wall: u64,
    span: tracing::Span,
    deadline: Option<Instant>,
    reported: bool,
    /// The server connection the call came on, whose streams it counts in.
    socket: Option<Arc<SocketEntry>>,
}

/// How close to its deadline a call the client gave up counts as `DEADLINE_EXCEEDED` on the
/// server (at most half the timeout). The server's deadline is later than the client's by the
/// time the request took to arrive, so a client that gives up at its deadline cancels just
/// before the server's.
const NEAR_DEADLINE: std::time::Duration = std::time::Duration::from_millis(25);

impl CallReport {
    pub(crate) fn new(metrics: &CallMetrics, method: &str, span: tracing::Span) -> Self {
        let metrics = metrics.method(method);
        let wall = wall_nanos();
        metrics.counts.started_at(wall);
        Self {
            metrics,
            started: Instant::now(),
            started_wall: wall,
            span,
            deadline: None,
            reported: false,
            socket: None,
        }
    }

    /// Counts the call in the streams of the server connection it came on, too: one that
    /// ends with its status sent (trailers) as succeeded, one reset or dropped before as failed
    /// (channelz's meaning for a socket's streams).
    pub(crate) fn on_socket(mut self, socket: Option<Arc<SocketEntry>>) -> Self {
        if let Some(socket) = &socket {
            socket.streams.started_at(self.started_wall);
        }
        self.socket = socket;
        self
    }

    /// The call's deadline, `timeout` from now: a call dropped after it, or shortly before
    /// (see [`NEAR_DEADLINE`]), counts as `DEADLINE_EXCEEDED`.
    pub(crate) fn with_timeout(mut self, timeout: Option<std::time::Duration>) -> Self {
        self.deadline = timeout.and_then(|timeout| {
            let margin = NEAR_DEADLINE.min(timeout / 2);
            self.started.checked_add(timeout - margin)
        });
        self
    }

    /// Reports the call: its status was sent (`sent`), or it ended without one.
    fn finish(mut self, code: tonic::Code, sent: bool) {
        self.record(code, sent);
    }

    fn record(&mut self, code: tonic::Code, sent: bool) {
        if std::mem::replace(&mut self.reported, true) {
            return;
        }
        self.span.record("status", code_name(code));
        self.metrics.calls(code).increment(1);
        self.metrics.counts.ended(code == tonic::Code::Ok);
        if let Some(socket) = &self.socket {
            socket.streams.ended(sent);
        }
        self.metrics
            .duration
            .record(self.started.elapsed().as_secs_f64());
    }

    /// Reports a call that ended without a response.
    pub(crate) fn failed(self, code: tonic::Code) {
        self.finish(code, false);
    }

    /// Watches `response` for the call's status.
    pub(crate) fn watch<B>(self, response: http::Response<B>) -> http::Response<Reported<B>> {
        let (parts, body) = response.into_parts();
        let report = match status_of(&parts.headers) {
            Some(code) => {
                self.finish(code, true);
                None
            }
            None => Some(self),
        };
        http::Response::from_parts(
            parts,
            Reported {
                inner: body,
                report,
            },
        )
    }
}

impl Drop for CallReport {
    fn drop(&mut self) {
        if !self.reported {
            let code = match self.deadline {
                Some(deadline) if Instant::now() >= deadline => tonic::Code::DeadlineExceeded,
                _ => tonic::Code::Cancelled,
            };
            self.record(code, false);
        }
    }
}

/// A response body that reports its call when the status goes by.
#[derive(Debug)]
pub(crate) struct Reported<B> {
    inner: B,
    report: Option<CallReport>,
}

impl<B> Default for Reported<B>
where
    B: Default,
{
    fn default() -> Self {
        Self {
            inner: B::default(),
            report: None,
        }
    }
}

impl<B> http_body::Body for Reported<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: 'static,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    if let Some(report) = self.report.take() {
                        let code = status_of(trailers).unwrap_or(tonic::Code::Unknown);
                        report.finish(code, true);
                    }
                }
            }
            Poll::Ready(Some(Err(error))) => {
                let code = error_code(error);
                if let Some(report) = self.report.take() {
                    report.finish(code, false);
                }
            }
            Poll::Ready(None) => {
                if let Some(report) = self.report.take() {
                    report.finish(tonic::Code::Unknown, false);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The status code of a body's error: its own when it is a status (`DEADLINE_EXCEEDED` when
/// the call's deadline ended it), `UNAVAILABLE` for a broken connection otherwise.
fn error_code(error: &(dyn std::any::Any + 'static)) -> tonic::Code {
    let status = error.downcast_ref::<tonic::Status>().or_else(|| {
        error
            .downcast_ref::<Box<dyn std::error::Error + Send + Sync>>()
            .and_then(|boxed| boxed.downcast_ref::<tonic::Status>())
    });
    status.map_or(tonic::Code::Unavailable, tonic::Status::code)
}

/// The metric handles of one event RPC on a publisher, made once per event RPC.
#[derive(Debug)]
pub(crate) struct EventMetrics {
    pub(crate) published: metrics::Counter,
    pub(crate) refused: metrics::Counter,
    pub(crate) subscribers: metrics::Gauge,
    pub(crate) cut_off: metrics::Counter,
    pub(crate) redeliveries: metrics::Counter,
    pub(crate) log_errors: metrics::Counter,
    pub(crate) compaction_dropped: metrics::Counter,
}

impl EventMetrics {
    pub(crate) fn new(rpc: &str) -> Self {
        let rpc = metrics::SharedString::from(rpc.to_owned());
        Self {
            published: metrics::counter!("meshless_events_published_total", "rpc" => rpc.clone()),
            refused: metrics::counter!("meshless_events_refused_total", "rpc" => rpc.clone()),
            subscribers: metrics::gauge!("meshless_event_subscribers", "rpc" => rpc.clone()),
            cut_off: metrics::counter!("meshless_event_subscribers_cut_off_total", "rpc" => rpc.clone()),
            redeliveries: metrics::counter!("meshless_event_redeliveries_total", "rpc" => rpc.clone()),
            log_errors: metrics::counter!("meshless_event_log_errors_total", "rpc" => rpc.clone()),
            compaction_dropped: metrics::counter!("meshless_event_compaction_dropped_total", "rpc" => rpc),
        }
    }
}

/// The metric handles of one event RPC on an observer, made once per stream.
#[derive(Debug, Clone)]
pub(crate) struct ObserverMetrics {
    pub(crate) handled: metrics::Counter,
    pub(crate) dead_letters: metrics::Counter,
    pub(crate) missed: metrics::Counter,
    pub(crate) redelivered: metrics::Counter,
    pub(crate) gaps: metrics::Counter,
    pub(crate) lag: metrics::Gauge,
}

impl ObserverMetrics {
    pub(crate) fn new(rpc: &'static str) -> Self {
        Self {
            handled: metrics::counter!("meshless_observer_events_total", "rpc" => rpc, "outcome" => "handled"),
            dead_letters: metrics::counter!("meshless_observer_events_total", "rpc" => rpc, "outcome" => "dead_letter"),
            missed: metrics::counter!("meshless_observer_missed_events_total", "rpc" => rpc),
            redelivered: metrics::counter!("meshless_observer_redelivered_events_total", "rpc" => rpc),
            gaps: metrics::counter!("meshless_observer_gaps_total", "rpc" => rpc),
            lag: metrics::gauge!("meshless_observer_lag_seconds", "rpc" => rpc),
        }
    }
}

/// The gauge of the instances of `target` that calls can be sent to.
pub(crate) fn ready_instances(target: &str) -> metrics::Gauge {
    metrics::gauge!("meshless_client_ready_instances", "target" => target.to_owned())
}

/// The counters of connections a server refused at its caps: over all peers, and per peer.
pub(crate) fn connections_refused() -> (metrics::Counter, metrics::Counter) {
    (
        metrics::counter!("meshless_server_connections_refused_total", "reason" => "max_connections"),
        metrics::counter!("meshless_server_connections_refused_total", "reason" => "max_connections_per_peer"),
    )
}

/// The counter of calls to `target` sent again.
pub(crate) fn retries(target: &str) -> metrics::Counter {
    metrics::counter!("meshless_client_retries_total", "target" => target.to_owned())
}

#[cfg(test)]
mod table_test;
