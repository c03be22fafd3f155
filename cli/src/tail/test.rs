use super::line::{base64, event_line};
use prost::Message as _;

use super::producer::Envelope;
use super::*;

#[test]
fn lines_have_a_fixed_shape() {
    let metadata = EventMetadata {
        epoch: 7,
        sequence: 3,
        key: b"o-1".to_vec(),
        ..EventMetadata::default()
    };
    let addr: SocketAddr = "127.0.0.1:50051".parse().expect("an address");
    let event = serde_json::json!({"order": {"id": "o-1"}, "step": "2"});
    assert_eq!(
        event_line(addr, &metadata, &event, false),
        r#"{"instance":"127.0.0.1:50051","sequence":3,"key":"o-1","event":{"order":{"id":"o-1"},"step":"2"}}"#
    );
    let metadata = EventMetadata {
        sequence: 9,
        missed: 4,
        delivery_count: 2,
        key: vec![0xff, 0x00],
        ..EventMetadata::default()
    };
    assert_eq!(
        event_line(addr, &metadata, &serde_json::json!({}), true),
        r#"{"instance":"127.0.0.1:50051","sequence":9,"key":"/wA=","missed":4,"delivery_count":2,"event":{}}"#
    );
    let no_key = EventMetadata::default();
    assert!(event_line(addr, &no_key, &serde_json::json!({}), false).contains(r#""key":null"#));
}

#[test]
fn base64_as_protobuf_json_writes_bytes() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foob"), "Zm9vYg==");
}

#[test]
fn the_metadata_field_is_read_apart_from_the_event() {
    let metadata = EventMetadata {
        epoch: 5,
        sequence: 11,
        ..EventMetadata::default()
    };
    let encoded = Envelope {
        metadata: Some(metadata.clone()),
    }
    .encode_to_vec();
    let decoded = Envelope::decode(encoded.as_slice()).expect("decodes");
    assert_eq!(decoded.metadata, Some(metadata));
}
