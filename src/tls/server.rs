//! [`ServerTlsConfig`]: a server's TLS settings, and the rustls configuration made of them.

use std::sync::Arc;

use tokio_rustls::rustls::{
    self,
    pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore,
};

use super::{Certificate, Identity};

/// TLS settings of a server: its [`Identity`], and for mutual TLS the CA that clients'
/// certificates must chain to. Its `Debug` output never shows the private key.
///
/// The methods are those of tonic's `ServerTlsConfig`.
#[derive(Clone, Default)]
#[must_use]
pub struct ServerTlsConfig {
    identity: Option<Identity>,
    client_ca_roots: Vec<Certificate>,
    client_auth_optional: bool,
    ignore_client_order: bool,
}

impl std::fmt::Debug for ServerTlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTlsConfig")
            .field("identity", &self.identity)
            .field("client_ca_roots", &self.client_ca_roots.len())
            .field("client_auth_optional", &self.client_auth_optional)
            .field("ignore_client_order", &self.ignore_client_order)
            .finish()
    }
}

impl ServerTlsConfig {
    /// Settings without an identity yet: set one with [`identity`](Self::identity).
    pub fn new() -> Self {
        Self::default()
    }

    /// The server's certificate chain and key.
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Asks clients for a certificate that chains to `certificate` (PEM): mutual TLS. Clients
    /// without one are refused during the handshake, unless
    /// [`client_auth_optional`](Self::client_auth_optional). May be called again to accept
    /// clients of several CAs.
    pub fn client_ca_root(mut self, certificate: Certificate) -> Self {
        self.client_ca_roots.push(certificate);
        self
    }

    /// Whether clients without a certificate are let in (a certificate given must still be
    /// valid). Default: no.
    pub fn client_auth_optional(mut self, optional: bool) -> Self {
        self.client_auth_optional = optional;
        self
    }

    /// Whether the server's order of cipher suites wins over the client's. Default: no.
    pub fn ignore_client_order(mut self, ignore: bool) -> Self {
        self.ignore_client_order = ignore;
        self
    }

    /// The rustls configuration, with HTTP/2 offered by ALPN; an error says what is wrong.
    pub(crate) fn rustls(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let identity = self
            .identity
            .as_ref()
            .ok_or("a server's TLS settings need its identity (`ServerTlsConfig::identity`)")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = if self.client_ca_roots.is_empty() {
            builder.with_no_client_auth()
        } else {
            let mut roots = RootCertStore::empty();
            for pem in &self.client_ca_roots {
                for certificate in certificates(pem.get_ref(), "a client CA certificate")? {
                    roots
                        .add(certificate)
                        .map_err(|e| format!("a client CA certificate: {e}"))?;
                }
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if self.client_auth_optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| format!("the client CA certificates: {e}"))?,
            )
        };
        let chain = certificates(identity.certificate.get_ref(), "the server's certificate")?;
        let key = PrivateKeyDer::from_pem_slice(&identity.key)
            .map_err(|e| format!("the server's private key: {e}"))?;
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| format!("the server's certificate and key: {e}"))?;
        config.ignore_client_order = self.ignore_client_order;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The certificates in `pem`, at least one.
fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: {e}"))?;
    if certificates.is_empty() {
        return Err(format!("{what}: no PEM certificate found"));
    }
    Ok(certificates)
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn settings_that_cannot_work_say_what_is_wrong() {
        let error = ServerTlsConfig::new().rustls().unwrap_err();
        assert!(error.contains("identity"), "{error}");
        let error = ServerTlsConfig::new()
            .identity(Identity::from_pem("not a certificate", "not a key"))
            .rustls()
            .unwrap_err();
        assert!(
            error.contains("the server's certificate: no PEM certificate found"),
            "{error}"
        );
    }

    #[test]
    fn debug_output_never_contains_the_private_key() {
        let key =
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n";
        let shown = format!(
            "{:?}",
            ServerTlsConfig::new().identity(Identity::from_pem("certificate", key))
        );
        assert!(
            !shown.contains("PRIVATE KEY") && !shown.contains("c2VjcmV0"),
            "{shown}"
        );
    }
}
