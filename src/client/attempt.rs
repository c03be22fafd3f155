//! One attempt of a call: picking an instance (by load, or by routing key), sending to it,
//! and telling how it ended, so that the call's retry loop (`call.rs`) knows whether it may
//! send the call again: answered, not processed anywhere, or possibly processed.

use std::sync::Arc;

use http_body_util::BodyExt;
use tonic::body::Body;
use tracing::Instrument;

use super::outcome::{Counted, Pending};
use super::BoxError;
use crate::balance::{counts_against, Failure, Instance, InstanceSet};
use crate::deadline::{encode, GRPC_TIMEOUT};
use crate::refused::REFUSED_HEADER;
use crate::telemetry::GRPC_STATUS;

/// How one attempt ended.
pub(super) enum Attempt {
    /// A response (whatever its status): the call is over.
    Answered(http::Response<Body>),
    /// The call was not processed anywhere: safe to send again.
    NotProcessed(Response),
    /// The call may have been processed: sent again only for idempotent methods.
    Unavailable(Response),
}

/// What an attempt that may be retried leaves if it is not.
pub(super) enum Response {
    Http(http::Response<Body>),
    Status(tonic::Status),
}

impl Attempt {
    pub(super) fn into_result(self) -> Result<http::Response<Body>, BoxError> {
        match self {
            Attempt::Answered(response)
            | Attempt::NotProcessed(Response::Http(response))
            | Attempt::Unavailable(Response::Http(response)) => Ok(response),
            Attempt::NotProcessed(Response::Status(status))
            | Attempt::Unavailable(Response::Status(status)) => Err(status.into()),
        }
    }
}

/// What an attempt needs to know of its call.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pick {
    pub(super) deadline: Option<tokio::time::Instant>,
    /// The hash of the call's routing key.
    pub(super) key: Option<u64>,
    /// One response message: the instance's response time is the whole call's.
    pub(super) single_response: bool,
}

/// Sends the call to one instance, another than those `tried` when there is one.
pub(super) async fn attempt(
    instances: &Arc<InstanceSet>,
    request: http::Request<Body>,
    pick: Pick,
    tried: &mut Vec<Arc<Instance>>,
) -> Attempt {
    let (instance, in_flight) = match instances.pick(pick.deadline, tried, pick.key).await {
        Ok(picked) => picked,
        // Picking already waited as long as it should.
        Err(status) => return Attempt::Answered(status.into_http()),
    };
    tried.push(instance.clone());
    let call_span = tracing::Span::current();
    call_span.record("instance", instance.key.as_str());
    call_span.record("attempts", tried.len());
    // Each attempt is a span of its own, the parent of the server's.
    let span =
        tracing::debug_span!("meshless.attempt", instance = %instance.key, attempt = tried.len());
    let mut request = request;
    crate::trace_context::inject(&span, request.headers_mut());
    // The server is told what is left of the deadline, after the wait for an instance and the
    // attempts before this one.
    if let Some(deadline) = pick.deadline {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        request.headers_mut().insert(GRPC_TIMEOUT, encode(left));
    }
    let Some(connection) = instance.connection() else {
        // Never sent: no response time, and no call it answered.
        in_flight.abandoned();
        return Attempt::NotProcessed(Response::Status(tonic::Status::unavailable(format!(
            "instance {} of `{}` lost its connection",
            instance.key,
            instances.target()
        ))));
    };
    // The request body's own failure (a message over the size limit), kept for the status:
    // the stream is then reset, and the reset alone would not say why.
    let request_error = Arc::new(std::sync::OnceLock::new());
    let request = request.map(|body| {
        Body::new(body.map_err({
            let request_error = request_error.clone();
            move |status: tonic::Status| {
                let _ = request_error.set(status.clone());
                status
            }
        }))
    });
    let outcome = if span.is_disabled() {
        connection.call(request).await
    } else {
        connection.call(request).instrument(span).await
    };
    let reset = outcome
        .as_ref()
        .err()
        .and_then(|error| stream_reset(&**error));
    // How the call went, as far as the response head tells (a failure answered at once comes
    // as a head with its status): failures count against the instance, and never as fast. An
    // answer whose head has no status is counted when it ends (see `Counted`).
    let failed = match &outcome {
        Ok(response) if response.headers().contains_key(REFUSED_HEADER) => None,
        Ok(response) => {
            status_of(response).map(|code| counts_against(code).then_some(Failure::Status(code)))
        }
        // Sent away before the call began (GOAWAY, a closed connection): no failure.
        Err(error) if refused_stream(&**error) => None,
        // This end reset the stream (its request failed): nothing the instance did.
        Err(_) if reset.is_some_and(|reset| !reset.remote) => None,
        Err(_) => Some(Some(Failure::Broken)),
    };
    if let Some(failure) = failed {
        instances.count_outcome(&instance, failure);
    }
    let refused =
        matches!(&outcome, Ok(response) if response.headers().contains_key(REFUSED_HEADER));
    // A refusal is no answer: it must not make the instance look fast.
    let in_flight = if matches!(failed, Some(Some(_))) || refused {
        in_flight.failed();
        None
    } else if outcome.is_err() {
        // Sent away before it began, or reset by this end: no answer of the instance's.
        in_flight.abandoned();
        None
    } else {
        Some(in_flight)
    };
    match outcome {
        Ok(response)
            if !response.headers().contains_key(REFUSED_HEADER)
                && status_of(&response).is_none() =>
        {
            let Some(mut in_flight) = in_flight else {
                return Attempt::Answered(response);
            };
            if !pick.single_response {
                in_flight.answered();
            }
            let pending = Pending {
                instances: instances.clone(),
                instance,
                in_flight,
                deadline: pick.deadline,
            };
            Attempt::Answered(response.map(|body| Body::new(Counted::new(body, pending))))
        }
        Ok(response) => {
            if response.headers().contains_key(REFUSED_HEADER) {
                instances.report_failure(&instance, "draining: refuses new calls".into());
                Attempt::NotProcessed(Response::Http(response))
            } else if status_of(&response) == Some(tonic::Code::Unavailable) {
                Attempt::Unavailable(Response::Http(response))
            } else {
                Attempt::Answered(response)
            }
        }
        Err(error) if timed_out(&*error) => {
            // tonic's channel enforces the `grpc-timeout` this call carries, too, and its timer
            // can fire just before the call's own: the same deadline, not a broken instance.
            Attempt::Answered(
                tonic::Status::deadline_exceeded(format!(
                    "no answer from instance {} of `{}` within the call's deadline",
                    instance.key,
                    instances.target()
                ))
                .into_http(),
            )
        }
        // One stream reset, not the connection: the call fails with a status of its own, and
        // the connection stays (as in grpc-go).
        Err(_) if reset.is_some() => {
            let status = match (reset, request_error.get()) {
                (Some(reset), Some(status)) if !reset.remote => {
                    crate::codegen::limit_status::<()>(Err(status.clone())).unwrap_err()
                }
                (Some(reset), _) => reset.status(&instance.key, instances.target()),
                (None, _) => tonic::Status::internal("the stream was reset"),
            };
            Attempt::Answered(status.into_http())
        }
        Err(error) => {
            let text = crate::text::error_chain(&*error);
            if refused_stream(&*error) {
                instances.report_closed(&instance);
            } else {
                instances.report_failure(&instance, text.clone());
            }
            // A broken connection is UNAVAILABLE in gRPC's terms (tonic would say UNKNOWN),
            // with the instance and the cause in the message.
            let status = tonic::Status::unavailable(format!(
                "instance {} of `{}`: {text}",
                instance.key,
                instances.target()
            ));
            if refused_stream(&*error) {
                Attempt::NotProcessed(Response::Status(status))
            } else {
                Attempt::Unavailable(Response::Status(status))
            }
        }
    }
}

/// The status of a response whose head carries it (a response with no messages).
fn status_of<B>(response: &http::Response<B>) -> Option<tonic::Code> {
    let status = response.headers().get(GRPC_STATUS)?.to_str().ok()?;
    status.parse::<i32>().ok().map(tonic::Code::from)
}

/// Whether the error is tonic's channel giving up at the call's `grpc-timeout`.
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if error.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// An HTTP/2 stream reset (`RST_STREAM`) that failed one call; its connection is fine.
#[derive(Debug, Clone, Copy)]
struct StreamReset {
    reason: h2::Reason,
    /// Reset by the server; otherwise by this end, because the request failed.
    remote: bool,
}

impl StreamReset {
    /// The call's status, mapped from the reset's reason as gRPC does, except that a `CANCEL`
    /// the caller did not ask for is the server giving up on the call (a handler that
    /// panicked): `INTERNAL`.
    fn status(self, instance: &str, target: &str) -> tonic::Status {
        let message = format!(
            "instance {instance} of `{target}` reset the call's stream ({:?})",
            self.reason
        );
        match self.reason {
            h2::Reason::ENHANCE_YOUR_CALM => tonic::Status::resource_exhausted(message),
            h2::Reason::INADEQUATE_SECURITY => tonic::Status::permission_denied(message),
            h2::Reason::CANCEL if !self.remote => tonic::Status::cancelled(message),
            _ => tonic::Status::internal(message),
        }
    }
}

/// The stream reset that failed the call, if that is what did: not a refused stream (see
/// [`refused_stream`]) and not the end of the connection (`GOAWAY`, I/O errors).
fn stream_reset(error: &(dyn std::error::Error + 'static)) -> Option<StreamReset> {
    let mut source = Some(error);
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            let reason = h2.reason()?;
            return (h2.is_reset() && reason != h2::Reason::REFUSED_STREAM).then_some(
                StreamReset {
                    reason,
                    remote: h2.is_remote(),
                },
            );
        }
        source = error.source();
    }
    None
}

/// Whether the error proves the server processed nothing of the call: the connection could
/// not be made, the call was still queued when its connection closed, the server refused the HTTP/2 stream (`REFUSED_STREAM`), or it was shutting
/// down and said so before the stream started (`GOAWAY` without error: streams it had begun
/// run to their end, so a stream failed by it never began).
fn refused_stream(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away()
                    && h2.is_remote()
                    && h2.reason() == Some(h2::Reason::NO_ERROR));
        }
        if let Some(hyper) = error.downcast_ref::<hyper::Error>() {
            // Queued for a connection that closed before it was written.
            if hyper.is_canceled() {
                return true;
            }
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = error.source();
    }
    false
}

#[cfg(test)]
mod test {
    use super::*;

    /// An error with a cause, as transport errors wrap theirs.
    #[derive(Debug)]
    struct Wrapped(Box<dyn std::error::Error + Send + Sync>);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("transport error")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn tonics_own_timeout_is_told_from_other_failures() {
        assert!(timed_out(&Wrapped(Box::new(tonic::TimeoutExpired(())))));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!timed_out(&Wrapped(Box::new(refused))));
        assert!(refused_stream(&Wrapped(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        )))));
    }
}
