//! TLS and mutual TLS (rustls), for servers, clients and observers. Needs the `tls` feature.
//!
//! - Servers: [`Server::tls`](crate::Server::tls) with a [`ServerTlsConfig`] (tonic's): an
//!   [`Identity`] (certificate chain and key, PEM), and for mutual TLS a `client_ca_root`, the
//!   CA that client certificates must chain to.
//! - Clients and observers: [`ChannelBuilder::tls`](crate::ChannelBuilder::tls) and
//!   [`ObserverOptions::tls`](crate::events::ObserverOptions::tls) with a [`ClientTls`]: the CA
//!   to trust, and for mutual TLS the client's own identity.
//!
//! Instances found through DNS are dialled by IP address, yet their certificates name the
//! service. So a client verifies each instance's certificate against the name in its target
//! (`users.service.consul` for `dns+srv:///users.service.consul`), or against
//! [`ClientTls::server_name`] when set. For `ipv4:`/`ipv6:` targets, set the name (or give
//! the servers certificates for their IP addresses).

use tonic::transport::ClientTlsConfig;
pub use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// TLS settings of a client or an observer.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ClientTls {
    ca_certificates: Vec<Certificate>,
    identity: Option<Identity>,
    server_name: Option<String>,
}

impl ClientTls {
    /// TLS trusting no CA yet: add one with [`ca_certificate`](Self::ca_certificate).
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts `certificate` (PEM) as a CA for servers' certificates.
    pub fn ca_certificate(mut self, certificate: Certificate) -> Self {
        self.ca_certificates.push(certificate);
        self
    }

    /// Presents `identity` (certificate chain and key, PEM) to servers that ask for one:
    /// mutual TLS.
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Verifies servers' certificates against `name`, instead of the name in the target.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// tonic's configuration, verifying certificates for the name set, else for `target_name`.
    pub(crate) fn config(&self, target_name: Option<&str>) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new();
        for certificate in &self.ca_certificates {
            config = config.ca_certificate(certificate.clone());
        }
        if let Some(identity) = &self.identity {
            config = config.identity(identity.clone());
        }
        match self.server_name.as_deref().or(target_name) {
            Some(name) => config.domain_name(name),
            None => config,
        }
    }
}
