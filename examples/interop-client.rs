//! A client for interoperability tests: calls `testing.v1.Echo` on a server written with
//! another gRPC implementation, and checks the answers. Exits 0 when they are as expected.
//!
//! Run with: cargo run --example interop-client -- --target ipv4:127.0.0.1:PORT
//!
//! With `--keepalive-interval-ms N` it checks keepalive instead: one server-streaming call
//! (`ServerStream` with the message `"10"`, which the server answers after 10 s of silence)
//! on a channel that pings every N ms while the call is open, then a unary call after the
//! connection sat idle. The server's ping policy decides whether that passes.
//!
//! With `--traced-call` it makes one unary call, with the message `trace-id?`, within a span
//! of its own (an OpenTelemetry span), and checks that the server answers with that span's
//! trace id: the server's span continued the client's trace.

use std::time::Duration;

use meshless::metadata::MetadataValue;
use meshless::{Code, Request};

mod proto {
    #![allow(dead_code, unreachable_pub, missing_docs)]
    meshless::include_protos!();
}

use proto::testing::v1::{EchoClient, EchoRequest};
use tokio_stream::StreamExt;

#[tokio::main]
async fn main() {
    match run().await {
        Ok(()) => println!("interop-client: every check passed"),
        Err(error) => {
            eprintln!("interop-client: {error}");
            std::process::exit(1);
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: interop-client --target TARGET [--keepalive-interval-ms N | --traced-call]";
    let target = match (args.next().as_deref(), args.next()) {
        (Some("--target"), Some(target)) => target,
        _ => return Err(usage.into()),
    };
    match (
        args.next().as_deref(),
        args.next().map(|n| n.parse::<u64>()),
    ) {
        (None, _) => {}
        (Some("--keepalive-interval-ms"), Some(Ok(interval))) => {
            return keepalive(&target, Duration::from_millis(interval)).await;
        }
        (Some("--traced-call"), None) => return traced_call(&target).await,
        _ => return Err(usage.into()),
    }
    let client = EchoClient::connect(&target).await?;

    let mut request = Request::new(EchoRequest {
        message: "hi".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-request-id", MetadataValue::from_static("req-9"));
    let reply = client.unary(request).await?;
    check(
        reply.get_ref().message == "python: hi",
        format!("unary reply: {:?}", reply.get_ref()),
    )?;
    let echoed = reply
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok());
    check(
        echoed == Some("req-9"),
        format!("echoed metadata: {echoed:?}"),
    )?;

    let status = client
        .unary(EchoRequest {
            message: "boom".into(),
            fail_with_code: Code::NotFound as i32,
            ..Default::default()
        })
        .await
        .err()
        .ok_or("a failing call succeeded")?;
    check(
        status.code() == Code::NotFound && status.message() == "python failed: boom",
        format!("status: {status:?}"),
    )?;

    let large = client
        .unary(EchoRequest {
            reply_size: 314_159,
            payload: vec![1; 271_828],
            ..Default::default()
        })
        .await?;
    check(
        large.get_ref().payload.len() == 314_159,
        "large reply size".into(),
    )?;

    #[allow(deprecated)]
    let unimplemented = client
        .old_unary(EchoRequest::default())
        .await
        .err()
        .ok_or("OldUnary succeeded")?;
    check(
        unimplemented.code() == Code::Unimplemented,
        format!("OldUnary: {unimplemented:?}"),
    )?;
    Ok(())
}

/// A call that stays silent for 10 s with keepalive pings every `interval`, then a call after
/// as long idle (no pings then: a connection without calls is never pinged).
async fn keepalive(target: &str, interval: Duration) -> Result<(), Box<dyn std::error::Error>> {
    let timeout = meshless::DEFAULT_KEEPALIVE_TIMEOUT
        .mul_f64(interval.as_secs_f64() / meshless::DEFAULT_KEEPALIVE_INTERVAL.as_secs_f64());
    let channel = meshless::Channel::builder()
        .keepalive(interval, timeout)
        .connect(target)
        .await?;
    let client = EchoClient::new(channel);
    let mut stream = client
        .server_stream(EchoRequest {
            message: "10".into(),
            ..Default::default()
        })
        .await
        .map_err(|status| format!("the silent call failed: {status:?}"))?
        .into_inner();
    let mut replies = 0;
    while let Some(reply) = stream.next().await {
        reply.map_err(|status| format!("the silent call failed: {status:?}"))?;
        replies += 1;
    }
    check(
        replies == 1,
        format!("{replies} replies to the silent call"),
    )?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    client
        .unary(EchoRequest {
            message: "after idling".into(),
            ..Default::default()
        })
        .await
        .map_err(|status| format!("the call after idling failed: {status:?}"))?;
    Ok(())
}

fn check(ok: bool, what: String) -> Result<(), Box<dyn std::error::Error>> {
    if ok {
        Ok(())
    } else {
        Err(format!("unexpected {what}").into())
    }
}

/// One call within an OpenTelemetry span; the server answers with the trace id it saw.
async fn traced_call(target: &str) -> Result<(), Box<dyn std::error::Error>> {
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("interop-client"));
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))?;

    let client = EchoClient::connect(target).await?;
    let span = tracing::info_span!("interop-client");
    let ours = span.context().span().span_context().trace_id().to_string();
    let reply = client
        .unary(EchoRequest {
            message: "trace-id?".into(),
            ..Default::default()
        })
        .instrument(span)
        .await?;
    let theirs = &reply.get_ref().message;
    println!("client trace {ours}, server trace {theirs}");
    check(
        *theirs == ours,
        format!("the server's span is in trace {theirs}, not the client's {ours}"),
    )
}
