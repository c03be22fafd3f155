fn main() -> Result<(), Box<dyn std::error::Error>> {
    meshless_build::compile_protos("proto/greeter/v1/greeter.proto")?;
    Ok(())
}
