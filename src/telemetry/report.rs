//! [`CallReport`]: one call, counted once its status is known (in its metrics, its server's or
//! channel's counts, and its connection's streams), and [`Reported`], the response body that
//! watches for the status.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::Frame;

use super::{code_name, status_of, CallMetrics, MethodMetrics};
use crate::admin::registry::{wall_nanos, SocketEntry};

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
