//! [`Deadlined`]: a response body that ends with `DEADLINE_EXCEEDED` once its call's deadline
//! passes, so that the deadline covers the whole call (headers, messages and trailers), not
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

/// A response body bounded by its call's deadline.
pub(crate) struct Deadlined {
    inner: Body,
    /// Fires at the deadline; polled only while the body has nothing to give.
    deadline: Pin<Box<Sleep>>,
    /// For the status, made only when the deadline passes: the target and the timeout.
    instances: Arc<InstanceSet>,
    timeout: Duration,
    expired: bool,
}

impl Deadlined {
    pub(crate) fn new(
        inner: Body,
        deadline: Pin<Box<Sleep>>,
        instances: Arc<InstanceSet>,
        timeout: Duration,
    ) -> Self {
        Self {
            inner,
            deadline,
            instances,
            timeout,
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
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.expired = true;
            return Poll::Ready(Some(Err(tonic::Status::deadline_exceeded(format!(
                "the answer from `{}` did not end within the call's {:?} deadline",
                this.instances.target(),
                this.timeout
            )))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
