//! [`Accepting`]: the connections a server takes, within limits.
//!
//! - After an accept error (file descriptors ran out, most often), accepting pauses for a moment
//!   instead of retrying at once: the same error would come back at once, and the server would
//!   spin at full CPU while well-behaved clients wait.
//! - Connections are capped, over all peers and per peer IP address: past a cap, a new
//!   connection is closed as soon as it is accepted.
//! - A new connection must send the HTTP/2 preface within the handshake timeout (see
//!   [`Lingering`]): an idle TCP connection cannot hold a file descriptor forever.

use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Sleep;
use tokio_stream::Stream;

use super::linger::Lingering;

/// How long accepting pauses after an error.
const PAUSE_AFTER_ERROR: Duration = Duration::from_millis(100);

/// The limits of a server's connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_peer: usize,
    pub(crate) handshake_timeout: Duration,
}

/// The open connections, over all peers and per peer.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

/// Holds a connection's place in the counts until it is dropped.
#[derive(Debug)]
pub(crate) struct Admitted {
    counts: Arc<Mutex<Counts>>,
    peer: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        counts.total -= 1;
        if let Some(open) = counts.per_peer.get_mut(&self.peer) {
            *open -= 1;
            if *open == 0 {
                counts.per_peer.remove(&self.peer);
            }
        }
    }
}

fn lock(counts: &Mutex<Counts>) -> std::sync::MutexGuard<'_, Counts> {
    counts
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The connections of a listener, as a stream for tonic's `serve_with_incoming`.
pub(crate) struct Accepting {
    listener: TcpListener,
    limits: Limits,
    counts: Arc<Mutex<Counts>>,
    pause: Option<Pin<Box<Sleep>>>,
}

impl Accepting {
    pub(crate) fn new(listener: TcpListener, limits: Limits) -> Self {
        Self {
            listener,
            limits,
            counts: Arc::default(),
            pause: None,
        }
    }

    /// A place for a connection from `peer`, unless a cap is reached.
    fn admit(&self, peer: IpAddr) -> Option<Admitted> {
        let mut counts = lock(&self.counts);
        let from_peer = counts.per_peer.get(&peer).copied().unwrap_or(0);
        if counts.total >= self.limits.max_connections
            || from_peer >= self.limits.max_connections_per_peer
        {
            return None;
        }
        counts.total += 1;
        counts.per_peer.insert(peer, from_peer + 1);
        Some(Admitted {
            counts: self.counts.clone(),
            peer,
        })
    }
}

/// Whether an accept error is about the one connection being accepted (it was reset or
/// aborted, or the network failed under it), not about the listener or the process (out of
/// file descriptors): accept(2) says to go on accepting at once, as after `EAGAIN`.
fn of_one_connection(error: &io::Error) -> bool {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset, TimedOut};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | TimedOut
    ) {
        return true;
    }
    // EPROTO, ENOPROTOOPT, EHOSTDOWN, ENONET, EHOSTUNREACH, EOPNOTSUPP, ENETUNREACH (Linux).
    #[cfg(target_os = "linux")]
    if let Some(code) = error.raw_os_error() {
        return matches!(code, 71 | 92 | 112 | 64 | 113 | 95 | 101);
    }
    false
}

impl Stream for Accepting {
    type Item = io::Result<Lingering>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(pause) = &mut self.pause {
                if pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.pause = None;
            }
            match self.listener.poll_accept(cx) {
                Poll::Ready(Ok((stream, peer))) => {
                    let Some(admitted) = self.admit(peer.ip()) else {
                        tracing::debug!(%peer, "connection refused: too many connections");
                        continue;
                    };
                    // Small messages (events, short replies) must not wait for Nagle.
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%peer, %error, "setting TCP_NODELAY");
                    }
                    let connection =
                        Lingering::new(stream, admitted, self.limits.handshake_timeout);
                    return Poll::Ready(Some(Ok(connection)));
                }
                Poll::Ready(Err(error)) if of_one_connection(&error) => {
                    tracing::debug!(%error, "a connection failed before it was accepted");
                }
                Poll::Ready(Err(error)) => {
                    tracing::warn!(%error, pause = ?PAUSE_AFTER_ERROR, "accepting a connection failed; pausing");
                    self.pause = Some(Box::pin(tokio::time::sleep(PAUSE_AFTER_ERROR)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn errors_of_one_connection_do_not_pause_accepting_and_running_out_of_files_does() {
        assert!(of_one_connection(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
        #[cfg(target_os = "linux")]
        assert!(of_one_connection(&io::Error::from_raw_os_error(71)));
        // EMFILE: out of file descriptors.
        assert!(!of_one_connection(&io::Error::from_raw_os_error(24)));
    }
}
