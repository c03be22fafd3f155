//! TLS and mutual TLS with certificates made at test time: instances dialled by IP address are
//! verified against the service's name, wrong names and missing client certificates are
//! refused, and observers subscribe over TLS.

#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use meshless::events::ObserverOptions;
use meshless::testing::TestDns;
use meshless::tls::{Certificate, ClientTls, Identity, ServerTlsConfig};
use meshless::{Channel, Code, Server};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use support::testing::v1::EchoObserver;
use support::{
    request, served_by, Echo, EchoClient, EchoPublisher, EchoService, EchoedEvent, Forward, Running,
};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// A certificate authority made for one test.
struct Authority {
    certificate: String,
    der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        Self {
            certificate: certificate.pem(),
            der: certificate.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate and key for `name`.
    fn identity(&self, name: &str) -> Identity {
        let params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        Identity::from_pem(certificate.pem(), key.serialize_pem())
    }

    fn certificate(&self) -> Certificate {
        Certificate::from_pem(&self.certificate)
    }

    fn client(&self) -> ClientTls {
        ClientTls::new().ca_certificate(self.certificate())
    }
}

async fn tls_server(tls: ServerTlsConfig, name: &str) -> Running {
    Running::start(
        Server::builder()
            .tls(tls)
            .add_service(EchoService::new(Echo::named(name))),
    )
    .await
}

async fn client(target: &str, tls: ClientTls) -> EchoClient {
    let channel = Channel::builder()
        .tls(tls)
        .wait_timeout(Duration::from_secs(3))
        .connect(target)
        .await
        .unwrap();
    EchoClient::new(channel)
}

#[tokio::test]
async fn instances_found_by_ip_are_verified_against_the_service_name() {
    let authority = Authority::new();
    let server = tls_server(
        ServerTlsConfig::new().identity(authority.identity("echo.service.test")),
        "secure",
    )
    .await;
    let dns = TestDns::start("service.test").await.unwrap();
    dns.add_ip("echo.service.test", server.addr.ip())
        .await
        .unwrap();
    // The instance is dialled at 127.0.0.1; its certificate names only the service.
    let target = dns.target("echo.service.test", server.addr.port());
    let echo = client(&target, authority.client()).await;
    let reply = echo.unary(request("over TLS")).await.unwrap();
    assert_eq!(served_by(reply.get_ref()), "secure");

    // An `ipv4:` target has no name of its own: the name is set explicitly.
    let echo = client(
        &server.target(),
        authority.client().server_name("echo.service.test"),
    )
    .await;
    echo.unary(request("by address")).await.unwrap();
    dns.stop().await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let authority = Authority::new();
    let server = tls_server(
        ServerTlsConfig::new().identity(authority.identity("echo.service.test")),
        "secure",
    )
    .await;
    let echo = client(
        &server.target(),
        authority.client().server_name("users.service.test"),
    )
    .await;
    let status = echo.unary(request("hello")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("certificate") || status.message().contains("Certificate"),
        "the reason is given: {}",
        status.message()
    );

    // A certificate from a CA the client does not trust is refused too.
    let stranger = Authority::new();
    let echo = client(
        &server.target(),
        stranger.client().server_name("echo.service.test"),
    )
    .await;
    let status = echo.unary(request("hello")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_valid_certificate() {
    let authority = Authority::new();
    let server = tls_server(
        ServerTlsConfig::new()
            .identity(authority.identity("echo.service.test"))
            .client_ca_root(authority.certificate()),
        "mutual",
    )
    .await;
    let named = |tls: ClientTls| tls.server_name("echo.service.test");

    let anonymous = client(&server.target(), named(authority.client())).await;
    let status = anonymous.unary(request("hello")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    let stranger = Authority::new();
    let forged = client(
        &server.target(),
        named(
            authority
                .client()
                .identity(stranger.identity("client.test")),
        ),
    )
    .await;
    let status = forged.unary(request("hello")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    let member = client(
        &server.target(),
        named(
            authority
                .client()
                .identity(authority.identity("client.test")),
        ),
    )
    .await;
    let reply = member.unary(request("hello")).await.unwrap();
    assert_eq!(served_by(reply.get_ref()), "mutual");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn observers_subscribe_over_mutual_tls() {
    let authority = Authority::new();
    let publisher = EchoPublisher::new();
    let server = Running::start(
        Server::builder()
            .tls(
                ServerTlsConfig::new()
                    .identity(authority.identity("echo.service.test"))
                    .client_ca_root(authority.certificate()),
            )
            .add_service(EchoService::with_publisher(
                Echo::default(),
                publisher.clone(),
            )),
    )
    .await;
    let (events, mut received) = mpsc::unbounded_channel();
    let tls = authority
        .client()
        .identity(authority.identity("observer.test"))
        .server_name("echo.service.test");
    let observer = EchoObserver::new()
        .echoed(Forward(events))
        .options(ObserverOptions::default().tls(tls))
        .start(&server.target())
        .await
        .unwrap();
    for i in 0..3 {
        publisher
            .publish_echoed(EchoedEvent {
                message: i.to_string(),
            })
            .expect("a small event");
    }
    for i in 0..3 {
        assert_eq!(received.recv().await.unwrap(), i.to_string());
    }
    observer.stop().await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_group_member_belongs_to_the_client_certificate_that_joined_it() {
    use meshless::v1::{Acknowledgement, Cursor, EventGroupsClient, Subscribe};
    use tokio_stream::StreamExt;

    let authority = Authority::new();
    let publisher = EchoPublisher::new();
    let server = Running::start(
        Server::builder()
            .tls(
                ServerTlsConfig::new()
                    .identity(authority.identity("echo.service.test"))
                    .client_ca_root(authority.certificate()),
            )
            .add_service(EchoService::with_publisher(
                Echo::default(),
                publisher.clone(),
            )),
    )
    .await;
    let channel_of = |name: &str| {
        let tls = authority
            .client()
            .identity(authority.identity(name))
            .server_name("echo.service.test");
        let target = server.target();
        async move {
            Channel::builder()
                .tls(tls)
                .wait_timeout(Duration::from_secs(3))
                .connect(&target)
                .await
                .unwrap()
        }
    };
    let (alice, mallory) = (
        channel_of("alice.test").await,
        channel_of("mallory.test").await,
    );
    let mut stream = EchoClient::new(alice.clone())
        .into_tonic()
        .echoed(Subscribe {
            group: "workers".into(),
            member: "worker-1".into(),
            lease_ms: 100,
            ..Subscribe::default()
        })
        .await
        .unwrap()
        .into_inner();
    let published = publisher
        .publish_echoed(EchoedEvent {
            message: "work".into(),
        })
        .unwrap();
    let delivered = tokio::time::timeout(support::PATIENCE, stream.next()).await;
    assert!(matches!(delivered, Ok(Some(Ok(_)))), "{delivered:?}");
    let ack = Acknowledgement {
        rpc: "/testing.v1.Echo/Echoed".into(),
        group: "workers".into(),
        member: "worker-1".into(),
        handled: Some(Cursor {
            epoch: published.epoch,
            sequence: published.sequence,
        }),
        leave: true,
        ..Acknowledgement::default()
    };
    let refused = EventGroupsClient::new(mallory)
        .acknowledge(ack.clone())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // Alice's certificate renewed (a new key and serial, the same name from the same CA) is
    // still Alice.
    let renewed = channel_of("alice.test").await;
    let left = EventGroupsClient::new(renewed)
        .acknowledge(ack)
        .await
        .unwrap();
    assert_eq!(left.into_inner().unacknowledged, 0);
    drop(stream);
    server.stop().await.unwrap();
}

/// A TLS client that completes its handshake with the server at `addr` (named
/// `echo.service.test`), then sends nothing: not even the HTTP/2 preface.
async fn silent_after_the_handshake(
    authority: &Authority,
    addr: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use std::sync::Arc;
    use tokio_rustls::rustls::{self, pki_types};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(pki_types::CertificateDer::from(authority.der.clone()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = pki_types::ServerName::try_from("echo.service.test").unwrap();
    tokio::time::timeout(
        support::PATIENCE,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("the TLS handshake completes")
    .expect("the TLS handshake succeeds")
}

/// Reads until the server closes the connection; what the server sent before is ignored
/// (its HTTP/2 settings).
async fn read_until_closed(connection: &mut (impl tokio::io::AsyncRead + Unpin)) {
    let mut buf = [0u8; 1024];
    while let Ok(read) = connection.read(&mut buf).await {
        if read == 0 {
            break;
        }
    }
}

#[tokio::test]
async fn a_client_silent_after_the_tls_handshake_is_closed_at_the_handshake_timeout() {
    let authority = Authority::new();
    let server = Running::start(
        Server::builder()
            .tls(ServerTlsConfig::new().identity(authority.identity("echo.service.test")))
            .handshake_timeout(Duration::from_millis(300))
            .add_service(EchoService::new(Echo::named("secure"))),
    )
    .await;
    let mut silent = silent_after_the_handshake(&authority, server.addr).await;
    tokio::time::timeout(Duration::from_secs(10), read_until_closed(&mut silent))
        .await
        .expect("a connection without the HTTP/2 preface is closed at the handshake timeout");

    // A client that speaks HTTP/2 after the handshake is served as before.
    let echo = client(
        &server.target(),
        authority.client().server_name("echo.service.test"),
    )
    .await;
    echo.unary(request("hello")).await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_silent_after_the_tls_handshake_does_not_hold_up_a_shutdown() {
    let authority = Authority::new();
    let server = Running::start(
        Server::builder()
            .tls(ServerTlsConfig::new().identity(authority.identity("echo.service.test")))
            .handshake_timeout(Duration::from_secs(60))
            .grace_period(Duration::from_secs(60))
            .add_service(EchoService::new(Echo::named("secure"))),
    )
    .await;
    let mut silent = silent_after_the_handshake(&authority, server.addr).await;
    // The server's HTTP/2 settings arrive: it is past TLS, waiting for the preface.
    let mut settings = [0u8; 9];
    tokio::time::timeout(support::PATIENCE, silent.read_exact(&mut settings))
        .await
        .expect("the server sends its settings")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .expect("the shutdown does not wait for a connection that never sent the preface")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), read_until_closed(&mut silent))
        .await
        .expect("the silent connection is closed");
}

#[tokio::test]
async fn handlers_and_layers_see_the_client_certificate_and_address_as_with_tonic() {
    fn needs_a_certificate(
        request: meshless::Request<()>,
    ) -> Result<meshless::Request<()>, meshless::Status> {
        let certificates = request.peer_certs().map_or(0, |chain| chain.len());
        match (certificates, request.remote_addr()) {
            (1.., Some(addr)) if addr.ip().is_loopback() => Ok(request),
            (certificates, addr) => Err(meshless::Status::permission_denied(format!(
                "{certificates} certificates from {addr:?}"
            ))),
        }
    }
    let authority = Authority::new();
    let server = Running::start(
        Server::builder()
            .tls(
                ServerTlsConfig::new()
                    .identity(authority.identity("echo.service.test"))
                    .client_ca_root(authority.certificate())
                    .client_auth_optional(true),
            )
            .layer(meshless::server::InterceptorLayer::new(needs_a_certificate))
            .add_service(EchoService::new(Echo::named("mutual"))),
    )
    .await;
    let named = |tls: ClientTls| tls.server_name("echo.service.test");
    let member = client(
        &server.target(),
        named(
            authority
                .client()
                .identity(authority.identity("client.test")),
        ),
    )
    .await;
    member.unary(request("hello")).await.unwrap();
    // Without a certificate (optional here), the layer sees none.
    let anonymous = client(&server.target(), named(authority.client())).await;
    let status = anonymous.unary(request("hello")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().starts_with("0 certificates"), "{status:?}");
    server.stop().await.unwrap();
}
