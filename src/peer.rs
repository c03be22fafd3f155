//! [`PeerIdentity`]: who is calling, as the server's authorization layer or the peer's mutual
//! TLS certificate says; what binds a consumer group member to the peer that joined it.

use std::sync::Arc;

/// Who a peer is, for the server: the verdict of an authorization layer, or the certificate
/// the peer presented over mutual TLS.
///
/// A layer added with [`Server::layer`](crate::Server::layer) that authenticates a call
/// (checking a bearer token, for example) says who the caller is by inserting one into the
/// request's extensions. Without one, a call over mutual TLS is taken to come from the
/// certificate the client presented; otherwise, from nobody in particular.
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
    /// The DER encoding of the peer's leaf certificate.
    Certificate(Arc<[u8]>),
}

impl PeerIdentity {
    /// The identity named `name` (a user, a service account), as an authorization layer
    /// found it.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self(Kind::Named(name.into()))
    }

    /// The identity of the peer that presented `certificate` (DER) over mutual TLS.
    pub fn certificate(certificate: &[u8]) -> Self {
        Self(Kind::Certificate(certificate.into()))
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

impl std::fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Kind::Named(name) => f.debug_tuple("PeerIdentity").field(name).finish(),
            Kind::Certificate(der) => write!(f, "PeerIdentity(certificate of {} bytes)", der.len()),
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
