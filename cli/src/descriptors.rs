//! The descriptors of a service known only at run time: from gRPC server reflection
//! (`grpc.reflection.v1`, which `Server::reflection(true)` serves) or from a
//! `FileDescriptorSet` file (`protoc --include_imports -o FILE`, `buf build -o FILE`).
//!
//! Reflection asks for the file that declares the service (`file_containing_symbol`), then for
//! any of its imports the server did not send along (`file_by_filename`), and builds a
//! `prost-reflect` pool from them. Every way this can fail says what to do about it: enable
//! reflection, pass a descriptor set, or pick a method that exists.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use prost::Message;
use prost_reflect::{DescriptorPool, MethodDescriptor};
use prost_types::FileDescriptorProto;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

use crate::args::MethodName;
use crate::error::{status_text, Error};

/// How many rounds of missing imports reflection is asked for before giving up.
const IMPORT_ROUNDS: usize = 16;

/// Reads a `FileDescriptorSet` file.
pub(crate) fn from_file(path: &Path) -> Result<DescriptorPool, Error> {
    let bytes = std::fs::read(path)
        .map_err(|error| Error::new(format!("cannot read {}: {error}", path.display())))?;
    DescriptorPool::decode(bytes.as_slice()).map_err(|error| {
        Error::new(format!(
            "{} is not a usable FileDescriptorSet ({error}); write one with \
             `protoc --include_imports -o FILE` or `buf build -o FILE`",
            path.display()
        ))
    })
}

/// Asks `who` (reachable through `channel`) by reflection for the files that describe
/// `service`.
pub(crate) async fn from_reflection(
    channel: meshless::Channel,
    who: &str,
    service: &str,
    timeout: Duration,
) -> Result<DescriptorPool, Error> {
    tokio::time::timeout(timeout, reflect(channel, who, service))
        .await
        .map_err(|_| {
            Error::new(format!(
                "{who}: gRPC reflection did not answer within {timeout:?}"
            ))
        })?
}

async fn reflect(
    channel: meshless::Channel,
    who: &str,
    service: &str,
) -> Result<DescriptorPool, Error> {
    let mut client = ServerReflectionClient::new(channel);
    let mut files: BTreeMap<String, FileDescriptorProto> = BTreeMap::new();
    let mut asking = vec![MessageRequest::FileContainingSymbol(service.to_owned())];
    for _ in 0..IMPORT_ROUNDS {
        let answers = match ask(&mut client, asking).await {
            Ok(answers) => answers,
            // tonic's reflection answers a symbol it does not know with a status, others with
            // an error response: both come here.
            Err(status) if status.code() == tonic::Code::NotFound => {
                let served = list_services(&mut client).await.unwrap_or_default();
                return Err(Error::new(format!(
                    "{who} does not serve `{service}`{}",
                    served_list(&served)
                )));
            }
            Err(status) => return Err(reflection_error(who, &status)),
        };
        for found in answers {
            for encoded in found {
                let file = FileDescriptorProto::decode(encoded.as_slice()).map_err(|error| {
                    Error::new(format!(
                        "{who}: reflection sent a file descriptor that does not decode: {error}"
                    ))
                })?;
                files.insert(file.name().to_owned(), file);
            }
        }
        let missing: Vec<String> = files
            .values()
            .flat_map(|file| file.dependency.iter())
            .filter(|name| !files.contains_key(*name))
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if missing.is_empty() {
            let mut pool = DescriptorPool::new();
            pool.add_file_descriptor_protos(files.into_values())
                .map_err(|error| {
                    Error::new(format!(
                        "{who}: the descriptors reflection sent do not fit together: {error}"
                    ))
                })?;
            return Ok(pool);
        }
        asking = missing
            .into_iter()
            .map(MessageRequest::FileByFilename)
            .collect();
    }
    Err(Error::new(format!(
        "{who}: reflection kept naming imports it did not send"
    )))
}

/// Sends `requests` on one reflection stream and returns the files of each answer; an error
/// response is returned as the status it stands for.
async fn ask(
    client: &mut ServerReflectionClient<meshless::Channel>,
    requests: Vec<MessageRequest>,
) -> Result<Vec<Vec<Vec<u8>>>, tonic::Status> {
    let mut answers = Vec::new();
    for response in exchange(client, requests).await? {
        match response {
            MessageResponse::FileDescriptorResponse(found) => {
                answers.push(found.file_descriptor_proto)
            }
            MessageResponse::ErrorResponse(error) => {
                return Err(tonic::Status::new(
                    tonic::Code::from(error.error_code),
                    error.error_message,
                ))
            }
            _ => {}
        }
    }
    Ok(answers)
}

/// One reflection stream: `requests` out, their answers back.
async fn exchange(
    client: &mut ServerReflectionClient<meshless::Channel>,
    requests: Vec<MessageRequest>,
) -> Result<Vec<MessageResponse>, tonic::Status> {
    let expected = requests.len();
    let requests: Vec<ServerReflectionRequest> = requests
        .into_iter()
        .map(|request| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        })
        .collect();
    let mut stream = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await?
        .into_inner();
    let mut answers = Vec::with_capacity(expected);
    while answers.len() < expected {
        match stream.message().await? {
            Some(response) => answers.extend(response.message_response),
            None => break,
        }
    }
    Ok(answers)
}

async fn list_services(
    client: &mut ServerReflectionClient<meshless::Channel>,
) -> Result<Vec<String>, tonic::Status> {
    let mut names = Vec::new();
    for response in exchange(client, vec![MessageRequest::ListServices(String::new())]).await? {
        if let MessageResponse::ListServicesResponse(list) = response {
            names.extend(list.service.into_iter().map(|service| service.name));
        }
    }
    names.sort();
    Ok(names)
}

fn served_list(served: &[String]) -> String {
    let served: Vec<&str> = served
        .iter()
        .map(String::as_str)
        // What every meshless server may serve is not what the user looks for.
        .filter(|name| {
            !["grpc.", "meshless.v1.", "meshless.admin."]
                .iter()
                .any(|prefix| name.starts_with(prefix))
        })
        .collect();
    if served.is_empty() {
        String::new()
    } else {
        format!("; it serves {}", served.join(", "))
    }
}

fn reflection_error(who: &str, status: &tonic::Status) -> Error {
    if status.code() == tonic::Code::Unimplemented {
        Error::new(format!(
            "{who} does not serve gRPC reflection (grpc.reflection.v1.ServerReflection): \
             enable Server::reflection(true) or pass --descriptor-set"
        ))
    } else {
        Error::new(format!(
            "{who}: gRPC reflection failed: {}",
            status_text(status)
        ))
    }
}

/// The method `name` in `pool`, or an error that lists what exists.
pub(crate) fn find_method(
    pool: &DescriptorPool,
    name: &MethodName,
    source: &str,
) -> Result<MethodDescriptor, Error> {
    let Some(service) = pool.get_service_by_name(&name.service) else {
        let mut services: Vec<String> = pool
            .services()
            .map(|service| service.full_name().to_owned())
            .collect();
        services.sort();
        return Err(Error::new(format!(
            "no service `{}` in {source}{}",
            name.service,
            served_list(&services)
        )));
    };
    let found = service
        .methods()
        .find(|method| method.name() == name.method);
    found.ok_or_else(|| {
        let methods: Vec<String> = service.methods().map(|m| m.name().to_owned()).collect();
        Error::new(format!(
            "`{}` has no method `{}`; its methods: {}",
            name.service,
            name.method,
            methods.join(", ")
        ))
    })
}

#[cfg(test)]
mod test {
    use super::*;

    fn pool() -> DescriptorPool {
        DescriptorPool::decode(meshless::admin::v1::FILE_DESCRIPTOR_SET).expect("the admin set")
    }

    fn name(text: &str) -> MethodName {
        let (service, method) = text.split_once('/').expect("a slash");
        MethodName {
            service: service.into(),
            method: method.into(),
        }
    }

    #[test]
    fn finds_methods_and_says_what_exists() {
        let pool = pool();
        let method = find_method(&pool, &name("meshless.admin.v1.Admin/GetStatus"), "the set")
            .expect("found");
        assert_eq!(
            method.output().full_name(),
            "meshless.admin.v1.InstanceStatus"
        );
        let error = find_method(&pool, &name("meshless.admin.v1.Admin/Status"), "the set")
            .expect_err("no such method");
        assert_eq!(
            error.to_string(),
            "`meshless.admin.v1.Admin` has no method `Status`; its methods: GetStatus"
        );
        let error = find_method(&pool, &name("shop.v1.Orders/Place"), "the set")
            .expect_err("no such service");
        assert_eq!(
            error.to_string(),
            // meshless's own services are not listed as what the user may have meant.
            "no service `shop.v1.Orders` in the set"
        );
    }

    #[test]
    fn a_file_that_is_not_a_descriptor_set() {
        let path = std::env::temp_dir().join(format!("meshless-cli-{}.bin", std::process::id()));
        std::fs::write(&path, b"not protobuf at all").expect("write");
        let error = from_file(&path).expect_err("not a set");
        let _ = std::fs::remove_file(&path);
        assert!(
            error
                .to_string()
                .contains("is not a usable FileDescriptorSet"),
            "{error}"
        );
        let error = from_file(Path::new("/nonexistent/set.bin")).expect_err("no file");
        assert!(error
            .to_string()
            .starts_with("cannot read /nonexistent/set.bin"));
    }
}
