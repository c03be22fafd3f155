//! `meshless call`: one unary call with a request written in JSON, through a
//! [`meshless::Channel`] (so the target's instances are found and balanced as for any client),
//! and the response printed as JSON.
//!
//! The request and response types come from reflection (asked through the same channel) or
//! from `--descriptor-set`. JSON follows protobuf's JSON mapping (`prost-reflect`'s serde):
//! field names as in the proto or in lowerCamelCase, 64-bit integers as numbers or strings.

use meshless::codegen::Call;
use meshless::discovery::DiscoveryStatus;
use meshless::Channel;
use prost::Message;
use prost_reflect::{DynamicMessage, MethodDescriptor};

use crate::args::CallArgs;
use crate::codec::RawCodec;
use crate::descriptors;
use crate::error::{status_text, Error};
use crate::resolve;

/// Runs `meshless call`: prints the response on stdout.
pub(crate) async fn run(args: CallArgs) -> Result<(), Error> {
    // Checked before the channel: a bad target is an error that quotes it.
    args.target
        .parse::<meshless::Target>()
        .map_err(|error| Error::new(error.to_string()))?;
    let channel = args
        .headers
        .apply(Channel::builder())
        .timeout(Some(args.timeout))
        .wait_timeout(args.timeout)
        .dns(resolve::dns_settings(args.timeout))
        .connect(&args.target)
        .await
        .map_err(|error| Error::new(format!("{}: {error}", args.target)))?;
    match &*channel.discovery_status().borrow() {
        DiscoveryStatus::NoInstances { reason } => {
            return Err(Error::new(format!(
                "{} resolved to no instance: {reason}",
                args.target
            )))
        }
        DiscoveryStatus::Failing { error, .. } => {
            return Err(Error::new(format!(
                "{}: the DNS lookup failed: {error}",
                args.target
            )))
        }
        _ => {}
    }

    let (pool, source) = match &args.descriptor_set {
        Some(path) => (descriptors::from_file(path)?, path.display().to_string()),
        None => (
            descriptors::from_reflection(
                channel.clone(),
                &args.target,
                &args.method.service,
                args.timeout,
            )
            .await?,
            format!("{}'s reflection", args.target),
        ),
    };
    let method = descriptors::find_method(&pool, &args.method, &source)?;
    check_unary(&method)?;
    let request = request_from_json(&method, &args.json)?;

    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|error| Error::new(format!("{}: {error}", args.target)))?;
    let mut request = tonic::Request::new(request.encode_to_vec().into());
    request.set_timeout(args.timeout);
    request.extensions_mut().insert(Call {
        single_request: true,
        single_response: true,
        idempotent: false,
        routing: None,
    });
    let path = args
        .method
        .path()
        .parse()
        .map_err(|_| Error::new(format!("`{}` is not a valid gRPC path", args.method)))?;
    let response = grpc
        .unary(request, path, RawCodec)
        .await
        .map_err(|status| Error::new(status_text(&status)))?;
    let response =
        DynamicMessage::decode(method.output(), response.into_inner()).map_err(|error| {
            Error::new(format!(
                "the response does not decode as {}: {error}",
                method.output().full_name()
            ))
        })?;
    let json = serde_json::to_string_pretty(&response)
        .map_err(|error| Error::new(format!("the response does not encode as JSON: {error}")))?;
    println!("{json}");
    Ok(())
}

fn check_unary(method: &MethodDescriptor) -> Result<(), Error> {
    let name = method.full_name();
    if method.is_server_streaming() && !method.is_client_streaming() {
        return Err(Error::new(format!(
            "`{name}` streams its responses: `meshless call` makes unary calls \
             (for an event RPC, use `meshless tail`)"
        )));
    }
    if method.is_client_streaming() || method.is_server_streaming() {
        return Err(Error::new(format!(
            "`{name}` is a streaming RPC: `meshless call` makes unary calls"
        )));
    }
    Ok(())
}

/// The request message from its JSON, or an error with serde's message.
pub(crate) fn request_from_json(
    method: &MethodDescriptor,
    json: &str,
) -> Result<DynamicMessage, Error> {
    let input = method.input();
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let bad = |error: serde_json::Error| {
        Error::new(format!(
            "the request is not a {} in JSON: {error}",
            input.full_name()
        ))
    };
    let message = DynamicMessage::deserialize(input.clone(), &mut deserializer).map_err(bad)?;
    deserializer.end().map_err(bad)?;
    Ok(message)
}

#[cfg(test)]
mod test {
    use super::*;
    use prost_reflect::DescriptorPool;

    fn method(name: &str) -> MethodDescriptor {
        let pool =
            DescriptorPool::decode(meshless::v1::FILE_DESCRIPTOR_SET).expect("meshless.v1's set");
        let service = pool
            .get_service_by_name("meshless.v1.EventGroups")
            .expect("EventGroups");
        let found = service.methods().find(|m| m.name() == name);
        found.expect("the method")
    }

    #[test]
    fn json_requests_and_serde_messages() {
        let acknowledge = method("Acknowledge");
        let request = request_from_json(
            &acknowledge,
            r#"{"rpc": "/a.B/C", "group": "billing", "handled": {"epoch": "7", "sequence": 3}}"#,
        )
        .expect("a valid request");
        let decoded = meshless::v1::Acknowledgement::decode(request.encode_to_vec().as_slice())
            .expect("decodes");
        assert_eq!(decoded.group, "billing");
        assert_eq!(decoded.handled.map(|c| (c.epoch, c.sequence)), Some((7, 3)));

        let error = request_from_json(&acknowledge, r#"{"rpc": 5}"#).expect_err("bad type");
        assert!(
            error
                .to_string()
                .starts_with("the request is not a meshless.v1.Acknowledgement in JSON: "),
            "{error}"
        );
        let error = request_from_json(&acknowledge, r#"{"rpc": "x"} trailing"#)
            .expect_err("trailing characters");
        assert!(error.to_string().contains("trailing characters"), "{error}");
        let error = request_from_json(&acknowledge, r#"{"nope": 1}"#).expect_err("unknown field");
        assert!(error.to_string().contains("nope"), "{error}");
        assert!(check_unary(&acknowledge).is_ok());
    }
}
