//! The floor under every latency row: one round trip with one message in flight, over TCP
//! (64 bytes each way) and over HTTP/2 (hyper, a 64-byte body each way), the server on the
//! server thread and the client on the client thread, as the contenders run.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::stats::Latencies;
use crate::Bench;

const SIZE: usize = 64;

/// p50 and p99 of `rounds` TCP round trips of 64 bytes, in microseconds.
pub async fn tcp(bench: &Bench, rounds: usize) -> (f64, f64) {
    let listener = bench
        .on_server(async { TcpListener::bind("127.0.0.1:0").await.expect("a port") })
        .await;
    let addr = listener.local_addr().expect("its address");
    bench.server.spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("the client");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let mut buffer = [0u8; SIZE];
        while stream.read_exact(&mut buffer).await.is_ok() {
            if stream.write_all(&buffer).await.is_err() {
                break;
            }
        }
    });
    let mut stream = TcpStream::connect(addr).await.expect("connected");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    let mut latencies = Latencies::default();
    let mut buffer = [7u8; SIZE];
    for round in 0..rounds + rounds / 10 {
        let sent = Instant::now();
        stream.write_all(&buffer).await.expect("sent");
        stream.read_exact(&mut buffer).await.expect("echoed");
        // The first tenth warms up.
        if round >= rounds / 10 {
            latencies.record(sent.elapsed());
        }
    }
    (latencies.quantile(0.5), latencies.quantile(0.99))
}

/// p50 and p99 of `rounds` HTTP/2 requests to a hyper echo server, each with a 64-byte body
/// answered with it, one at a time, in microseconds.
pub async fn http2(bench: &Bench, rounds: usize) -> (f64, f64) {
    let listener = bench
        .on_server(async { TcpListener::bind("127.0.0.1:0").await.expect("a port") })
        .await;
    let addr = listener.local_addr().expect("its address");
    bench.server.spawn(async move {
        let (stream, _) = listener.accept().await.expect("the client");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let echo =
            hyper::service::service_fn(|request: http::Request<hyper::body::Incoming>| async {
                let body = request.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>(http::Response::new(Full::new(body)))
            });
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(hyper_util::rt::TokioIo::new(stream), echo)
            .await;
    });
    let stream = TcpStream::connect(addr).await.expect("connected");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("an HTTP/2 connection");
    tokio::spawn(connection);
    let body = Bytes::from(vec![7u8; SIZE]);
    let mut latencies = Latencies::default();
    for round in 0..rounds + rounds / 10 {
        let request = http::Request::post(format!("http://{addr}/echo"))
            .body(Full::new(body.clone()))
            .expect("a request");
        let sent = Instant::now();
        let response = sender.send_request(request).await.expect("answered");
        let echoed = response
            .into_body()
            .collect()
            .await
            .expect("its body")
            .to_bytes();
        assert_eq!(echoed.len(), SIZE);
        if round >= rounds / 10 {
            latencies.record(sent.elapsed());
        }
    }
    (latencies.quantile(0.5), latencies.quantile(0.99))
}

/// Waits until `due`: sleeps while it is far, then yields to the runtime's other tasks until
/// it comes, so that paced events go out one at a time at their rate (a timer alone ticks at
/// most every millisecond, which would send them in bursts).
pub async fn pace_until(due: Instant) {
    loop {
        let now = Instant::now();
        if now >= due {
            return;
        }
        let left = due - now;
        if left > Duration::from_millis(2) {
            tokio::time::sleep(left - Duration::from_millis(1)).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}
