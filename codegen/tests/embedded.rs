//! The wire contract the code generator embeds (what user protos import) is the workspace's.

#[test]
fn the_embedded_meshless_proto_is_the_workspace_one() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../proto/meshless/v1/meshless.proto"
    );
    let workspace = std::fs::read_to_string(path).expect("the workspace's meshless.proto");
    assert!(
        workspace == meshless_build::MESHLESS_PROTO,
        "codegen/proto/meshless/v1/meshless.proto differs from proto/meshless/v1/meshless.proto: \
         copy the latter over the former"
    );
}
