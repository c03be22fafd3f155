//! [`Connector`]: how a client or an observer connects to one instance: timeouts, HTTP/2
//! keepalive and TLS, shared by [`Channel`](crate::Channel) (through the balancer) and
//! observers.

use std::time::Duration;

use tonic::transport::Endpoint;

use crate::Error;

/// How often a client pings a quiet connection that has calls or streams open, and never one
/// without: gRPC servers (C-core, Go, Java) by default refuse pings more often than every 5
/// minutes, and any without calls, with GOAWAY `too_many_pings` (the gRPC keepalive guide).
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(300);
/// How long a client's keepalive ping may go unanswered.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Turns an instance's address into a configured endpoint.
#[derive(Clone)]
pub(crate) struct Connector {
    pub(crate) connect_timeout: Duration,
    pub(crate) keepalive_interval: Duration,
    pub(crate) keepalive_timeout: Duration,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<tonic::transport::ClientTlsConfig>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("Connector");
        debug
            .field("connect_timeout", &self.connect_timeout)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("keepalive_timeout", &self.keepalive_timeout);
        // tonic's TLS configuration prints the private key: only whether there is one.
        #[cfg(feature = "tls")]
        debug.field("tls", &self.tls.is_some());
        debug.finish()
    }
}

impl Default for Connector {
    fn default() -> Self {
        Self::new(
            Duration::from_secs(5),
            (DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT),
        )
    }
}

impl Connector {
    /// Plaintext connections with these timeouts and keepalive (interval, timeout).
    pub(crate) fn new(connect_timeout: Duration, keepalive: (Duration, Duration)) -> Self {
        Self {
            connect_timeout,
            keepalive_interval: keepalive.0,
            keepalive_timeout: keepalive.1,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Uses TLS, verifying servers' certificates for the name `tls` sets, else for
    /// `target_name`: instances found through DNS are dialled by IP address, so the name to
    /// verify comes from the target, not from the address.
    #[cfg(feature = "tls")]
    pub(crate) fn with_tls(
        mut self,
        tls: Option<&crate::tls::ClientTls>,
        target_name: Option<&str>,
    ) -> Self {
        self.tls = tls.map(|tls| tls.config(target_name));
        self
    }

    /// Whether connections are made over TLS.
    pub(crate) fn uses_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        if self.tls.is_some() {
            return true;
        }
        false
    }

    fn scheme(&self) -> &'static str {
        #[cfg(feature = "tls")]
        if self.tls.is_some() {
            return "https";
        }
        "http"
    }

    /// The endpoint of the instance at `authority` (`10.0.0.7:50051`).
    pub(crate) fn endpoint(&self, authority: &str) -> Result<Endpoint, Error> {
        let endpoint = Endpoint::from_shared(format!("{}://{authority}", self.scheme()))
            .map_err(Error::transport)?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout)
            .keep_alive_while_idle(false);
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            return endpoint.tls_config(tls.clone()).map_err(Error::transport);
        }
        Ok(endpoint)
    }
}
