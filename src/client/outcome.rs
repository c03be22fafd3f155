//! [`Counted`]: a response body that counts its call's outcome against the instance that
//! answered when the call ends, for answers whose headers do not carry their status (streams,
//! and servers that send headers before they know the outcome): a status in the trailers, a
//! body that breaks, or a deadline that passes while it is read.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Instant;
use tonic::body::Body;

use crate::balance::{counts_against, Failure, InFlight, Instance, InstanceSet};
use crate::telemetry::GRPC_STATUS;

/// A response body whose end is counted against the instance that sent it.
pub(crate) struct Counted {
    inner: Body,
    pending: Option<Pending>,
}

/// The call, until its outcome is known.
pub(crate) struct Pending {
    pub(crate) instances: Arc<InstanceSet>,
    pub(crate) instance: Arc<Instance>,
    pub(crate) in_flight: InFlight,
    /// The call's deadline: a body dropped after it passed ended by it.
    pub(crate) deadline: Option<Instant>,
}

impl Pending {
    fn settle(self, failure: Option<Failure>) {
        let failed = failure.is_some();
        self.instances.count_outcome(&self.instance, failure);
        if failed {
            self.in_flight.failed();
        }
    }
}

impl Counted {
    pub(crate) fn new(inner: Body, pending: Pending) -> Self {
        Self {
            inner,
            pending: Some(pending),
        }
    }

    fn settle(&mut self, failure: Option<Failure>) {
        if let Some(pending) = self.pending.take() {
            pending.settle(failure);
        }
    }
}

impl HttpBody for Counted {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get(GRPC_STATUS)
                        .and_then(|status| status.to_str().ok())
                        .and_then(|status| status.parse::<i32>().ok())
                        .map(tonic::Code::from);
                    // Trailers without a status are a broken answer.
                    this.settle(match code {
                        Some(code) => counts_against(code).then_some(Failure::Status(code)),
                        None => Some(Failure::Broken),
                    });
                }
            }
            // A broken body, or one that ended without trailers.
            Poll::Ready(Some(Err(_)) | None) => this.settle(Some(Failure::Broken)),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        if pending
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            // Ended by the deadline, which the instance did not meet.
            pending.settle(Some(Failure::Deadline));
        } else {
            // The caller stopped reading: nothing to say about the instance.
            pending.in_flight.abandoned();
        }
    }
}
