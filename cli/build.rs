//! Compiles the orders proto of meshless's tests, which the integration tests serve (and the
//! binary leaves alone): a service with a unary RPC and event RPCs. Outside the workspace (a
//! packaged crate, without `../proto`) there is nothing to compile, and the tests do not build.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let orders = "../proto/testing/v1/orders.proto";
    if Path::new(orders).exists() {
        meshless_build::configure().compile_protos(&[orders], &["../proto"])?;
    }
    Ok(())
}
