fn main() -> Result<(), Box<dyn std::error::Error>> {
    meshless_build::compile_protos("proto/greeter/v1/greeter.proto")?;
    // The README's events section uses the sign-up example's proto.
    meshless_build::configure()
        .compile_protos(&["../../proto/signup/v1/users.proto"], &["../../proto"])?;
    // And its section on keys, the orders proto of the tests.
    meshless_build::configure()
        .compile_protos(&["../../proto/testing/v1/orders.proto"], &["../../proto"])?;
    Ok(())
}
