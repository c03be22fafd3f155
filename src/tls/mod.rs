//! TLS and mutual TLS (rustls), for servers, clients and observers. Needs the `tls` feature.
//!
//! - Servers: [`Server::tls`](crate::Server::tls) with a [`ServerTlsConfig`]: an [`Identity`]
//!   (certificate chain and key, PEM), and for mutual TLS a `client_ca_root`, the CA that
//!   client certificates must chain to. The server does the TLS handshake itself, so that its
//!   handshake timeout also covers the HTTP/2 preface that follows it.
//! - Clients and observers: [`ChannelBuilder::tls`](crate::ChannelBuilder::tls) and
//!   [`ObserverOptions::tls`](crate::events::ObserverOptions::tls) with a [`ClientTls`]: the CA
//!   to trust, and for mutual TLS the client's own identity.
//!
//! Instances found through DNS are dialled by IP address, yet their certificates name the
//! service. So a client verifies each instance's certificate against the name in its target
//! (`users.service.consul` for `dns+srv:///users.service.consul`), or against
//! [`ClientTls::server_name`] when set. For `ipv4:`/`ipv6:` targets, set the name (or give
//! the servers certificates for their IP addresses).

mod server;

pub use tonic::transport::Certificate;
use tonic::transport::ClientTlsConfig;

pub use server::ServerTlsConfig;

/// A certificate chain and its private key, PEM: who a server, or a client over mutual TLS,
/// is. Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct Identity {
    certificate: Certificate,
    key: Vec<u8>,
}

impl Identity {
    /// The certificate chain `certificate` (PEM, the leaf first) with its private key `key`
    /// (PEM: PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(certificate: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> Self {
        Self {
            certificate: Certificate::from_pem(certificate),
            key: key.as_ref().to_vec(),
        }
    }

    fn tonic(&self) -> tonic::transport::Identity {
        tonic::transport::Identity::from_pem(self.certificate.get_ref(), &self.key)
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identity(<certificate and private key>)")
    }
}

/// TLS settings of a client or an observer. Its `Debug` output never shows the private key.
#[derive(Clone, Default)]
#[must_use]
pub struct ClientTls {
    ca_certificates: Vec<Certificate>,
    identity: Option<Identity>,
    server_name: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_certificates", &self.ca_certificates.len())
            .field(
                "identity",
                &self
                    .identity
                    .as_ref()
                    .map(|_| "<certificate and private key>"),
            )
            .field("server_name", &self.server_name)
            .finish()
    }
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
            config = config.identity(identity.tonic());
        }
        match self.server_name.as_deref().or(target_name) {
            Some(name) => config.domain_name(name),
            None => config,
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    const KEY: &str =
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n";

    /// What `Debug` could leak of the key: its PEM text, or its bytes as a decimal list.
    fn leaks(debug: &str) -> bool {
        let bytes: Vec<String> = KEY.bytes().take(12).map(|b| b.to_string()).collect();
        debug.contains("PRIVATE KEY")
            || debug.contains("c2VjcmV0")
            || debug.contains(&bytes.join(", "))
    }

    #[test]
    fn debug_output_never_contains_the_private_key() {
        let tls = ClientTls::new()
            .ca_certificate(Certificate::from_pem("ca"))
            .identity(Identity::from_pem("certificate", KEY))
            .server_name("users.service.consul");
        let shown = format!("{tls:?}");
        assert!(!leaks(&shown), "{shown}");
        assert!(shown.contains("users.service.consul"));
        let builder = crate::Channel::builder().tls(tls.clone());
        let shown = format!("{builder:?}");
        assert!(!leaks(&shown), "{shown}");
        let connector = crate::endpoint::Connector::default().with_tls(Some(&tls), None);
        let shown = format!("{connector:?}");
        assert!(!leaks(&shown), "{shown}");
        // The test would catch a leak: tonic's own configuration prints the key.
        assert!(leaks(&format!("{:?}", tls.config(None))));
    }
}
