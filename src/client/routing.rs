//! Routing keys in a request header (`meshless-routing-key`), so that the key is known
//! without reading the request body (which may be compressed), and so that other gRPC clients
//! and proxies can route by it too (as gRFC A76's `request_hash_header`).

use http::HeaderValue;

use crate::keys::KeyPath;

/// The request header that carries a call's routing key.
pub const ROUTING_KEY_HEADER: &str = "meshless-routing-key";

/// The header value for `key`: the key itself when it is printable ASCII, otherwise its bytes
/// in lowercase hex.
pub(crate) fn header_value(key: &[u8]) -> HeaderValue {
    if key.iter().all(|b| (0x20..0x7f).contains(b)) {
        if let Ok(value) = HeaderValue::from_bytes(key) {
            return value;
        }
    }
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    HeaderValue::from_str(&hex).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Adds the routing key of `request` (found at `path`) to its metadata, unless the caller set
/// one: the channel then routes the call by it, whatever the body's encoding.
pub fn add_routing_key<T: prost::Message>(request: &mut tonic::Request<T>, path: KeyPath) {
    let headers = request.metadata_mut();
    if headers.contains_key(ROUTING_KEY_HEADER) {
        return;
    }
    let key = path.key_of(&request.get_ref().encode_to_vec());
    let value = header_value(&key);
    if let Ok(value) = tonic::metadata::AsciiMetadataValue::try_from(value.as_bytes()) {
        request.metadata_mut().insert(ROUTING_KEY_HEADER, value);
    }
}
