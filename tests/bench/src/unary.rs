//! Unary calls, 100-byte payloads, a fixed number in flight, over 3 instances.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meshless::testing::TestDns;

use crate::proto::{mesh, plain};
use crate::stats::Latencies;
use crate::Bench;

pub struct Report {
    pub name: &'static str,
    pub per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: usize,
    /// Calls made after the warm-up, failed ones included.
    pub calls: usize,
}

pub const RAW: &str = "raw tonic Channel, 1 instance";
pub const BALANCE_LIST: &str = "tonic balance_list, 3";

/// Runs `call` from `concurrency` tasks for `duration` (after a short warm-up).
async fn drive<F, Fut>(
    name: &'static str,
    concurrency: usize,
    duration: Duration,
    call: F,
) -> Report
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let warm_up = Instant::now() + duration / 5;
    let end = warm_up + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let (mut latencies, mut errors) = (Latencies::default(), 0);
                loop {
                    let started = Instant::now();
                    if started >= end {
                        return (latencies, errors);
                    }
                    let ok = call().await;
                    if started >= warm_up {
                        latencies.record(started.elapsed());
                        errors += usize::from(!ok);
                    }
                }
            })
        })
        .collect();
    let (mut latencies, mut errors) = (Latencies::default(), 0);
    for task in tasks {
        let (l, e) = task.await.expect("caller task");
        latencies.merge(l);
        errors += e;
    }
    Report {
        name,
        per_second: latencies.len() as f64 / duration.as_secs_f64(),
        p50_us: latencies.quantile(0.5),
        p99_us: latencies.quantile(0.99),
        errors,
        calls: latencies.len(),
    }
}

fn request() -> plain::testing::v1::EchoRequest {
    plain::testing::v1::EchoRequest {
        payload: vec![7; 100],
        ..Default::default()
    }
}

/// Every contender against `instances` (the first is the one a raw channel calls).
pub async fn run(
    bench: &Bench,
    instances: &[SocketAddr],
    dns: &TestDns,
    concurrency: usize,
) -> Vec<Report> {
    let duration = bench.duration;
    let mut reports = Vec::new();
    // `--contender raw|tonic|ginepro|meshless` leaves the others out, for profiling one (the
    // ratios are then to the first left).
    let wanted = |first_word| crate::wanted_contender(first_word);

    if wanted("raw") {
        let raw = tonic::transport::Endpoint::from_shared(format!("http://{}", instances[0]))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let raw = plain::testing::v1::echo_client::EchoClient::new(raw);
        let report = drive(RAW, concurrency, duration, move || {
            let mut client = raw.clone();
            async move { client.unary(request()).await.is_ok() }
        });
        reports.push(report.await);
    }

    if wanted("tonic") {
        let balanced = balance_list(instances);
        let report = drive(BALANCE_LIST, concurrency, duration, move || {
            let mut client = balanced.clone();
            async move { client.unary(request()).await.is_ok() }
        });
        reports.push(report.await);
    }

    if wanted("tonic") {
        // The same, with the deadline every meshless call carries (its default, 30 s): sent as
        // `grpc-timeout`, timed by tonic's channel and by the server. What deadlines cost,
        // apart from the rest of meshless.
        let balanced = balance_list(instances);
        let report = drive(
            "tonic balance_list, deadline",
            concurrency,
            duration,
            move || {
                let mut client = balanced.clone();
                async move {
                    let mut request = tonic::Request::new(request());
                    request.set_timeout(Duration::from_secs(30));
                    client.unary(request).await.is_ok()
                }
            },
        );
        reports.push(report.await);
    }

    if wanted("ginepro") {
        let ginepro = crate::ginepro::channel(instances).await;
        let report = drive("ginepro, 3", concurrency, duration, move || {
            let channel = ginepro.clone();
            async move { crate::ginepro::unary(channel, &request()).await }
        });
        reports.push(report.await);
    }

    if wanted("meshless") {
        reports.push(meshless(bench, dns, concurrency).await);
    }
    reports
}

/// tonic's balanced channel over `instances`.
fn balance_list(
    instances: &[SocketAddr],
) -> plain::testing::v1::echo_client::EchoClient<tonic::transport::Channel> {
    let endpoints = instances.iter().map(|addr| {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("uri")
    });
    plain::testing::v1::echo_client::EchoClient::new(tonic::transport::Channel::balance_list(
        endpoints,
    ))
}

/// The meshless row alone: the generated client on the `dns+srv` target.
pub async fn meshless(bench: &Bench, dns: &TestDns, concurrency: usize) -> Report {
    let client = mesh::testing::v1::EchoClient::connect(dns.srv_target(crate::SERVICE))
        .await
        .expect("meshless client");
    drive(
        "meshless dns+srv + p2c, 3",
        concurrency,
        bench.duration,
        move || {
            let client = client.clone();
            async move {
                client
                    .unary(mesh::testing::v1::EchoRequest {
                        payload: vec![7; 100],
                        ..Default::default()
                    })
                    .await
                    .is_ok()
            }
        },
    )
    .await
}
