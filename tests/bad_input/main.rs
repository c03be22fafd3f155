//! Bad input thrown at a running server: malformed protobuf, truncated frames, oversized
//! messages, invalid cursors, nonsense subscriptions, HTTP/1 and garbage on the gRPC port.
//! Each gets a clear status (or a closed connection), nothing panics, and the server goes on
//! serving.

#[path = "../support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http_body_util::{BodyExt, Full};
use meshless::v1::{Cursor, Subscribe};
use meshless::{Code, Server, Status, DEFAULT_MAX_MESSAGE_SIZE};
use support::{request, served_by, Echo, EchoClient, EchoPublisher, EchoService, Running};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts panics anywhere in this test binary, server tasks included: every test asserts none.
fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // A failed assertion of a test is no panic of the server's.
            if !info
                .location()
                .is_some_and(|at| at.file().starts_with("tests/"))
            {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

async fn server() -> (Running, EchoPublisher) {
    count_panics();
    let publisher = EchoPublisher::new();
    let server = Running::start(Server::builder().add_service(EchoService::with_publisher(
        Echo::named("target"),
        publisher.clone(),
    )))
    .await;
    (server, publisher)
}

/// The server still answers properly, and nothing panicked.
async fn still_serving(server: &Running) {
    let echo = EchoClient::connect(server.target()).await.unwrap();
    let reply = echo.unary(request("still there?")).await.unwrap();
    assert_eq!(served_by(reply.get_ref()), "target");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a panic happened");
}

/// Sends and receives messages as raw bytes, whatever they contain.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

async fn raw_unary(server: &Running, path: &'static str, body: Bytes) -> Result<Bytes, Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(body),
        http::uri::PathAndQuery::from_static(path),
        Raw,
    )
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn malformed_protobuf_gets_a_status_naming_the_problem() {
    let (server, _publisher) = server().await;
    for garbage in [
        &[0xff_u8, 0xff, 0xff, 0xff][..],
        &[0x0a, 0x64, b'x'],       // field 1, length 100, one byte of it
        &[0x0b],                   // a group start, never ended
        &[0x08, 0x80, 0x80, 0x80], // a varint that never ends
    ] {
        let status = raw_unary(
            &server,
            "/testing.v1.Echo/Unary",
            Bytes::copy_from_slice(garbage),
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), Code::Internal, "{garbage:?}: {status:?}");
        assert!(
            status.message().contains("decode"),
            "{garbage:?}: {}",
            status.message()
        );
    }
    still_serving(&server).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_methods_and_services_are_unimplemented() {
    let (server, _publisher) = server().await;
    for path in ["/testing.v1.Echo/Nope", "/nope.v1.Nope/Nope"] {
        let path: &'static str = path;
        let status = raw_unary(&server, path, Bytes::new()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented, "{path}");
    }
    still_serving(&server).await;
    server.stop().await.unwrap();
}

/// An HTTP/2 connection to `server`, for requests tonic would not send.
async fn http2(server: &Running) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (send, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    send
}

/// The grpc-status of a response: from its headers, or from its trailers.
async fn grpc_status(response: http::Response<hyper::body::Incoming>) -> (String, String) {
    let (parts, body) = response.into_parts();
    let from = |headers: &http::HeaderMap| {
        headers.get("grpc-status").map(|status| {
            let message = headers
                .get("grpc-message")
                .map(|m| m.to_str().unwrap().to_owned())
                .unwrap_or_default();
            (status.to_str().unwrap().to_owned(), message)
        })
    };
    if let Some(status) = from(&parts.headers) {
        return status;
    }
    let collected = body.collect().await.unwrap();
    from(collected.trailers().expect("trailers")).expect("a grpc-status")
}

fn grpc_request(path: &str, body: Vec<u8>) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://meshless.test{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

#[tokio::test]
async fn truncated_frames_get_a_status() {
    let (server, _publisher) = server().await;
    let mut send = http2(&server).await;
    let cases: [Vec<u8>; 3] = [
        // The length prefix promises 100 bytes; 3 come.
        vec![0, 0, 0, 0, 100, 0x0a, 1, b'x'],
        // Half a length prefix.
        vec![0, 0, 0],
        // A compressed flag without compression negotiated.
        vec![1, 0, 0, 0, 1, 0],
    ];
    for body in cases {
        let response = send
            .send_request(grpc_request("/testing.v1.Echo/Unary", body.clone()))
            .await
            .unwrap();
        let (status, message) = grpc_status(response).await;
        assert_ne!(status, "0", "{body:?} must not succeed");
        assert!(
            !message.is_empty(),
            "{body:?}: status {status} without a message"
        );
    }
    still_serving(&server).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_messages_are_resource_exhausted_both_ways() {
    let (server, _publisher) = server().await;
    // Declared far beyond the limit: refused from the length prefix, before reading it all.
    let mut send = http2(&server).await;
    let mut body = vec![0];
    body.extend_from_slice(&(u32::MAX).to_be_bytes());
    let response = send
        .send_request(grpc_request("/testing.v1.Echo/Unary", body))
        .await
        .unwrap();
    let (status, message) = grpc_status(response).await;
    assert_eq!(status, "8", "RESOURCE_EXHAUSTED: {message}");

    // A real message just over the limit, sent by a client without a limit of its own.
    let mut big = vec![0x22]; // field 4 (payload), length-delimited
    let payload = DEFAULT_MAX_MESSAGE_SIZE;
    let mut length = payload;
    while length >= 0x80 {
        big.push((length as u8) | 0x80);
        length >>= 7;
    }
    big.push(length as u8);
    big.resize(big.len() + payload, b'x');
    let status = raw_unary(&server, "/testing.v1.Echo/Unary", big.into())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // The typed client refuses to send one, and a reply over the limit is refused too.
    let echo = EchoClient::connect(server.target()).await.unwrap();
    let status = echo
        .unary(support::testing::v1::EchoRequest {
            payload: vec![0; DEFAULT_MAX_MESSAGE_SIZE + 1],
            ..request("big")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let status = echo
        .unary(support::testing::v1::EchoRequest {
            reply_size: (DEFAULT_MAX_MESSAGE_SIZE + 1) as u32,
            ..request("big reply")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    still_serving(&server).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn invalid_cursors_and_nonsense_subscriptions_are_refused_clearly() {
    let (server, publisher) = server().await;
    let last = publisher
        .publish_echoed(support::EchoedEvent {
            message: "one".into(),
        })
        .expect("a small event");
    let echo = EchoClient::connect(server.target())
        .await
        .unwrap()
        .into_tonic();
    let refused = [
        (
            Subscribe {
                after: Some(Cursor {
                    epoch: last.epoch,
                    sequence: u64::MAX,
                }),
                ..Subscribe::default()
            },
            Code::InvalidArgument,
        ),
        (
            Subscribe {
                group: "g".repeat(100_000),
                ..Subscribe::default()
            },
            Code::InvalidArgument,
        ),
        (
            Subscribe {
                group: "g".into(),
                member: "m".repeat(1000),
                ..Subscribe::default()
            },
            Code::InvalidArgument,
        ),
        (
            Subscribe {
                group: "g".into(),
                after: Some(Cursor {
                    epoch: last.epoch,
                    sequence: last.sequence + 5,
                }),
                ..Subscribe::default()
            },
            Code::InvalidArgument,
        ),
    ];
    for (subscribe, code) in refused {
        let status = echo.clone().echoed(subscribe).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(!status.message().is_empty());
    }

    // Nonsense that has a sensible reading is served: an unknown start position is the
    // default, an absurd heartbeat rate is slowed down, an unknown epoch is a restart.
    let accepted = [
        Subscribe {
            start: 99,
            heartbeat_interval_ms: 1,
            ..Subscribe::default()
        },
        Subscribe {
            after: Some(Cursor {
                epoch: last.epoch ^ 0xdead,
                sequence: 12,
            }),
            lease_ms: u32::MAX,
            max_unacknowledged: u32::MAX,
            ..Subscribe::default()
        },
    ];
    for subscribe in accepted {
        let mut stream = echo.clone().echoed(subscribe).await.unwrap().into_inner();
        let (event, _) = stream
            .message()
            .await
            .unwrap()
            .unwrap()
            .into_parts()
            .unwrap();
        assert_eq!(event.message, "one");
    }
    still_serving(&server).await;
    server.stop().await.unwrap();
}

/// Writes `bytes` on a fresh connection and reads what comes back until the server closes it
/// (bounded: a test never waits forever).
async fn exchange(server: &Running, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server closes the connection");
    answer
}

#[tokio::test]
async fn http1_and_garbage_on_the_grpc_port_are_turned_away() {
    let (server, _publisher) = server().await;
    let http1 = exchange(
        &server,
        b"POST /testing.v1.Echo/Unary HTTP/1.1\r\nHost: meshless.test\r\nContent-Type: application/grpc\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    let http1 = String::from_utf8_lossy(&http1);
    assert!(
        !http1.starts_with("HTTP/1.1 200"),
        "HTTP/1 is not served: {http1}"
    );
    exchange(&server, &[0xde, 0xad, 0xbe, 0xef].repeat(1000)).await;
    // A valid HTTP/2 preface followed by garbage frames.
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0xff; 64]);
    exchange(&server, &preface).await;
    still_serving(&server).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn subscribers_beyond_the_limit_are_resource_exhausted() {
    count_panics();
    let mut settings = meshless::events::PublisherSettings::default();
    settings.max_subscribers = 2;
    let publisher = EchoPublisher::with_settings(settings);
    let server = Running::start(Server::builder().add_service(EchoService::with_publisher(
        Echo::named("target"),
        publisher.clone(),
    )))
    .await;
    let echo = EchoClient::connect(server.target())
        .await
        .unwrap()
        .into_tonic();
    let first = echo.clone().echoed(Subscribe::default()).await.unwrap();
    let second = echo.clone().echoed(Subscribe::default()).await.unwrap();
    let status = echo.clone().echoed(Subscribe::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // A place frees up when a subscriber goes.
    drop(first);
    // The server learns of it over the network: try again until it has (bounded).
    let mut third = None;
    for _ in 0..10_000 {
        match echo.clone().echoed(Subscribe::default()).await {
            Ok(stream) => {
                third = Some(stream.into_inner());
                break;
            }
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted),
        }
    }
    let mut third = third.expect("the freed place is given to a new subscriber");
    publisher
        .publish_echoed(support::EchoedEvent {
            message: "to the third".into(),
        })
        .expect("a small event");
    let (event, _) = third
        .message()
        .await
        .unwrap()
        .unwrap()
        .into_parts()
        .unwrap();
    assert_eq!(event.message, "to the third");
    drop((second, third));
    still_serving(&server).await;
    server.stop().await.unwrap();
}

/// Opens `streams` streams on one connection, each made to be reset by the server (HEADERS,
/// then a WINDOW_UPDATE that overflows the stream's window): returns how many RST_STREAM
/// frames came back, and the GOAWAY (code, reason) if one did.
async fn reset_flood(addr: std::net::SocketAddr, streams: u32) -> (u32, Option<(u32, String)>) {
    let socket = TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = socket.into_split();
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut frame = Vec::with_capacity(9 + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        frame.extend_from_slice(&[kind, flags]);
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    };
    // HPACK, literal without indexing: POST, http, :path, :authority, content-type, te.
    let mut headers = vec![0x83, 0x86, 0x04, 28];
    headers.extend_from_slice(b"/grpc.health.v1.Health/Check");
    headers.extend_from_slice(&[0x01, 9]);
    headers.extend_from_slice(b"localhost");
    headers.extend_from_slice(&[0x0f, 0x10, 16]);
    headers.extend_from_slice(b"application/grpc");
    headers.extend_from_slice(&[0x00, 2]);
    headers.extend_from_slice(b"te");
    headers.push(8);
    headers.extend_from_slice(b"trailers");

    let reader = tokio::spawn(async move {
        let (mut resets, mut goaway) = (0u32, None);
        let mut header = [0u8; 9];
        loop {
            let next = async {
                read.read_exact(&mut header).await?;
                let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
                let mut payload = vec![0u8; len];
                read.read_exact(&mut payload).await?;
                Ok::<_, std::io::Error>((header[3], payload))
            };
            // The server closes the connection after its GOAWAY; without one, quiet ends it.
            match tokio::time::timeout(Duration::from_secs(3), next).await {
                Ok(Ok((3, _))) => resets += 1,
                Ok(Ok((7, payload))) if payload.len() >= 8 => {
                    let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                    goaway = Some((code, String::from_utf8_lossy(&payload[8..]).into_owned()));
                }
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
        (resets, goaway)
    });
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    out.extend(frame(4, 1, 0, &[]));
    write.write_all(&out).await.expect("preface");
    for i in 0..streams {
        let id = 2 * i + 1;
        let mut batch = frame(1, 0x4, id, &headers);
        batch.extend(frame(8, 0, id, &0x7fff_ffffu32.to_be_bytes()));
        if write.write_all(&batch).await.is_err() {
            break;
        }
    }
    tokio::time::timeout(support::PATIENCE, reader)
        .await
        .expect("the flood's reader ends")
        .expect("the reader")
}

#[tokio::test]
async fn a_client_that_makes_the_server_reset_streams_without_end_is_sent_away() {
    let (server, _publisher) = server().await;
    let (resets, goaway) = reset_flood(server.addr, 3000).await;
    let (code, reason) = goaway.expect("a GOAWAY");
    assert_eq!(code, 0xb, "ENHANCE_YOUR_CALM ({reason})");
    assert!(
        resets <= meshless::server::DEFAULT_MAX_LOCAL_ERROR_RESETS as u32 + 16,
        "{resets} resets before the GOAWAY"
    );
    still_serving(&server).await;
    server.stop().await.unwrap();
}

/// Whether the server closed `socket` (a read ends, or fails) within [`support::PATIENCE`].
async fn closed_by_the_server(socket: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    let waited = tokio::time::timeout(support::PATIENCE, async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                // SETTINGS, GOAWAY: read on until the end.
                Ok(_) => {}
            }
        }
    })
    .await;
    waited.is_ok()
}

#[tokio::test]
async fn a_connection_that_never_sends_the_preface_is_closed() {
    let server = Running::start(
        Server::builder()
            .handshake_timeout(Duration::from_millis(200))
            .add_service(EchoService::new(Echo::named("target"))),
    )
    .await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    let started = std::time::Instant::now();
    assert!(closed_by_the_server(&mut idle).await);
    assert!(started.elapsed() >= Duration::from_millis(150));
    // Half a preface is no preface either.
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(closed_by_the_server(&mut slow).await);
    still_serving(&server).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn connections_past_the_per_peer_cap_are_closed_and_the_place_is_given_back() {
    let server = Running::start(
        Server::builder()
            .max_connections(100, 3)
            .add_service(EchoService::new(Echo::named("target"))),
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut socket = TcpStream::connect(server.addr).await.unwrap();
        socket
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        held.push(socket);
    }
    let mut refused = TcpStream::connect(server.addr).await.unwrap();
    assert!(
        closed_by_the_server(&mut refused).await,
        "the fourth is closed"
    );
    drop(held.pop());
    // The place is given back once the server sees the connection end.
    let client = EchoClient::connect(server.target()).await.unwrap();
    let reply = tokio::time::timeout(support::PATIENCE, async {
        loop {
            match client.unary(request("hi")).await {
                Ok(reply) => return reply,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("a place came free");
    assert_eq!(served_by(reply.get_ref()), "target");
    drop(held);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn connections_older_than_the_max_age_are_sent_away_and_clients_carry_on() {
    let server = Running::start(
        Server::builder()
            .max_connection_age(Duration::from_millis(200))
            .add_service(EchoService::new(Echo::named("target"))),
    )
    .await;
    // A raw connection that only said hello (and took the server's settings) is sent away.
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    socket
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0\0\0\0\x04\x01\0\0\0\0")
        .await
        .unwrap();
    let goaway = tokio::time::timeout(support::PATIENCE, async {
        let mut header = [0u8; 9];
        loop {
            socket.read_exact(&mut header).await?;
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0u8; len];
            socket.read_exact(&mut payload).await?;
            if header[3] == 7 {
                return Ok::<_, std::io::Error>(());
            }
        }
    })
    .await;
    assert!(
        matches!(goaway, Ok(Ok(()))),
        "a GOAWAY once the connection is old: {goaway:?}"
    );
    drop(socket);
    // A client making calls all along sees none fail.
    let client = EchoClient::connect(server.target()).await.unwrap();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(800) {
        client.unary(request("hi")).await.expect("no call fails");
    }
    server.stop().await.unwrap();
}
