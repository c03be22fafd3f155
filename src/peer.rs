//! [`PeerIdentity`]: who is calling, as the server's authorization layer or the peer's mutual
//! TLS certificate says; what binds a consumer group member to the peer that joined it.

use std::sync::Arc;

/// Who a peer is, for the server: the verdict of an authorization layer, or the certificate
/// the peer presented over mutual TLS.
///
/// A layer added with [`Server::layer`](crate::Server::layer) that authenticates a call
/// (checking a bearer token, for example) says who the caller is by inserting one into the
/// request's extensions. Without one, a call over mutual TLS is taken to come from the
/// names in the certificate the client presented: its issuer and subject, and its DNS and
/// URI names (SPIFFE IDs among them). A renewed certificate, with a new key and serial
/// number but the same names from the same CA, is the same identity. Otherwise, a call comes
/// from nobody in particular.
///
/// A consumer group member belongs to the identity that joined it: another identity's
/// takeover (joining under the same member name), acknowledgement or leave is refused with
/// `PERMISSION_DENIED`.
///
/// ```
/// # fn check(request: &mut meshless::Request<()>) {
/// request.extensions_mut().insert(meshless::PeerIdentity::new("billing"));
/// # }
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity(Kind);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Kind {
    Named(Arc<str>),
    /// The names in the peer's leaf certificate (see [`certificate_names`]).
    Certificate(Arc<[u8]>),
}

impl PeerIdentity {
    /// The identity named `name` (a user, a service account), as an authorization layer
    /// found it.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self(Kind::Named(name.into()))
    }

    /// The identity of the peer that presented `certificate` (DER) over mutual TLS: the
    /// names in it (issuer, subject, DNS and URI names), or with the `tls` feature off, or a
    /// certificate that cannot be read, the certificate itself.
    pub fn certificate(certificate: &[u8]) -> Self {
        Self(Kind::Certificate(certificate_names(certificate).into()))
    }

    /// The name given to [`new`](Self::new); `None` for a certificate.
    pub fn name(&self) -> Option<&str> {
        match &self.0 {
            Kind::Named(name) => Some(name),
            Kind::Certificate(_) => None,
        }
    }

    /// The identity of the peer that sent a request with these extensions: the one a layer
    /// inserted, else the mutual TLS certificate, else none.
    pub fn of(extensions: &http::Extensions) -> Option<Self> {
        if let Some(identity) = extensions.get::<Self>() {
            return Some(identity.clone());
        }
        #[cfg(feature = "tls")]
        {
            use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
            let info = extensions.get::<TlsConnectInfo<TcpConnectInfo>>()?;
            let certificates = info.peer_certs()?;
            return certificates.first().map(|leaf| Self::certificate(leaf));
        }
        #[allow(unreachable_code)]
        None
    }
}

/// What identifies the holder of `certificate` (DER): its issuer and subject (DER), then its
/// DNS and URI names, sorted, each with its length before it. A certificate that cannot be
/// read is identified by its bytes, under a mark that no names start with.
fn certificate_names(certificate: &[u8]) -> Vec<u8> {
    #[cfg(feature = "tls")]
    {
        let der = tokio_rustls::rustls::pki_types::CertificateDer::from(certificate);
        if let Ok(parsed) = webpki::EndEntityCert::try_from(&der) {
            let mut dns: Vec<&str> = parsed.valid_dns_names().collect();
            let mut uris: Vec<&str> = parsed.valid_uri_names().collect();
            dns.sort_unstable();
            uris.sort_unstable();
            let mut names = vec![b'N'];
            let fields = [parsed.issuer(), parsed.subject()].into_iter();
            let fields = fields
                .chain([b"dns" as &[u8]])
                .chain(dns.iter().map(|n| n.as_bytes()));
            let fields = fields
                .chain([b"uri" as &[u8]])
                .chain(uris.iter().map(|n| n.as_bytes()));
            for field in fields {
                names.extend((field.len() as u64).to_be_bytes());
                names.extend(field);
            }
            return names;
        }
    }
    let mut bytes = vec![b'C'];
    bytes.extend(certificate);
    bytes
}

impl std::fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Kind::Named(name) => f.debug_tuple("PeerIdentity").field(name).finish(),
            Kind::Certificate(_) => f.write_str("PeerIdentity(<client certificate>)"),
        }
    }
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Kind::Named(name) => write!(f, "`{}`", crate::text::shown(name)),
            Kind::Certificate(_) => f.write_str("a client certificate"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_s_verdict_comes_before_the_certificate_and_names_compare_by_value() {
        let mut extensions = http::Extensions::new();
        assert_eq!(PeerIdentity::of(&extensions), None);
        extensions.insert(PeerIdentity::new("alice"));
        assert_eq!(
            PeerIdentity::of(&extensions),
            Some(PeerIdentity::new("alice"))
        );
        assert_ne!(PeerIdentity::new("alice"), PeerIdentity::new("bob"));
        assert_ne!(
            PeerIdentity::new("alice"),
            PeerIdentity::certificate(b"alice")
        );
    }
}

#[cfg(all(test, feature = "tls"))]
mod certificate_tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

    fn authority(name: &str) -> Issuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap();
        Issuer::new(params, key)
    }

    /// A certificate with a new key for `name`, signed by `issuer`.
    fn certificate(issuer: &Issuer<'static, KeyPair>, name: &str) -> Vec<u8> {
        let params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        let key = KeyPair::generate().unwrap();
        params.signed_by(&key, issuer).unwrap().der().to_vec()
    }

    #[test]
    fn a_renewed_certificate_is_the_same_identity_and_other_names_or_issuers_are_not() {
        let billing = authority("billing CA");
        let first = certificate(&billing, "worker.billing.internal");
        let renewed = certificate(&billing, "worker.billing.internal");
        assert_ne!(first, renewed);
        let identity = PeerIdentity::certificate(&first);
        assert_eq!(identity, PeerIdentity::certificate(&renewed));
        assert_ne!(
            identity,
            PeerIdentity::certificate(&certificate(&billing, "mallory.billing.internal"))
        );
        let stranger = authority("another CA");
        assert_ne!(
            identity,
            PeerIdentity::certificate(&certificate(&stranger, "worker.billing.internal"))
        );
        // What cannot be read as a certificate is identified by its bytes.
        assert_eq!(
            PeerIdentity::certificate(b"junk"),
            PeerIdentity::certificate(b"junk")
        );
        assert_ne!(
            PeerIdentity::certificate(b"junk"),
            PeerIdentity::certificate(b"junk 2")
        );
    }
}
