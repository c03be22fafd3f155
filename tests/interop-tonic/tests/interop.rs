//! The wire is standard gRPC: plain tonic clients call meshless servers, and meshless clients
//! call plain tonic servers.

use meshless_interop_tonic::meshless_stubs::testing::v1 as mesh;
use meshless_interop_tonic::plain::testing::v1 as plain;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

struct MeshEcho;

impl mesh::EchoHandler for MeshEcho {
    async fn unary(
        &self,
        request: meshless::Request<mesh::EchoRequest>,
    ) -> Result<meshless::Response<mesh::EchoReply>, meshless::Status> {
        let request = request.into_inner();
        if request.fail_with_code != 0 {
            return Err(meshless::Status::new(
                request.fail_with_code.into(),
                "failed as asked",
            ));
        }
        Ok(meshless::Response::new(mesh::EchoReply {
            message: format!("meshless: {}", request.message),
            ..Default::default()
        }))
    }
    type ServerStreamStream =
        tokio_stream::Iter<std::vec::IntoIter<Result<mesh::EchoReply, meshless::Status>>>;
    async fn server_stream(
        &self,
        request: meshless::Request<mesh::EchoRequest>,
    ) -> Result<meshless::Response<Self::ServerStreamStream>, meshless::Status> {
        let message = request.into_inner().message;
        let replies: Vec<_> = message
            .chars()
            .map(|c| {
                Ok(mesh::EchoReply {
                    message: c.into(),
                    ..Default::default()
                })
            })
            .collect();
        Ok(meshless::Response::new(tokio_stream::iter(replies)))
    }
    async fn client_stream(
        &self,
        _: meshless::Request<meshless::Streaming<mesh::EchoRequest>>,
    ) -> Result<meshless::Response<mesh::EchoReply>, meshless::Status> {
        Err(meshless::Status::unimplemented("not in this test"))
    }
    type BidiStreamStream = Self::ServerStreamStream;
    async fn bidi_stream(
        &self,
        _: meshless::Request<meshless::Streaming<mesh::EchoRequest>>,
    ) -> Result<meshless::Response<Self::BidiStreamStream>, meshless::Status> {
        Err(meshless::Status::unimplemented("not in this test"))
    }
    async fn old_unary(
        &self,
        request: meshless::Request<mesh::EchoRequest>,
    ) -> Result<meshless::Response<mesh::EchoReply>, meshless::Status> {
        self.unary(request).await
    }
}

struct PlainEcho;

#[tonic::async_trait]
impl plain::echo_server::Echo for PlainEcho {
    async fn unary(
        &self,
        request: tonic::Request<plain::EchoRequest>,
    ) -> Result<tonic::Response<plain::EchoReply>, tonic::Status> {
        let request = request.into_inner();
        if request.fail_with_code != 0 {
            return Err(tonic::Status::new(
                request.fail_with_code.into(),
                "plain failure",
            ));
        }
        Ok(tonic::Response::new(plain::EchoReply {
            message: format!("tonic: {}", request.message),
            ..Default::default()
        }))
    }
}

#[tokio::test]
async fn a_plain_tonic_client_calls_a_meshless_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        meshless::Server::builder()
            .add_service(mesh::EchoService::new(MeshEcho))
            .serve_with_listener(listener, async {
                let _ = stopped.await;
            }),
    );

    let mut client = plain::echo_client::EchoClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let reply = client
        .unary(plain::EchoRequest {
            message: "hi".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "meshless: hi");
    let status = client
        .unary(plain::EchoRequest {
            fail_with_code: tonic::Code::NotFound as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::NotFound, "failed as asked")
    );
    let mut stream = client
        .server_stream(plain::EchoRequest {
            message: "ab".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().message, "a");
    assert_eq!(stream.message().await.unwrap().unwrap().message, "b");
    assert!(stream.message().await.unwrap().is_none());

    drop((client, stream));
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_meshless_client_calls_a_plain_tonic_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(plain::echo_server::EchoServer::new(PlainEcho))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );

    let client = mesh::EchoClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let reply = client
        .unary(mesh::EchoRequest {
            message: "hi".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "tonic: hi");
    let status = client
        .unary(mesh::EchoRequest {
            fail_with_code: meshless::Code::PermissionDenied as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (meshless::Code::PermissionDenied, "plain failure")
    );
    // Methods the plain server left to tonic's default stubs.
    #[allow(deprecated)]
    let status = client.old_unary(mesh::EchoRequest::default()).await;
    assert_eq!(status.unwrap_err().code(), meshless::Code::Unimplemented);

    drop(client);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_meshless_service_runs_in_tonics_own_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(mesh::EchoService::new(MeshEcho))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );

    let client = mesh::EchoClient::connect(format!("ipv4:{addr}"))
        .await
        .unwrap();
    let reply = client
        .unary(mesh::EchoRequest {
            message: "hi".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "meshless: hi");

    drop(client);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_plain_tonic_client_consumes_an_event_stream_as_the_declared_message() {
    let publisher = mesh::EchoPublisher::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        meshless::Server::builder()
            .add_service(mesh::EchoService::with_publisher(
                MeshEcho,
                publisher.clone(),
            ))
            .serve_with_listener(listener, async {
                let _ = stopped.await;
            }),
    );
    for message in ["first", "second", "third"] {
        publisher
            .publish_echoed(mesh::EchoedEvent {
                message: message.into(),
            })
            .expect("a small event");
    }

    let mut client = plain::echo_client::EchoClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let subscribe = meshless_interop_tonic::plain::meshless::v1::Subscribe::default();
    let mut stream = client.echoed(subscribe).await.unwrap().into_inner();
    for expected in ["first", "second", "third"] {
        let event: plain::EchoedEvent = stream.message().await.unwrap().unwrap();
        assert_eq!(event.message, expected);
    }

    drop((client, stream));
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
