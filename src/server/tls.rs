//! [`TlsAccepting`]: a TLS server's connections, each handed to HTTP/2 once its TLS handshake
//! is done. Handshakes run beside each other and beside accepting, each within its
//! connection's handshake deadline; the same deadline then holds for the HTTP/2 preface (see
//! [`Guarded`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;
use tonic::transport::server::Connected as _;

use super::accept::{Accepted, Accepting};
use super::guard::{Guarded, Phase};
use super::linger::Lingering;

/// A connection past its TLS handshake, as the server serves it. Its connect info is tonic's
/// `TlsConnectInfo`, so `Request::peer_certs` and `remote_addr` work as with tonic's TLS.
pub(crate) type TlsConnection = Guarded<TlsStream<Lingering>>;

pub(crate) struct TlsAccepting {
    tcp: Accepting,
    acceptor: tokio_rustls::TlsAcceptor,
    handshakes: JoinSet<Option<(TlsStream<Lingering>, Instant)>>,
    phases: watch::Receiver<Phase>,
}

impl TlsAccepting {
    pub(crate) fn new(
        tcp: Accepting,
        config: Arc<tokio_rustls::rustls::ServerConfig>,
        phases: watch::Receiver<Phase>,
    ) -> Self {
        Self {
            tcp,
            acceptor: config.into(),
            handshakes: JoinSet::new(),
            phases,
        }
    }
}

async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    accepted: Accepted,
) -> Option<(TlsStream<Lingering>, Instant)> {
    let peer = accepted.connection.connect_info().remote_addr();
    let deadline = accepted.handshake_deadline;
    match tokio::time::timeout_at(deadline, acceptor.accept(accepted.connection)).await {
        Ok(Ok(stream)) => Some((stream, deadline)),
        Ok(Err(error)) => {
            tracing::debug!(?peer, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(?peer, "no TLS handshake within the handshake timeout");
            None
        }
    }
}

impl Stream for TlsAccepting {
    type Item = io::Result<TlsConnection>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        while let Poll::Ready(Some(accepted)) = Pin::new(&mut this.tcp).poll_next(cx) {
            this.handshakes
                .spawn(handshake(this.acceptor.clone(), accepted));
        }
        loop {
            match this.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Some((stream, deadline))))) => {
                    let connection = Guarded::new(stream, deadline, this.phases.clone());
                    return Poll::Ready(Some(Ok(connection)));
                }
                Poll::Ready(Some(_)) => continue,
                // Nothing in hand: accepting wakes this stream when a connection comes.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}
