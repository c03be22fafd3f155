//! One call through a [`Channel`](super::Channel): its deadline, the instance it goes to, and
//! retries where they are safe, within a retry budget.
//!
//! A call is sent again, to an instance picked anew, only when that cannot do harm:
//! - it never reached a server: the instance lost its connection before the call was sent,
//!   the connection could not be remade, the server refused the HTTP/2 stream
//!   (`REFUSED_STREAM`) or was going away before it began (`GOAWAY`), or a draining meshless
//!   server turned it away unprocessed;
//! - or its method is declared idempotent (`option idempotency_level = IDEMPOTENT` or
//!   `NO_SIDE_EFFECTS`) and it failed with `UNAVAILABLE` or a broken connection.
//!
//! Only calls with a single request message are retried (their request is kept to be sent
//! again). Retries draw on a budget, as Finagle's: 20% of the calls of the last 10 s, plus 10
//! per second, so that retries cannot multiply the load on a struggling service.

use std::sync::Arc;
use std::time::Duration;

use super::budget::RetryBudget;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tonic::body::Body;
use tracing::Instrument;

use super::deadline_body::Deadlined;
use super::outcome::{Counted, Pending};
use super::routing::{header_value, ROUTING_KEY_HEADER};
use crate::balance::{counts_against, Instance, InstanceSet};
use crate::codegen::Call;
use crate::deadline::{encode, grpc_timeout, GRPC_TIMEOUT};
use crate::extra_metadata::ExtraMetadata;
use crate::refused::REFUSED_HEADER;
use crate::telemetry::GRPC_STATUS;
use crate::telemetry::{CallMetrics, CallReport, Side};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How calls are timed and retried, shared by the clones of a channel.
#[derive(Debug)]
pub(crate) struct CallPolicy {
    /// The timeout of calls with a single response that set none.
    pub(crate) default_timeout: Option<Duration>,
    /// Attempts per call, the first included.
    pub(crate) attempts: u32,
    pub(crate) budget: RetryBudget,
    pub(crate) metrics: CallMetrics,
    /// Sent with every call that does not set the same key itself.
    pub(crate) metadata: ExtraMetadata,
}

impl CallPolicy {
    pub(crate) fn new(
        target: Arc<str>,
        default_timeout: Option<Duration>,
        attempts: u32,
        metadata: ExtraMetadata,
    ) -> Self {
        Self {
            metadata,
            default_timeout,
            attempts: attempts.max(1),
            budget: RetryBudget::default(),
            metrics: CallMetrics::new(Side::Client { target }),
        }
    }
}

/// How one attempt ended.
enum Attempt {
    /// A response (whatever its status): the call is over.
    Answered(http::Response<Body>),
    /// The call was not processed anywhere: safe to send again.
    NotProcessed(Response),
    /// The call may have been processed: sent again only for idempotent methods.
    Unavailable(Response),
}

/// What an attempt that may be retried leaves if it is not.
enum Response {
    Http(http::Response<Body>),
    Status(tonic::Status),
}

impl Attempt {
    fn into_result(self) -> Result<http::Response<Body>, BoxError> {
        match self {
            Attempt::Answered(response)
            | Attempt::NotProcessed(Response::Http(response))
            | Attempt::Unavailable(Response::Http(response)) => Ok(response),
            Attempt::NotProcessed(Response::Status(status))
            | Attempt::Unavailable(Response::Status(status)) => Err(status.into()),
        }
    }
}

pub(crate) async fn call(
    instances: Arc<InstanceSet>,
    policy: Arc<CallPolicy>,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, BoxError> {
    let method = request.uri().path();
    let span = tracing::debug_span!(
        "meshless.call",
        target = %instances.target(),
        method,
        instance = tracing::field::Empty,
        status = tracing::field::Empty,
        deadline_ms = tracing::field::Empty,
        attempts = tracing::field::Empty,
    );
    let report = CallReport::new(&policy.metrics, method, span.clone());
    match timed_call(&instances, &policy, request)
        .instrument(span)
        .await
    {
        Ok(response) => Ok(report.watch(response).map(Body::new)),
        Err(error) => {
            let code = error
                .downcast_ref::<tonic::Status>()
                .map_or(tonic::Code::Unavailable, tonic::Status::code);
            report.failed(code);
            Err(error)
        }
    }
}

async fn timed_call(
    instances: &Arc<InstanceSet>,
    policy: &CallPolicy,
    mut request: http::Request<Body>,
) -> Result<http::Response<Deadlined>, BoxError> {
    policy.metadata.add_to(request.headers_mut());
    let info = request.extensions_mut().remove::<Call>();
    let timeout = match grpc_timeout(&request) {
        Some(timeout) => Some(timeout),
        None => match (policy.default_timeout, info) {
            (Some(timeout), Some(call)) if call.single_response => Some(timeout),
            _ => None,
        },
    };
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    if let Some(timeout) = timeout {
        tracing::Span::current().record("deadline_ms", timeout.as_millis() as u64);
    }
    policy.budget.deposit();

    let mut tried = Vec::new();
    let calling = async {
        // The routing key: from its header, or read from the request (which is then sent
        // from the bytes kept, with the header added).
        let header_key = request.headers().get(ROUTING_KEY_HEADER);
        let (request, key) = match (header_key, info.and_then(|call| call.routing)) {
            (Some(key), _) => {
                let key = crate::keys::hash(key.as_bytes());
                (request, Some(key))
            }
            (None, Some(routing)) => routed(request, routing).await?,
            (None, None) => (request, None),
        };
        let pick = Pick {
            deadline,
            key,
            single_response: info.is_some_and(|call| call.single_response),
        };
        match info {
            Some(call) if call.single_request && policy.attempts > 1 => {
                with_retries(
                    instances,
                    policy,
                    request,
                    pick,
                    call.idempotent,
                    &mut tried,
                )
                .await
            }
            _ => attempt(instances, request, pick, &mut tried)
                .await
                .into_result(),
        }
    };
    let Some(deadline) = deadline else {
        return Ok(calling.await?.map(Deadlined::unbounded));
    };
    // One timer for the whole call: first for the response headers, then for the body.
    let mut expiry = Box::pin(tokio::time::sleep_until(deadline));
    let timeout = timeout.unwrap_or_default();
    let response = tokio::select! {
        biased;
        response = calling => response?,
        () = expiry.as_mut() => {
            // The instance the call was waiting on did not answer in time: that counts.
            if let Some(instance) = tried.last() {
                instances.count_outcome(instance, true);
            }
            return Err(tonic::Status::deadline_exceeded(format!(
                "no answer from `{}` within the call's {timeout:?} deadline",
                instances.target(),
            ))
            .into());
        }
    };
    let instances = instances.clone();
    Ok(response.map(|body| Deadlined::new(body, expiry, instances, timeout)))
}

async fn with_retries(
    instances: &Arc<InstanceSet>,
    policy: &CallPolicy,
    request: http::Request<Body>,
    pick: Pick,
    idempotent: bool,
    tried: &mut Vec<Arc<Instance>>,
) -> Result<http::Response<Body>, BoxError> {
    let (parts, body) = request.into_parts();
    // A single message: kept whole so that it can be sent again. Each attempt gets the method,
    // the path and the headers; the extensions stay here (nothing past this point reads them).
    let body = whole(body).await?;
    let mut attempt_number = 1;
    // Retries after a failure back off; the count of those so far.
    let mut backoffs = 0;
    loop {
        let mut request = http::Request::new(Body::new(Full::new(body.clone())));
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = parts.uri.clone();
        *request.headers_mut() = parts.headers.clone();
        let outcome = attempt(instances, request, pick, tried).await;
        let pause = match &outcome {
            Attempt::Answered(_) => None,
            // Never processed: sent again at once, as gRPC's transparent retries are.
            Attempt::NotProcessed(_) => Some(Duration::ZERO),
            Attempt::Unavailable(_) if !idempotent => None,
            Attempt::Unavailable(response) => match pushback(response) {
                Pushback::None => {
                    backoffs += 1;
                    Some(retry_backoff(backoffs))
                }
                Pushback::After(pause) => {
                    backoffs = 0;
                    Some(pause)
                }
                Pushback::DoNotRetry => None,
            },
        };
        let Some(pause) = pause else {
            return outcome.into_result();
        };
        if attempt_number >= policy.attempts {
            return outcome.into_result();
        }
        if pick
            .deadline
            .is_some_and(|deadline| tokio::time::Instant::now() + pause >= deadline)
        {
            tracing::debug!(target = %instances.target(), ?pause, "no time left to retry after the pause");
            return outcome.into_result();
        }
        if !policy.budget.withdraw() {
            tracing::debug!(target = %instances.target(), "retry budget spent; not retrying");
            return outcome.into_result();
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        attempt_number += 1;
        crate::telemetry::retries(instances.target()).increment(1);
        tracing::debug!(target = %instances.target(), attempt = attempt_number, "retrying on another pick");
    }
}

/// The pause before the first retry after a failure (gRFC A6's `initialBackoff`); each that
/// follows doubles it, up to [`RETRY_BACKOFF_MAX`].
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The header in which a server says when to retry, or not to (gRFC A6).
const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// The pause before the `n`th retry after a failure (from 1): exponential, with gRFC A6's
/// jitter (0.8 to 1.2 times), so that clients that failed together do not retry together.
fn retry_backoff(n: u32) -> Duration {
    let step = RETRY_BACKOFF
        .saturating_mul(2u32.saturating_pow(n.saturating_sub(1)))
        .min(RETRY_BACKOFF_MAX);
    step.mul_f64(0.8 + fastrand::f64() * 0.4)
}

/// What the server said about retrying a failed call.
#[derive(Debug, PartialEq, Eq)]
enum Pushback {
    /// Nothing: the client backs off as it sees fit.
    None,
    /// Retry after this long.
    After(Duration),
    /// Do not retry (a negative or malformed value).
    DoNotRetry,
}

fn pushback(response: &Response) -> Pushback {
    let Response::Http(response) = response else {
        return Pushback::None;
    };
    let Some(value) = response.headers().get(RETRY_PUSHBACK) else {
        return Pushback::None;
    };
    match value.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
        Some(millis) => Pushback::After(Duration::from_millis(millis)),
        None => Pushback::DoNotRetry,
    }
}

/// The request, its body kept whole and its routing key added as a header, and the hash of
/// that key. A request that is not one uncompressed gRPC message has no key (and goes where
/// the balancer says); generated clients send the key in the header, whatever the encoding.
async fn routed(
    request: http::Request<Body>,
    routing: crate::codegen::KeyPath,
) -> Result<(http::Request<Body>, Option<u64>), BoxError> {
    let (mut parts, body) = request.into_parts();
    let body = whole(body).await?;
    let key = match body.get(..5) {
        Some([0, length @ ..]) => {
            let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]);
            body.get(5..5 + length as usize).map(|message| {
                let key = header_value(&routing.key_of(message));
                let hash = crate::keys::hash(key.as_bytes());
                parts.headers.insert(ROUTING_KEY_HEADER, key);
                hash
            })
        }
        _ => None,
    };
    Ok((
        http::Request::from_parts(parts, Body::new(Full::new(body))),
        key,
    ))
}

/// The whole of a request body: without a copy when it is one chunk, as a single encoded
/// message is.
async fn whole(mut body: Body) -> Result<Bytes, BoxError> {
    let mut first: Option<Bytes> = None;
    let mut more: Option<bytes::BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        match (&mut first, &mut more) {
            (None, _) => first = Some(data),
            (Some(first), None) => {
                let mut joined = bytes::BytesMut::with_capacity(first.len() + data.len());
                joined.extend_from_slice(first);
                joined.extend_from_slice(&data);
                more = Some(joined);
            }
            (Some(_), Some(joined)) => joined.extend_from_slice(&data),
        }
    }
    Ok(match more {
        Some(joined) => joined.freeze(),
        None => first.unwrap_or_default(),
    })
}

/// What an attempt needs to know of its call.
#[derive(Debug, Clone, Copy)]
struct Pick {
    deadline: Option<tokio::time::Instant>,
    /// The hash of the call's routing key.
    key: Option<u64>,
    /// One response message: the instance's response time is the whole call's.
    single_response: bool,
}

/// Sends the call to one instance, another than those `tried` when there is one.
async fn attempt(
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
        Ok(response) => status_of(response).map(counts_against),
        // Sent away before the call began (GOAWAY, a closed connection): no failure.
        Err(error) if refused_stream(&**error) => None,
        // This end reset the stream (its request failed): nothing the instance did.
        Err(_) if reset.is_some_and(|reset| !reset.remote) => None,
        Err(_) => Some(true),
    };
    if let Some(failed) = failed {
        instances.count_outcome(&instance, failed);
    }
    let refused =
        matches!(&outcome, Ok(response) if response.headers().contains_key(REFUSED_HEADER));
    // A refusal is no answer: it must not make the instance look fast.
    let in_flight = if failed == Some(true) || refused {
        in_flight.failed();
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
