//! The sign-up flow: two Users instances registered in an in-process DNS server (standing in
//! for Consul), a client that signs users up through an SRV target, and two observing
//! services, WelcomeEmail and Feed, that get every sign-up event straight from both Users
//! instances. WelcomeEmail runs two instances in one consumer group: each sign-up sends one
//! welcome e-mail, from one of them. No broker, no load balancer.
//!
//! Run with: cargo run --example signup [-- --data-dir DIR]
//!
//! With `--data-dir`, each Users instance keeps its events in files under DIR (a folder per
//! instance): run it twice and the second run's producers continue the first run's epochs.
//!
//! At the end it prints the trace of one sign-up: the client's call, the Users handler that
//! served it, and the observers' handling of the event it published (linked to it), as
//! OpenTelemetry spans exported in process (meshless's `opentelemetry` feature).

#[path = "shared/observers.rs"]
mod observers;
#[path = "shared/users.rs"]
mod users;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshless::events::ObserverOptions;
use meshless::testing::TestDns;
use meshless::{Code, Server};
use observers::{Feed, Log, WelcomeEmail};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tokio::net::TcpListener;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;
use users::proto::{
    GetUserRequest, SignUpRequest, UsersClient, UsersObserver, UsersPublisher, UsersService,
};
use users::{Store, Users, SERVED_BY};

const USERS: &str = "users.service.consul";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Consul's DNS interface, in process: `users.service.consul` lists the instances.
    let data_dir = match (std::env::args().nth(1).as_deref(), std::env::args().nth(2)) {
        (Some("--data-dir"), Some(dir)) => Some(std::path::PathBuf::from(dir)),
        (None, _) => None,
        _ => return Err("usage: signup [--data-dir DIR]".into()),
    };
    let (provider, exported) = trace_in_process()?;
    let dns = TestDns::start("service.consul").await?;
    println!("DNS for service.consul on {}", dns.addr());

    // Two Users instances on free ports of this machine, sharing one store (a database).
    let store = Arc::new(Mutex::new(Store::default()));
    let mut stops = Vec::new();
    let mut servers = Vec::new();
    for name in ["users-1", "users-2"] {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop);
        let publisher = match &data_dir {
            Some(dir) => UsersPublisher::open(dir.join(name))?,
            None => UsersPublisher::new(),
        };
        let handler = Users::new(name, store.clone(), publisher.clone());
        servers.push(tokio::spawn(
            Server::builder()
                .reflection(true)
                .add_service(UsersService::with_publisher(handler, publisher))
                .serve_with_listener(listener, async {
                    let _ = stopped.await;
                }),
        ));
        let node = format!("{name}.node.service.consul");
        dns.add_ip(&node, addr.ip()).await?;
        dns.add_srv(USERS, 1, 1, addr.port(), &node).await?;
        println!("{name} serving on {addr}, registered as {USERS}");
    }
    let target = dns.srv_target(USERS);

    // The observing services subscribe to every Users instance the target lists. The two
    // WelcomeEmail instances share the sign-ups as one consumer group; Feed gets every one.
    let sent = Log::default();
    let welcome = [
        WelcomeEmail::named("welcome-email-1", &sent),
        WelcomeEmail::named("welcome-email-2", &sent),
    ];
    // With a data directory the producers keep the earlier runs' events, which these new
    // observers (without stored cursors) would handle again: they start at the live end.
    let start = if data_dir.is_some() {
        meshless::v1::StartPosition::Live
    } else {
        meshless::v1::StartPosition::Oldest
    };
    let mut observers = Vec::new();
    for instance in &welcome {
        observers.push(
            UsersObserver::new()
                .user_signed_up(instance.clone())
                .options(
                    ObserverOptions::default()
                        .start(start)
                        .consumer_group(WelcomeEmail::GROUP),
                )
                .start(&target)
                .await?,
        );
    }
    let feed = Feed::default();
    observers.push(
        UsersObserver::new()
            .user_signed_up(feed.clone())
            .options(ObserverOptions::default().start(start))
            .start(&target)
            .await?,
    );
    println!(
        "welcome-email-1 and welcome-email-2 (group {}) and feed observe {target}",
        WelcomeEmail::GROUP
    );

    // The client calls straight to the instances, spreading the calls over them.
    let client = UsersClient::connect(&target).await?;
    let people = [
        ("ada@example.com", "Ada"),
        ("grace@example.com", "Grace"),
        ("alan@example.com", "Alan"),
        ("edsger@example.com", "Edsger"),
        ("barbara@example.com", "Barbara"),
    ];
    for (email, name) in people {
        // Each sign-up is a trace: the client's span, and everything it leads to.
        let span = tracing::info_span!("sign up", email);
        let reply = client
            .sign_up(SignUpRequest {
                email: email.into(),
                name: name.into(),
            })
            .instrument(span)
            .await?;
        println!(
            "signed up {name:<7} as id {} (served by {})",
            reply.get_ref().id,
            served_by(&reply)
        );
    }

    let user = client.get_user(GetUserRequest { id: 2 }).await?;
    println!(
        "user 2 is {} <{}> (served by {})",
        user.get_ref().name,
        user.get_ref().email,
        served_by(&user)
    );

    // Errors arrive as gRPC status codes with their messages.
    let again = client
        .sign_up(SignUpRequest {
            email: "ada@example.com".into(),
            name: "Ada".into(),
        })
        .await
        .expect_err("a second sign-up with the same address fails");
    assert_eq!(again.code(), Code::AlreadyExists);
    println!(
        "signing Ada up again: {:?}: {}",
        again.code(),
        again.message()
    );
    let missing = client
        .get_user(GetUserRequest { id: 42 })
        .await
        .expect_err("there is no user 42");
    assert_eq!(missing.code(), Code::NotFound);
    println!("user 42: {:?}: {}", missing.code(), missing.message());

    // Every sign-up reaches both observing services: once per service.
    let delivered = async {
        sent.until(people.len()).await;
        feed.entries.until(people.len()).await;
    };
    tokio::time::timeout(Duration::from_secs(10), delivered)
        .await
        .map_err(|_| "the observers did not get every sign-up within 10 s")?;

    for observer in observers {
        observer.stop().await;
    }
    let sent = sent.entries();
    let mut addresses: Vec<&str> = sent.iter().filter_map(|e| e.split(" -> ").nth(1)).collect();
    addresses.sort_unstable();
    addresses.dedup();
    if sent.len() != people.len() || addresses.len() != people.len() {
        return Err(format!(
            "{} welcome e-mails to {} addresses for {} sign-ups",
            sent.len(),
            addresses.len(),
            people.len()
        )
        .into());
    }
    let sent_by = |name: &str| sent.iter().filter(|e| e.starts_with(name)).count();
    for stop in stops {
        let _ = stop.send(());
    }
    for server in servers {
        server.await??;
    }
    dns.stop().await;
    println!(
        "summary: {} sign-ups, {} welcome e-mails ({}: {}, {}: {}), {} feed entries",
        people.len(),
        sent.len(),
        welcome[0].name,
        sent_by(&format!("{} ", welcome[0].name)),
        welcome[1].name,
        sent_by(&format!("{} ", welcome[1].name)),
        feed.entries.len()
    );
    provider.force_flush()?;
    print_trace(&exported.get_finished_spans()?, "ada@example.com");
    Ok(())
}

/// Turns this process's `tracing` spans into OpenTelemetry spans, kept in memory to be
/// printed. A service would export them instead (OTLP to a collector; see the README).
fn trace_in_process(
) -> Result<(SdkTracerProvider, InMemorySpanExporter), Box<dyn std::error::Error>> {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("signup"));
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))?;
    Ok((provider, exporter))
}

/// Prints the trace of the sign-up of `email`, and the spans linked to it (the observers'
/// handling of the event the sign-up published), as trees.
fn print_trace(spans: &[SpanData], email: &str) {
    let Some(root) = spans
        .iter()
        .find(|span| span.name == "sign up" && attribute(span, "email") == Some(email.into()))
    else {
        println!("no trace of the sign-up of {email}");
        return;
    };
    let trace = root.span_context.trace_id();
    println!("the trace of one sign-up ({email}), trace id {trace}:");
    print_tree(spans, root, 1);
    for linked in spans.iter().filter(|span| {
        span.links
            .iter()
            .any(|link| link.span_context.trace_id() == trace)
    }) {
        println!(
            "  linked to it, in trace {}:",
            linked.span_context.trace_id()
        );
        print_tree(spans, linked, 2);
    }
}

fn print_tree(spans: &[SpanData], span: &SpanData, depth: usize) {
    let details: Vec<String> = ["email", "method", "instance", "rpc", "delivery_count"]
        .into_iter()
        .filter_map(|key| attribute(span, key).map(|value| format!("{key}={value}")))
        .collect();
    println!(
        "{:indent$}{} {}",
        "",
        span.name,
        details.join(" "),
        indent = depth * 2
    );
    for child in spans
        .iter()
        .filter(|child| child.parent_span_id == span.span_context.span_id())
    {
        print_tree(spans, child, depth + 1);
    }
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn served_by<T>(response: &meshless::Response<T>) -> &str {
    response
        .metadata()
        .get(SERVED_BY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
}
