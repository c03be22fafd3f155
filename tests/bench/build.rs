//! The Echo proto twice: meshless's stubs, and plain tonic's for the hand-written baselines.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["testing/v1/echo.proto"];
    let includes = ["../../proto"];
    meshless_build::configure().compile_protos(
        &[
            "testing/v1/echo.proto",
            "testing/v1/orders.proto",
            "testing/v1/shipping.proto",
        ],
        &includes,
    )?;

    let plain = PathBuf::from(std::env::var("OUT_DIR")?).join("plain");
    std::fs::create_dir_all(&plain)?;
    tonic_prost_build::configure()
        .out_dir(plain)
        .include_file("_plain.rs")
        .generate_default_stubs(true)
        .compile_fds(protox::compile(protos, includes)?)?;
    Ok(())
}
