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
use super::routing::{header_value, ROUTING_KEY_HEADER};
use crate::balance::{Failure, Instance, InstanceSet};
use crate::codegen::Call;
use crate::deadline::grpc_timeout;
use crate::extra_metadata::ExtraMetadata;
use crate::telemetry::{CallMetrics, CallReport, Side};

use super::attempt::{attempt, Attempt, Pick, Response};
use super::BoxError;

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
                instances.count_outcome(instance, Some(Failure::Deadline));
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
