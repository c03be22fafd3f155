//! [`Lingering`]: a server's TCP connection that, when closed, reads what the client still
//! sends before the socket goes, as Go's and nginx's HTTP servers do.
//!
//! A socket closed with unread data in it answers with a TCP reset, and a client that gets
//! the reset while writing (a window update, a call sent before it read the server's GOAWAY)
//! fails the whole connection at once: responses already sent but not yet read are lost, and
//! calls the server never saw fail as broken pipes rather than as refused by the GOAWAY, which
//! would be safe to retry. Draining the socket for a short while after the server is done with
//! it lets the client read everything and close first.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::accept::Admitted;

/// How long a closed connection is read from, at most, for the client to close its end.
const LINGER: Duration = Duration::from_secs(1);

/// A TCP connection of the server, drained when dropped unless the client closed it first.
#[derive(Debug)]
pub(crate) struct Lingering {
    stream: Option<TcpStream>,
    /// Whether the client closed its end (a read returned end of stream).
    client_closed: bool,
    /// The connection's place among the server's connections, given back when it ends.
    _admitted: Option<Admitted>,
}

impl Lingering {
    pub(crate) fn new(stream: TcpStream, admitted: Admitted) -> Self {
        Self {
            stream: Some(stream),
            client_closed: false,
            _admitted: Some(admitted),
        }
    }

    fn stream(&mut self) -> &mut TcpStream {
        self.stream.as_mut().expect("taken only on drop")
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(mut stream) = self.stream.take() else {
            return;
        };
        if self.client_closed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            // Our end is done: say so, then read until the client closes its end.
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
            let mut discard = [0u8; 1024];
            let _ = tokio::time::timeout(LINGER, async {
                while matches!(stream.read(&mut discard).await, Ok(n) if n > 0) {}
            })
            .await;
        });
    }
}

impl Connected for Lingering {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream
            .as_ref()
            .expect("taken only on drop")
            .connect_info()
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(self.stream()).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if buf.filled().len() == before && buf.remaining() > 0 {
                self.client_closed = true;
            }
        }
        polled
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.stream()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.stream()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.stream()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.stream()).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A client's socket, and the server's end of it.
    async fn connected() -> (TcpStream, Lingering) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let connection = Lingering {
            stream: Some(accepted),
            client_closed: false,
            _admitted: None,
        };
        (client, connection)
    }

    /// The server's end is dropped with the client's last bytes unread; the client then
    /// writes once more. With a plain socket the second write would meet a reset.
    #[tokio::test]
    async fn a_dropped_connection_is_drained_not_reset() {
        let (mut client, mut server) = connected().await;
        server.write_all(b"goodbye").await.unwrap();
        // Over loopback the bytes are in the server's socket once written.
        client.write_all(b"unread by the server").await.unwrap();
        drop(server);

        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, b"goodbye");
        // The server still reads: writing after its end closed is no error.
        client.write_all(b"after the end").await.unwrap();
        client.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_client_that_closed_first_is_not_waited_for() {
        let (mut client, mut server) = connected().await;
        client.shutdown().await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
        assert!(server.client_closed);
    }
}
