//! A client for interoperability tests: calls `testing.v1.Echo` on a server written with
//! another gRPC implementation, and checks the answers. Exits 0 when they are as expected.
//!
//! Run with: cargo run --example interop-client -- --target ipv4:127.0.0.1:PORT

use meshless::metadata::MetadataValue;
use meshless::{Code, Request};

mod proto {
    #![allow(dead_code, unreachable_pub, missing_docs)]
    meshless::include_protos!();
}

use proto::testing::v1::{EchoClient, EchoRequest};

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
    let target = match (args.next().as_deref(), args.next()) {
        (Some("--target"), Some(target)) => target,
        _ => return Err("usage: interop-client --target TARGET".into()),
    };
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

fn check(ok: bool, what: String) -> Result<(), Box<dyn std::error::Error>> {
    if ok {
        Ok(())
    } else {
        Err(format!("unexpected {what}").into())
    }
}
