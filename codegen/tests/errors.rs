//! Bad `.proto` input gives a build error naming `file:line:col` and what to do.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use meshless_build::ErrorKind;

/// Writes `files` into a fresh folder and returns it.
fn write_files(files: &[(&str, &str)]) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "meshless-build-test-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
    dir
}

/// Compiles the first of `files`, with their folder as the include path.
fn compile(dir: &Path, files: &[(&str, &str)]) -> Result<(), meshless_build::Error> {
    meshless_build::configure()
        .out_dir(dir.join("out"))
        .emit_rerun_if_changed(false)
        .compile_protos(&[dir.join(files[0].0)], &[dir.to_owned()])
}

/// Compiles `files`, expecting an error; returns its kind and text.
fn compile_error(files: &[(&str, &str)]) -> (ErrorKind, String) {
    let dir = write_files(files);
    let result = compile(&dir, files);
    let _ = std::fs::remove_dir_all(&dir);
    let error = result.expect_err("compilation should fail");
    (error.kind(), error.to_string())
}

/// Compiles `files`, expecting success; returns the folder (with the output in `out/`).
fn compile_ok(files: &[(&str, &str)]) -> PathBuf {
    let dir = write_files(files);
    compile(&dir, files).unwrap_or_else(|e| panic!("{e}"));
    dir
}

const HEADER: &str =
    "syntax = \"proto3\";\npackage demo.v1;\nimport \"meshless/v1/meshless.proto\";\n";

fn proto(body: &str) -> String {
    format!("{HEADER}{body}")
}

fn assert_mentions(message: &str, expected: &[&str]) {
    for part in expected {
        assert!(message.contains(part), "expected {part:?} in:\n{message}");
    }
}

#[test]
fn syntax_errors_point_at_the_place() {
    let (kind, message) = compile_error(&[(
        "demo.proto",
        &proto("message Broken {\n  string name = ;\n}\n"),
    )]);
    assert_eq!(kind, ErrorKind::Invalid);
    assert_mentions(&message, &["demo.proto:5:17"]);
}

#[test]
fn missing_imports_say_which_and_how_to_fix() {
    let (kind, message) = compile_error(&[(
        "demo.proto",
        "syntax = \"proto3\";\nimport \"nowhere/gone.proto\";\n",
    )]);
    assert_eq!(kind, ErrorKind::NotFound);
    assert_mentions(
        &message,
        &[
            "demo.proto:2:1",
            "import 'nowhere/gone.proto' not found",
            "include paths",
        ],
    );
}

#[test]
fn undefined_types_are_named() {
    let (kind, message) =
        compile_error(&[("demo.proto", &proto("message A {\n  Missing b = 1;\n}\n"))]);
    assert_eq!(kind, ErrorKind::Invalid);
    assert_mentions(&message, &["demo.proto:5:3", "Missing"]);
}

#[test]
fn the_event_option_needs_a_server_streaming_rpc() {
    let (kind, message) = compile_error(&[(
        "demo.proto",
        &proto(
            "message E { string s = 1; }\n\
             service S {\n  rpc Happened(meshless.v1.Subscribe) returns (E) {\n    option (meshless.v1.event) = {};\n  }\n}\n",
        ),
    )]);
    assert_eq!(kind, ErrorKind::Rule);
    assert_mentions(
        &message,
        &[
            "demo.proto:6:3",
            "rpc `Happened`",
            "not a server-streaming RPC",
            "returns (stream E)",
        ],
    );
}

#[test]
fn event_rpcs_take_subscribe() {
    let (kind, message) = compile_error(&[(
        "demo.proto",
        &proto(
            "message E { string s = 1; }\nmessage Q {}\n\
             service S {\n  rpc Happened(Q) returns (stream E) {\n    option (meshless.v1.event) = {};\n  }\n}\n",
        ),
    )]);
    assert_eq!(kind, ErrorKind::Rule);
    assert_mentions(
        &message,
        &[
            "demo.proto:7:3",
            "takes `demo.v1.Q`",
            "meshless.v1.Subscribe",
        ],
    );
}

#[test]
fn event_messages_leave_the_metadata_field_free() {
    let (kind, message) = compile_error(&[(
        "demo.proto",
        &proto(
            "message E {\n  string s = 1;\n  bytes sneaky = 536870000;\n}\n\
             service S {\n  rpc Happened(meshless.v1.Subscribe) returns (stream E) {\n    option (meshless.v1.event) = {};\n  }\n}\n",
        ),
    )]);
    assert_eq!(kind, ErrorKind::Rule);
    assert_mentions(
        &message,
        &[
            "demo.proto:6:3",
            "field `sneaky`",
            "536870000",
            "another number",
        ],
    );
}

#[test]
fn names_protoc_would_reject_are_caught() {
    let (kind, message) = compile_error(&[(
        "demo.proto",
        &proto(
            "message UserSignedUp { string s = 1; }\n\
             service Users {\n  rpc UserSignedUp(meshless.v1.Subscribe) returns (stream UserSignedUp) {\n    option (meshless.v1.event) = {};\n  }\n}\n",
        ),
    )]);
    assert_eq!(kind, ErrorKind::Rule);
    assert_mentions(
        &message,
        &[
            "demo.proto:6:59",
            "protoc",
            "UserSignedUpEvent",
            ".demo.v1.UserSignedUp",
        ],
    );
}

#[test]
fn several_problems_are_reported_together() {
    let (_, message) = compile_error(&[(
        "demo.proto",
        &proto(
            "message E { string s = 1; }\n\
             service S {\n  rpc A(meshless.v1.Subscribe) returns (E) { option (meshless.v1.event) = {}; }\n  \
             rpc B(E) returns (stream E) { option (meshless.v1.event) = {}; }\n}\n",
        ),
    )]);
    assert_eq!(
        message
            .lines()
            .filter(|l| l.contains("demo.proto:"))
            .count(),
        2,
        "{message}"
    );
}

#[test]
fn fully_qualified_names_that_protoc_accepts_pass() {
    let dir = compile_ok(&[(
        "demo.proto",
        &proto(
            "message UserSignedUp { string s = 1; }\n\
             service Users {\n  rpc UserSignedUp(meshless.v1.Subscribe) returns (stream .demo.v1.UserSignedUp) {\n    option (meshless.v1.event) = { retain: 5 };\n  }\n}\n",
        ),
    )]);
    let generated = std::fs::read_to_string(dir.join("out/demo.v1.rs")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(generated.contains("pub trait UsersHandler"), "{generated}");
}

#[test]
fn no_file_is_an_error_not_a_panic() {
    let error = meshless_build::configure()
        .emit_rerun_if_changed(false)
        .compile_protos::<&str>(&[], &[])
        .unwrap_err();
    assert!(error.to_string().contains("no .proto file"));
    let error = meshless_build::configure()
        .out_dir(std::env::temp_dir())
        .emit_rerun_if_changed(false)
        .compile_protos(&["does/not/exist.proto"], &["."])
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{error}");
}

/// A service whose event (and unary call) declare `key` options, around message `E`.
fn keyed(event_key: &str, routing_key: &str) -> String {
    proto(&format!(
        "enum Kind {{ KIND_UNSPECIFIED = 0; }}\n\
         message Order {{ string id = 1; repeated string tags = 2; double total = 3; Kind kind = 4; }}\n\
         message E {{ Order order = 1; uint64 step = 2; map<string, string> labels = 3; }}\n\
         service S {{\n  \
         rpc Changed(meshless.v1.Subscribe) returns (stream E) {{ option (meshless.v1.event) = {{ key: \"{event_key}\" }}; }}\n  \
         rpc Change(E) returns (E) {{ option (meshless.v1.routing) = {{ key: \"{routing_key}\" }}; }}\n}}\n"
    ))
}

#[test]
fn keys_that_name_scalar_fields_pass() {
    for (event_key, routing_key) in [
        ("order.id", "order.id"),
        ("step", "order.kind"),
        ("order.kind", "step"),
    ] {
        let dir = compile_ok(&[("demo.proto", &keyed(event_key, routing_key))]);
        let generated = std::fs::read_to_string(dir.join("out/demo.v1.rs")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_mentions(&generated, &["KeyPath", "KeyKind"]);
    }
}

#[test]
fn keys_that_name_no_scalar_field_are_refused_at_their_option() {
    let cases = [
        (
            "order.number",
            "has no field `number`",
            "its fields: id, tags, total, kind",
        ),
        (
            "order",
            "is a message",
            "string, bytes, integer, bool or enum",
        ),
        ("order.tags", "is repeated", "a key is one value"),
        ("labels", "is repeated", "a key is one value"),
        (
            "order.total",
            "floating-point",
            "string, bytes, integer, bool or enum",
        ),
        ("step.id", "is not a message", "`id` cannot be inside it"),
        ("order..id", "has no field ``", "its fields"),
    ];
    for (key, what, more) in cases {
        let (kind, message) = compile_error(&[("demo.proto", &keyed(key, "order.id"))]);
        assert_eq!(kind, ErrorKind::Rule, "{message}");
        // The event option is on line 8 of the file.
        assert_mentions(
            &message,
            &["demo.proto:8:", "event rpc `Changed`", what, more],
        );

        let (kind, message) = compile_error(&[("demo.proto", &keyed("order.id", key))]);
        assert_eq!(kind, ErrorKind::Rule, "{message}");
        assert_mentions(
            &message,
            &["demo.proto:9:", "rpc `Change`: routing key", what],
        );
    }
}

#[test]
fn routing_keys_belong_on_calls_with_one_request() {
    let (kind, message) = compile_error(&[(
        "demo.proto",
        &proto(
            "message E { string id = 1; }\n\
             service S {\n  rpc Up(stream E) returns (E) { option (meshless.v1.routing) = { key: \"id\" }; }\n}\n",
        ),
    )]);
    assert_eq!(kind, ErrorKind::Rule);
    assert_mentions(
        &message,
        &[
            "demo.proto:6:",
            "rpc `Up`",
            "only unary and server-streaming",
        ],
    );
}

#[test]
fn compaction_needs_a_key() {
    let event = |options: &str| {
        proto(&format!(
            "message E {{ string id = 1; }}\n\
             service S {{\n  \
             rpc Changed(meshless.v1.Subscribe) returns (stream E) {{ option (meshless.v1.event) = {{ {options} }}; }}\n}}\n"
        ))
    };
    let (kind, message) = compile_error(&[("demo.proto", &event("compact_by_key: true"))]);
    assert_eq!(kind, ErrorKind::Rule, "{message}");
    assert_mentions(
        &message,
        &[
            "demo.proto:",
            "event rpc `Changed` asks for `compact_by_key` but has no `key`",
            "help:",
        ],
    );

    let dir = compile_ok(&[("demo.proto", &event("key: \"id\", compact_by_key: true"))]);
    let generated = std::fs::read_to_string(dir.join("out/demo.v1.rs")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_mentions(
        &generated,
        &["compact_by_key: true", "and the latest of every key"],
    );
}
