//! [`WatchedConnector`]: connects to an instance over TCP and tells when that connection is
//! gone (the server closed it, or it broke), so that an instance whose connection closed is
//! no longer counted ready and is connected again at once, without waiting for a call to find
//! out.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Makes TCP connections whose end notifies `closed`.
#[derive(Debug, Clone)]
pub(super) struct WatchedConnector {
    closed: Arc<Notify>,
}

impl WatchedConnector {
    pub(super) fn new(closed: Arc<Notify>) -> Self {
        Self { closed }
    }
}

impl tower_service::Service<http::Uri> for WatchedConnector {
    type Response = Watched;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Watched>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let closed = self.closed.clone();
        Box::pin(async move {
            let authority = uri.authority().ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("`{uri}` has no host and port"),
                )
            })?;
            let stream = TcpStream::connect(authority.as_str()).await?;
            stream.set_nodelay(true)?;
            Ok(Watched {
                io: TokioIo::new(stream),
                closed,
            })
        })
    }
}

/// A TCP connection that notifies when it is dropped: HTTP/2 is done with it.
#[derive(Debug)]
pub(super) struct Watched {
    io: TokioIo<TcpStream>,
    closed: Arc<Notify>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.closed.notify_one();
    }
}

impl hyper::rt::Read for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}
