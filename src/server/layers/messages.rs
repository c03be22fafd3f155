//! [`WholeMessages`]: request bodies passed on one whole gRPC message at a time, so that the
//! decoder never reserves room for a message on the word of its 5-byte length prefix alone: a
//! peer could otherwise make the server reserve up to the size limit (4 MiB) per stream, 1,024
//! streams per connection, by sending 5 bytes on each. Memory now follows the bytes received.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;
use tower::Layer;
use tower_service::Service;

/// Messages declared longer than this are passed on at once: the decoder refuses them on
/// their prefix (unless a service raised its limit, where it reserves as before).
const HELD_UP_TO: usize = crate::DEFAULT_MAX_MESSAGE_SIZE;

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WholeMessages;

impl<S> Layer<S> for WholeMessages {
    type Service = Whole<S>;

    fn layer(&self, inner: S) -> Whole<S> {
        Whole(inner)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Whole<S>(S);

impl<S> Service<http::Request<Body>> for Whole<S>
where
    S: Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> S::Future {
        self.0.call(request.map(|body| Body::new(Held::new(body))))
    }
}

/// A request body that holds back each message until all of it has arrived.
pub(crate) struct Held<B> {
    inner: B,
    held: BytesMut,
    ended: bool,
}

impl<B> Held<B> {
    pub(crate) fn new(inner: B) -> Self {
        Self {
            inner,
            held: BytesMut::new(),
            ended: false,
        }
    }
}

/// How many bytes at the start of `bytes` are whole messages, or a message declared too
/// long to hold (see [`HELD_UP_TO`]), up to its prefix.
fn ready_len(bytes: &[u8]) -> usize {
    let mut at = 0;
    while let Some(prefix) = bytes.get(at..at + 5) {
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > HELD_UP_TO {
            return bytes.len();
        }
        if bytes.len() - at - 5 < len {
            break;
        }
        at += 5 + len;
    }
    at
}

impl<B> HttpBody for Held<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        loop {
            let ready = ready_len(&this.held);
            if ready > 0 {
                return Poll::Ready(Some(Ok(Frame::data(this.held.split_to(ready).freeze()))));
            }
            if this.ended {
                // What is left is no whole message: the decoder says so.
                if this.held.has_remaining() {
                    return Poll::Ready(Some(Ok(Frame::data(this.held.split().freeze()))));
                }
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    // The common case costs no copy: whole messages in one chunk.
                    Ok(data) if this.held.is_empty() && ready_len(&data) == data.len() => {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(data) => this.held.extend_from_slice(&data),
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(None) => this.ended = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.held.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod test {
    use std::collections::VecDeque;

    use super::*;

    /// A body that yields its chunks, then waits for ever (a peer that sends no more).
    struct Chunks(VecDeque<Bytes>);

    impl HttpBody for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            match self.0.pop_front() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => Poll::Pending,
            }
        }
    }

    fn message(len: u32, content: &[u8]) -> Vec<u8> {
        let mut message = vec![0];
        message.extend_from_slice(&len.to_be_bytes());
        message.extend_from_slice(content);
        message
    }

    fn poll(body: &mut Held<Chunks>) -> Poll<Option<Bytes>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(body).poll_frame(&mut cx).map(|frame| {
            frame.map(|frame| {
                frame
                    .ok()
                    .and_then(|f| f.into_data().ok())
                    .unwrap_or_default()
            })
        })
    }

    #[test]
    fn a_message_is_passed_on_only_once_all_of_it_arrived() {
        // A prefix declaring 4 MiB, and 3 bytes of it: nothing yet.
        let mut held = Held::new(Chunks(VecDeque::from([Bytes::from(message(
            4 << 20,
            b"abc",
        ))])));
        assert!(poll(&mut held).is_pending());

        // Whole messages go on unchanged; a message split over chunks once it is whole.
        let two = [message(1, b"a"), message(2, b"bc")].concat();
        let split = message(3, b"def");
        let mut held = Held::new(Chunks(VecDeque::from([
            Bytes::from(two.clone()),
            Bytes::copy_from_slice(&split[..6]),
            Bytes::copy_from_slice(&split[6..]),
        ])));
        assert_eq!(poll(&mut held), Poll::Ready(Some(Bytes::from(two))));
        assert_eq!(poll(&mut held), Poll::Ready(Some(Bytes::from(split))));
        assert!(poll(&mut held).is_pending());
    }

    #[test]
    fn a_message_declared_over_the_limit_is_passed_on_at_once() {
        let over = message(u32::try_from(HELD_UP_TO + 1).unwrap_or(u32::MAX), b"x");
        let mut held = Held::new(Chunks(VecDeque::from([Bytes::from(over.clone())])));
        assert_eq!(poll(&mut held), Poll::Ready(Some(Bytes::from(over))));
    }
}
