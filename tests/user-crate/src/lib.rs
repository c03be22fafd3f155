//! A crate as a meshless user writes it, depending on `meshless` and `tokio` alone. Its
//! doctests are the README's code blocks, so the README's guide keeps compiling.

pub mod greeter {
    meshless::include_proto!("greeter.v1");
}

pub mod signup {
    meshless::include_proto!("signup.v1");
}

pub mod orders {
    meshless::include_proto!("testing.orders.v1");
}

use greeter::{GreeterHandler, HelloReply, HelloRequest};
use meshless::{Request, Response, Status};

/// The README's handler.
#[derive(Debug, Default)]
pub struct Greeter;

impl GreeterHandler for Greeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let name = request.into_inner().name;
        if name.is_empty() {
            return Err(Status::invalid_argument("name is empty"));
        }
        Ok(Response::new(HelloReply {
            message: format!("Hello, {name}!"),
        }))
    }
}

#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
