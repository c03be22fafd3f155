//! Compiles meshless's own protos with meshless-build: the wire contract for the library, and
//! the example and test protos for `examples/` and `tests/`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The library's own messages: generated here, used by everyone else through `meshless::v1`.
    meshless_build::configure()
        .generate_meshless_proto(true)
        .include_file("_meshless_v1_includes.rs")
        .compile_protos(&["proto/meshless/v1/meshless.proto"], &["proto"])?;

    // The introspection services a server may serve: meshless's admin service and gRPC
    // channelz, generated with the same paths as the library's own messages.
    meshless_build::configure()
        .include_file("_admin_includes.rs")
        .compile_protos(
            &[
                "proto/meshless/admin/v1/admin.proto",
                "proto/grpc/channelz/v1/channelz.proto",
            ],
            &["proto"],
        )?;

    // Example and test services, as a user's crate would compile them.
    meshless_build::configure().compile_protos(
        &[
            "proto/signup/v1/users.proto",
            "proto/testing/v1/echo.proto",
            "proto/testing/v1/shop.proto",
            "proto/testing/v1/counter.proto",
            "proto/testing/v1/orders.proto",
            "proto/testing/v1/shipping.proto",
        ],
        &["proto"],
    )?;
    Ok(())
}
