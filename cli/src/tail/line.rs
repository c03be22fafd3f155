//! Each event as one line of JSON, keys in a fixed order.

use std::io;
use std::net::SocketAddr;

use meshless::v1::EventMetadata;

/// Prints one event as a line of JSON, keys in a fixed order.
pub(super) fn print_event(
    instance: SocketAddr,
    metadata: &EventMetadata,
    event: serde_json::Value,
    in_group: bool,
) -> io::Result<()> {
    use std::io::Write;
    let line = event_line(instance, metadata, &event, in_group);
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{line}").and_then(|()| stdout.flush())
}

pub(super) fn event_line(
    instance: SocketAddr,
    metadata: &EventMetadata,
    event: &serde_json::Value,
    in_group: bool,
) -> String {
    let string = |text: &str| serde_json::Value::String(text.to_owned()).to_string();
    let key = if metadata.key.is_empty() {
        "null".to_owned()
    } else {
        match std::str::from_utf8(&metadata.key) {
            Ok(text) => string(text),
            Err(_) => string(&base64(&metadata.key)),
        }
    };
    let mut line = format!(
        "{{\"instance\":{},\"sequence\":{},\"key\":{key}",
        string(&instance.to_string()),
        metadata.sequence,
    );
    if metadata.missed > 0 {
        line.push_str(&format!(",\"missed\":{}", metadata.missed));
    }
    if metadata.previous_epoch != 0 {
        line.push_str(&format!(
            ",\"previous_epoch\":\"{:016x}\"",
            metadata.previous_epoch
        ));
    }
    if in_group {
        line.push_str(&format!(",\"delivery_count\":{}", metadata.delivery_count));
    }
    line.push_str(&format!(",\"event\":{event}}}"));
    line
}

/// Standard base64 with padding, for keys that are not UTF-8 (as protobuf's JSON writes
/// bytes).
pub(super) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
