//! [`Accepting`]: the connections a server takes, within limits.
//!
//! - After an accept error (file descriptors ran out, most often), accepting pauses for a moment
//!   instead of retrying at once: the same error would come back at once, and the server would
//!   spin at full CPU while well-behaved clients wait.
//! - Connections are capped, over all peers and per peer: past a cap, a new connection is
//!   closed as soon as it is accepted, and counted in
//!   `meshless_server_connections_refused_total`. A peer is an IPv4 address, or an IPv6 /64:
//!   the block one host or one subscriber is given, so that a host cannot evade the cap by
//!   using more of its own addresses.
//! - A new connection gets its handshake deadline (see [`Guarded`](super::guard::Guarded)): by
//!   then it must have finished TLS, if the server speaks it, and sent the HTTP/2 preface.

use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Sleep;
use tokio_stream::Stream;

use super::linger::Lingering;
use crate::admin::registry::{ServerEntry, SocketGuard};

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

/// The peer a connection from `ip` counts against: an IPv4 address (an IPv4-mapped IPv6
/// one included), or the /64 of an IPv6 address.
fn peer_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !0 << 64)),
        },
    }
}

/// Holds a connection's place in the counts, and in the server's list of connections, until
/// it is dropped.
#[derive(Debug)]
pub(crate) struct Admitted {
    counts: Arc<Mutex<Counts>>,
    peer: IpAddr,
    _listed: SocketGuard,
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

/// A connection just accepted.
pub(crate) struct Accepted {
    pub(crate) connection: Lingering,
    /// When the connection must have sent the HTTP/2 preface (and finished TLS before it).
    pub(crate) handshake_deadline: tokio::time::Instant,
}

/// The connections of a listener.
pub(crate) struct Accepting {
    listener: TcpListener,
    limits: Limits,
    counts: Arc<Mutex<Counts>>,
    pause: Option<Pin<Box<Sleep>>>,
    /// Connections refused at the cap over all peers, and at a peer's cap.
    refused: (metrics::Counter, metrics::Counter),
    /// Where the connections are listed.
    server: Arc<ServerEntry>,
}

impl Accepting {
    pub(crate) fn new(listener: TcpListener, limits: Limits, server: Arc<ServerEntry>) -> Self {
        Self {
            listener,
            limits,
            counts: Arc::default(),
            pause: None,
            refused: crate::telemetry::connections_refused(),
            server,
        }
    }

    /// A place for a connection from `remote`, or which cap is reached.
    fn admit(&self, remote: SocketAddr) -> Result<Admitted, &'static str> {
        let peer = peer_of(remote.ip());
        let mut counts = lock(&self.counts);
        let from_peer = counts.per_peer.get(&peer).copied().unwrap_or(0);
        if counts.total >= self.limits.max_connections {
            self.refused.0.increment(1);
            return Err("max_connections");
        }
        if from_peer >= self.limits.max_connections_per_peer {
            self.refused.1.increment(1);
            return Err("max_connections_per_peer");
        }
        counts.total += 1;
        counts.per_peer.insert(peer, from_peer + 1);
        Ok(Admitted {
            counts: self.counts.clone(),
            peer,
            _listed: self
                .server
                .add_socket(self.listener.local_addr().ok(), remote),
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
    type Item = Accepted;

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
                    let admitted = match self.admit(peer) {
                        Ok(admitted) => admitted,
                        Err(cap) => {
                            tracing::debug!(%peer, cap, "connection refused: a cap is reached");
                            continue;
                        }
                    };
                    // Small messages (events, short replies) must not wait for Nagle.
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%peer, %error, "setting TCP_NODELAY");
                    }
                    return Poll::Ready(Some(Accepted {
                        connection: Lingering::new(stream, admitted),
                        handshake_deadline: tokio::time::Instant::now()
                            + self.limits.handshake_timeout,
                    }));
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
    fn an_ipv6_peer_is_its_64_and_an_ipv4_mapped_one_its_ipv4_address() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(peer_of(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            peer_of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            peer_of(ip("2001:db8:1:2::7"))
        );
        assert_ne!(
            peer_of(ip("2001:db8:1:3::1")),
            peer_of(ip("2001:db8:1:2::1"))
        );
        assert_eq!(peer_of(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(peer_of(ip("10.0.0.1")), ip("10.0.0.1"));
    }

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
