//! [`Deadlined`]: a response body that ends with `DEADLINE_EXCEEDED` once its call's deadline
//! passes (when the call has one), so that the deadline covers the whole call (headers, messages and trailers), not
//! only the wait for the response headers. A server that sends headers and then stalls, while
//! answering pings, would otherwise hold the call forever.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Sleep;
use tonic::body::Body;

use crate::balance::InstanceSet;

/// A response body bounded by its call's deadline, if it has one.
pub(crate) struct Deadlined {
    inner: Body,
    deadline: Option<Deadline>,
    expired: bool,
}

struct Deadline {
    /// Fires at the deadline.
    expiry: Pin<Box<Sleep>>,
    /// For the status, made only when the deadline passes: the target and the timeout.
    instances: Arc<InstanceSet>,
    timeout: Duration,
}

impl Deadlined {
    pub(crate) fn new(
        inner: Body,
        expiry: Pin<Box<Sleep>>,
        instances: Arc<InstanceSet>,
        timeout: Duration,
    ) -> Self {
        Self {
            inner,
            deadline: Some(Deadline {
                expiry,
                instances,
                timeout,
            }),
            expired: false,
        }
    }

    /// The body of a call without a deadline.
    pub(crate) fn unbounded(inner: Body) -> Self {
        Self {
            inner,
            deadline: None,
            expired: false,
        }
    }
}

impl HttpBody for Deadlined {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if this.expired {
            return Poll::Ready(None);
        }
        // The deadline first: a body that always has a message ready (a server faster than
        // its reader, an endless stream) must end at it too.
        if let Some(deadline) = &mut this.deadline {
            if deadline.expiry.as_mut().poll(cx).is_ready() {
                this.expired = true;
                return Poll::Ready(Some(Err(tonic::Status::deadline_exceeded(format!(
                    "the answer from `{}` did not end within the call's {:?} deadline",
                    deadline.instances.target(),
                    deadline.timeout
                )))));
            }
        }
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
