//! Deadlines and retries: the default timeout, the caller's deadline seen by the handler and
//! passed on, retries of calls that never reached a server, of idempotent methods only, and a
//! budget that keeps retries from multiplying the load.

#[path = "../support/mod.rs"]
mod support;

mod deadlines;
mod draining;
mod ejection;
mod given_up;
mod outcomes;
mod retries;
mod routing;
mod streams;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshless::events::ObserverOptions;
use meshless::{Channel, Code, Deadline, Request, Response, Server, Status};
use support::testing::counter::v1::{
    AddRequest, Count, CounterClient, CounterHandler, CounterService, GetRequest,
};
use support::testing::v1::EchoObserver;
use support::{
    request, served_by, Echo, EchoClient, EchoPublisher, EchoRequest, EchoService, EchoedEvent,
    EchoedObserver, Gate, Running, WAIT,
};

/// A counter instance: counts every call it gets, and fails them all with `UNAVAILABLE` when
/// `broken`. Records the deadline each call arrived with.
#[derive(Clone, Default)]
struct Counter {
    name: String,
    broken: bool,
    calls: Arc<AtomicUsize>,
    deadlines: Arc<Mutex<Vec<Option<Duration>>>>,
    /// Sent as `grpc-retry-pushback-ms` with each failure.
    pushback: Option<&'static str>,
}

impl Counter {
    fn named(name: &str, broken: bool) -> Self {
        Self {
            name: name.to_owned(),
            broken,
            ..Self::default()
        }
    }

    fn answer<T>(&self, request: &Request<T>) -> Result<Response<Count>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.deadlines
            .lock()
            .unwrap()
            .push(Deadline::of(request).map(|d| d.remaining()));
        if self.broken {
            let mut status = Status::unavailable(format!("{} is broken", self.name));
            if let Some(pushback) = self.pushback {
                status
                    .metadata_mut()
                    .insert("grpc-retry-pushback-ms", pushback.parse().unwrap());
            }
            return Err(status);
        }
        Ok(Response::new(Count {
            value: 1,
            instance: self.name.clone(),
        }))
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl CounterHandler for Counter {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<Count>, Status> {
        self.answer(&request)
    }

    async fn add(&self, request: Request<AddRequest>) -> Result<Response<Count>, Status> {
        self.answer(&request)
    }
}

async fn counter(counter: &Counter) -> Running {
    Running::start(Server::builder().add_service(CounterService::new(counter.clone()))).await
}

fn targets(servers: &[&Running]) -> String {
    let addrs: Vec<String> = servers.iter().map(|s| s.addr.to_string()).collect();
    format!("ipv4:{}", addrs.join(","))
}

#[tokio::test]
async fn calls_carry_a_default_deadline_that_handlers_see() {
    let instance = Counter::named("one", false);
    let server = counter(&instance).await;
    let channel = Channel::builder()
        .timeout(Some(Duration::from_secs(7)))
        .connect(&server.target())
        .await
        .unwrap();
    let client = CounterClient::new(channel);
    client.get(GetRequest {}).await.unwrap();
    // The caller's own timeout wins over the default.
    let mut request = Request::new(GetRequest {});
    request.set_timeout(Duration::from_millis(1500));
    client.get(request).await.unwrap();

    let seen = instance.deadlines.lock().unwrap().clone();
    let default = seen[0].expect("the default deadline reached the handler");
    assert!(default <= Duration::from_secs(7) && default > Duration::from_secs(6));
    let own = seen[1].expect("the caller's deadline reached the handler");
    assert!(own <= Duration::from_millis(1500) && own > Duration::from_millis(500));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_call_past_its_deadline_fails_with_deadline_exceeded() {
    let echo = Echo::named("stuck");
    let gate = echo.gate.clone();
    let server = Running::echo(echo).await;
    let channel = Channel::builder()
        .timeout(Some(Duration::from_millis(300)))
        .connect(&server.target())
        .await
        .unwrap();
    let client = EchoClient::new(channel);
    let status = client.unary(request(WAIT)).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    gate.open();
    server.stop().await.unwrap();
}

#[tokio::test]
async fn only_idempotent_methods_are_retried_after_unavailable() {
    let broken = Counter::named("broken", true);
    let healthy = Counter::named("healthy", false);
    let servers = [counter(&broken).await, counter(&healthy).await];
    let client = CounterClient::connect(targets(&[&servers[0], &servers[1]]))
        .await
        .unwrap();

    // `Get` has no side effects: a call that lands on the broken instance goes on to the
    // healthy one.
    for _ in 0..40 {
        let count = client.get(GetRequest {}).await.unwrap();
        assert_eq!(count.get_ref().instance, "healthy");
    }
    assert!(broken.calls() > 0, "the broken instance was tried");

    // `Add` is not idempotent: its failures are the caller's to handle. (Sent to the broken
    // instance alone, since the balancer now avoids it: each add reaches it exactly once.)
    let only_broken = CounterClient::connect(targets(&[&servers[0]]))
        .await
        .unwrap();
    let before = broken.calls();
    for _ in 0..10 {
        let status = only_broken.add(AddRequest { amount: 1 }).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
    }
    assert_eq!(broken.calls() - before, 10, "no add was sent twice");
    for server in servers {
        server.stop().await.unwrap();
    }
}

#[tokio::test]
async fn the_retry_budget_keeps_retries_from_multiplying_the_load() {
    let instances: Vec<Counter> = (0..3)
        .map(|i| Counter::named(&format!("broken-{i}"), true))
        .collect();
    let mut servers = Vec::new();
    for instance in &instances {
        servers.push(counter(instance).await);
    }
    let target = targets(&servers.iter().collect::<Vec<_>>());
    let client = CounterClient::connect(&target).await.unwrap();
    const CALLS: usize = 1000;
    // All at once: retries back off, and the budget is counted over time.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..CALLS {
        let client = client.clone();
        calls.spawn(async move { client.get(GetRequest {}).await.unwrap_err().code() });
    }
    let ended = tokio::time::timeout(support::PATIENCE, async {
        while let Some(code) = calls.join_next().await {
            assert_eq!(code.expect("a call task"), Code::Unavailable);
        }
    })
    .await;
    assert!(ended.is_ok(), "the calls ended in time");
    let attempts: usize = instances.iter().map(Counter::calls).sum();
    // Without a budget: 3 attempts per call. With it: the calls, plus 20% of them, plus the
    // reserve of 10 per second over 10 s.
    let allowed = CALLS + CALLS / 5 + 100;
    assert!(
        attempts <= allowed,
        "{attempts} attempts for {CALLS} calls (at most {allowed})"
    );
    assert!(attempts > CALLS, "some calls were retried");
    for server in servers {
        server.stop().await.unwrap();
    }
}

#[derive(Clone)]
struct Stuck(Gate);

impl EchoedObserver for Stuck {
    async fn echoed(
        &self,
        _: meshless::events::Event<EchoedEvent>,
    ) -> Result<(), meshless::events::HandlerError> {
        self.0.entered_once();
        self.0.pass().await;
        Ok(())
    }
}

#[tokio::test]
async fn calls_refused_by_a_draining_server_go_to_another_instance() {
    // A producer that drains for as long as a consumer group member is stuck on an event.
    let publisher = EchoPublisher::new();
    let mut draining = Running::start(Server::builder().add_service(EchoService::with_publisher(
        Echo::named("draining"),
        publisher.clone(),
    )))
    .await;
    let other = Running::echo(Echo::named("other")).await;
    let gate = Gate::default();
    let member = EchoObserver::new()
        .echoed(Stuck(gate.clone()))
        .options(ObserverOptions::default().consumer_group("g"))
        .start(&draining.target())
        .await
        .unwrap();
    publisher
        .publish_echoed(EchoedEvent {
            message: "hold".into(),
        })
        .expect("a small event");
    gate.entered().await;

    let client = EchoClient::connect(targets(&[&draining, &other]))
        .await
        .unwrap();
    client.unary(request("before")).await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", draining.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    draining.signal_stop();
    // Health flips once new calls are refused.
    while let Some(status) = watch.message().await.unwrap() {
        if status.status() == tonic_health::pb::health_check_response::ServingStatus::NotServing {
            break;
        }
    }
    // Until the drain ends, every call succeeds: those that reach the draining instance are
    // refused unprocessed and sent to the other one.
    let mut served = std::collections::HashMap::<String, usize>::new();
    for _ in 0..200 {
        let reply = client.unary(request("during")).await.unwrap();
        *served
            .entry(served_by(reply.get_ref()).to_owned())
            .or_default() += 1;
    }
    assert!(!draining.is_finished(), "still draining");
    assert_eq!(served.get("other"), Some(&200), "{served:?}");
    // A health watch is a stream that never ends: it would hold the shutdown up.
    drop((watch, health));
    gate.open();
    draining.stop().await.unwrap();
    member.stop().await;
    other.stop().await.unwrap();
}

#[tokio::test]
async fn a_deadline_covers_the_whole_call_not_only_the_response_headers() {
    // A server that sends its response headers at once, then nothing, ever (while its
    // connection answers pings): a stuck handler behind a proxy, or a stalled stream.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    let stalled = http_body_util::StreamBody::new(tokio_stream::pending::<
                        Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>,
                    >());
                    let response = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(stalled)
                        .expect("a response");
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                        .await;
            });
        }
    });
    let client = EchoClient::connect(format!("ipv4:{addr}")).await.unwrap();
    let mut call = Request::new(request("hello"));
    call.set_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let status = tokio::time::timeout(support::PATIENCE, client.unary(call))
        .await
        .expect("the call ends")
        .expect_err("no answer");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    server.abort();
}

/// Calls `calls` times, `concurrency` at a time; returns the replies' instance names, and the
/// failures' codes.
async fn load(client: &EchoClient, calls: usize, concurrency: usize) -> (Vec<String>, Vec<Code>) {
    let mut running = tokio::task::JoinSet::new();
    let (mut served, mut failed) = (Vec::new(), Vec::new());
    for _ in 0..calls {
        if running.len() >= concurrency {
            match running.join_next().await.expect("a call").expect("a task") {
                Ok(name) => served.push(name),
                Err(code) => failed.push(code),
            }
        }
        let client = client.clone();
        running.spawn(async move {
            client
                .unary(request("hi"))
                .await
                .map(|reply| served_by(reply.get_ref()).to_owned())
                .map_err(|status| status.code())
        });
    }
    while let Some(done) = running.join_next().await {
        match done.expect("a task") {
            Ok(name) => served.push(name),
            Err(code) => failed.push(code),
        }
    }
    (served, failed)
}

#[tokio::test]
async fn an_instance_that_fails_fast_does_not_attract_the_calls() {
    let healthy = Running::echo(Echo::slow("healthy", Duration::from_millis(5))).await;
    let broken = Running::echo(Echo {
        name: "broken".into(),
        broken: Some(Code::Internal),
        ..Echo::default()
    })
    .await;
    let client = EchoClient::connect(format!("ipv4:{},{}", healthy.addr, broken.addr))
        .await
        .unwrap();
    let (served, failed) = load(&client, 300, 1).await;
    eprintln!(
        "2 instances, one broken: {} of 300 served by the healthy one, {} failed",
        served.len(),
        failed.len()
    );
    assert!(failed.iter().all(|code| *code == Code::Internal));
    assert!(
        served.len() >= 285,
        "the healthy instance got {} of 300 calls",
        served.len()
    );
    healthy.stop().await.unwrap();
    broken.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broken_instance_of_three_fails_few_calls_and_application_errors_eject_nobody() {
    let healthy = [
        Running::echo(Echo::slow("a", Duration::from_millis(2))).await,
        Running::echo(Echo::slow("b", Duration::from_millis(2))).await,
    ];
    let broken = Running::echo(Echo {
        name: "broken".into(),
        broken: Some(Code::Unavailable),
        ..Echo::default()
    })
    .await;
    let target = format!(
        "ipv4:{},{},{}",
        healthy[0].addr, healthy[1].addr, broken.addr
    );
    let client = EchoClient::connect(target).await.unwrap();
    let (served, failed) = load(&client, 1000, 8).await;
    eprintln!(
        "3 instances, one broken: {} of 1000 calls failed",
        failed.len()
    );
    assert!(served.iter().all(|name| name != "broken"));
    assert!(failed.len() <= 20, "{} of 1000 calls failed", failed.len());

    // Answers about the request are no reason to eject an instance: all three keep serving.
    let answering = [
        Running::echo(Echo::named("x")).await,
        Running::echo(Echo::named("y")).await,
    ];
    let client = EchoClient::connect(format!("ipv4:{},{}", answering[0].addr, answering[1].addr))
        .await
        .unwrap();
    for _ in 0..50 {
        let status = client
            .unary(EchoRequest {
                fail_with_code: Code::NotFound as i32,
                ..request("missing")
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
    }
    let (served, _) = load(&client, 200, 4).await;
    for name in ["x", "y"] {
        assert!(
            served.iter().filter(|n| *n == name).count() >= 40,
            "{name} still gets its share: {served:?}"
        );
    }
    for server in healthy.into_iter().chain(answering).chain([broken]) {
        server.stop().await.unwrap();
    }
}

#[tokio::test]
async fn an_instance_that_accepts_tcp_but_never_speaks_http2_is_not_picked() {
    let healthy = Running::echo(Echo::named("healthy")).await;
    // Accepts connections into its backlog and never reads or writes: a stuck process, or a
    // port held open by something that is not a gRPC server.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole = black_hole.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = black_hole.accept().await {
            sockets.push(socket);
        }
    });
    let channel = Channel::builder()
        .connect_timeout(Duration::from_millis(300))
        .timeout(Some(Duration::from_millis(500)))
        .connect(&format!("ipv4:{},{hole}", healthy.addr))
        .await
        .unwrap();
    let client = EchoClient::new(channel);
    for _ in 0..40 {
        let reply = client
            .unary(request("hi"))
            .await
            .expect("never sent to the black hole");
        assert_eq!(served_by(reply.get_ref()), "healthy");
    }
    held.abort();
    healthy.stop().await.unwrap();
}

#[tokio::test]
async fn ready_instances_counts_the_instances_calls_can_go_to() {
    let one = Running::echo(Echo::named("one")).await;
    let two = Running::echo(Echo::named("two")).await;
    let channel = Channel::connect(&format!("ipv4:{},{}", one.addr, two.addr))
        .await
        .unwrap();
    support::eventually("both instances are ready", || {
        channel.ready_instances() == 2
    })
    .await;
    two.stop().await.unwrap();
    support::eventually("the stopped instance is not ready", || {
        channel.ready_instances() == 1
    })
    .await;
    let client = EchoClient::new(channel.clone());
    let reply = client.unary(request("hi")).await.unwrap();
    assert_eq!(support::served_by(reply.get_ref()), "one");
    one.stop().await.unwrap();
}

#[tokio::test]
async fn calls_say_who_they_are_unless_they_say_it_themselves() {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = {
        let seen = seen.clone();
        move |request: tonic::Request<()>| {
            let agent = request
                .metadata()
                .get("user-agent")
                .and_then(|value| value.to_str().ok())
                .unwrap_or("none")
                .to_owned();
            seen.lock().unwrap().push(agent);
            Ok(request)
        }
    };
    let server = Server::builder()
        .layer(meshless::server::InterceptorLayer::new(record))
        .add_service(EchoService::new(Echo::named("echo")));
    let running = Running::start(server).await;
    let channel = Channel::connect(&format!("ipv4:{}", running.addr))
        .await
        .unwrap();
    let client = EchoClient::new(channel);
    client.unary(request("default")).await.unwrap();
    let mut own = Request::new(request("own"));
    own.metadata_mut()
        .insert("user-agent", "signup-service/2.1".parse().unwrap());
    client.unary(own).await.unwrap();

    let seen = seen.lock().unwrap().clone();
    let calls: Vec<&String> = seen.iter().rev().take(2).collect();
    assert_eq!(calls[0], "signup-service/2.1", "{seen:?}");
    assert!(
        calls[1].starts_with("grpc-rust-meshless/"),
        "the default names meshless: {seen:?}"
    );
    running.stop().await.unwrap();
}
