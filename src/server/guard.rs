//! [`Guarded`]: a server connection as HTTP/2 sees it (past TLS, when the server speaks TLS),
//! held to the server's time limits:
//!
//! - It must send the HTTP/2 preface before the handshake deadline, counted from its accept,
//!   a TLS handshake included: a peer that completes TLS and goes silent cannot hold a
//!   connection forever.
//! - Once the server stops, a connection that has not sent its preface is closed at once: it
//!   has no call to finish, and would hold up the graceful shutdown.
//! - Once the grace period is over, every connection is cut, so that no call goes on after
//!   `serve` returned.
//!
//! The server says which of its [`Phase`]s it is in through a watch channel; a connection
//! waiting to read or write is woken when the phase changes. A server whose `serve` future is
//! dropped takes its connections with it, as a server that ended.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::WatchStream;
use tokio_stream::Stream;
use tonic::transport::server::Connected;

/// The length of the HTTP/2 client preface, `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const PREFACE_LEN: usize = 24;

/// Where the server is in its life, as its connections see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Serving,
    /// The shutdown began: connections are told to go away, calls in flight finish.
    Stopping,
    /// The grace period is over.
    Over,
}

/// A connection of the server, closed when the server's limits say so.
pub(crate) struct Guarded<IO> {
    io: IO,
    /// Until the preface arrived: how many of its bytes are still to come, and by when.
    preface: Option<(usize, Pin<Box<Sleep>>)>,
    phases: WatchStream<Phase>,
    phase: Phase,
}

impl<IO> Guarded<IO> {
    pub(crate) fn new(io: IO, handshake_deadline: Instant, phases: watch::Receiver<Phase>) -> Self {
        let phase = *phases.borrow();
        Self {
            io,
            preface: Some((
                PREFACE_LEN,
                Box::pin(tokio::time::sleep_until(handshake_deadline)),
            )),
            phases: WatchStream::from_changes(phases),
            phase,
        }
    }

    /// Why the connection must end now, if it must. Registers for a wake-up when the
    /// server's phase changes.
    fn must_end(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        while self.phase != Phase::Over {
            match Pin::new(&mut self.phases).poll_next(cx) {
                Poll::Ready(Some(phase)) => self.phase = phase,
                // The server is gone (its `serve` future was dropped): so are its connections.
                Poll::Ready(None) => self.phase = Phase::Over,
                Poll::Pending => break,
            }
        }
        let why = match self.phase {
            Phase::Over => "the server's grace period is over, or the server is gone",
            Phase::Stopping if self.preface.is_some() => {
                "the server stopped before the connection sent the HTTP/2 preface"
            }
            _ => return None,
        };
        Some(io::Error::new(io::ErrorKind::ConnectionAborted, why))
    }
}

impl<IO: Connected> Connected for Guarded<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(error) = this.must_end(cx) {
            return Poll::Ready(Err(error));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some((missing, deadline)) = &mut this.preface {
            *missing = missing.saturating_sub(buf.filled().len() - before);
            if *missing == 0 {
                this.preface = None;
            } else if polled.is_pending() && deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface within the handshake timeout",
                )));
            }
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(error) = this.must_end(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(error) = this.must_end(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(error) = this.must_end(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn guarded(
        deadline: std::time::Duration,
    ) -> (
        tokio::io::DuplexStream,
        Guarded<tokio::io::DuplexStream>,
        watch::Sender<Phase>,
    ) {
        let (client, server) = tokio::io::duplex(1024);
        let (phases, watching) = watch::channel(Phase::Serving);
        let server = Guarded::new(server, Instant::now() + deadline, watching);
        (client, server, phases)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_the_preface_ends_at_the_deadline() {
        let (mut client, mut server, _phases) = guarded(std::time::Duration::from_secs(10));
        client.write_all(&PREFACE[..20]).await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(server.read(&mut buf).await.unwrap(), 20);
        let started = Instant::now();
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), std::time::Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_past_its_preface_has_no_deadline_and_lives_through_the_stop() {
        let (mut client, mut server, phases) = guarded(std::time::Duration::from_secs(10));
        client.write_all(PREFACE).await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(server.read(&mut buf).await.unwrap(), PREFACE.len());
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        phases.send_replace(Phase::Stopping);
        client.write_all(b"frames").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 6);
        server.write_all(b"answer").await.unwrap();

        // The end of the grace period wakes a connection waiting to read, and cuts it.
        let reading = tokio::spawn(async move { server.read(&mut buf).await });
        tokio::task::yield_now().await;
        phases.send_replace(Phase::Over);
        let error = reading.await.unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_dropped_takes_its_connections_with_it() {
        let (mut client, mut server, phases) = guarded(std::time::Duration::from_secs(10));
        client.write_all(PREFACE).await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(server.read(&mut buf).await.unwrap(), PREFACE.len());
        let reading = tokio::spawn(async move { server.read(&mut buf).await });
        tokio::task::yield_now().await;
        drop(phases);
        let error = reading.await.unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_closes_at_once_a_connection_waiting_for_its_preface() {
        let (_client, mut server, phases) = guarded(std::time::Duration::from_secs(10));
        let reading = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            server.read(&mut buf).await
        });
        tokio::task::yield_now().await;
        let stopped = Instant::now();
        phases.send_replace(Phase::Stopping);
        let error = reading.await.unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(stopped.elapsed(), std::time::Duration::ZERO);
    }
}
