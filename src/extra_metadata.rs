//! [`ExtraMetadata`]: metadata a channel or an observer sends with every call it makes (a
//! bearer token, say), shown by `Debug` without its values.

use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};

/// Metadata added to every outgoing request that does not set the same key itself.
#[derive(Clone, Default)]
pub(crate) struct ExtraMetadata(MetadataMap);

impl ExtraMetadata {
    /// Values are marked sensitive: `Debug` of the request's headers does not show them, and
    /// HPACK never indexes them (RFC 7541, 7.1.3).
    pub(crate) fn insert(&mut self, key: AsciiMetadataKey, mut value: AsciiMetadataValue) {
        value.set_sensitive(true);
        self.0.insert(key, value);
    }

    /// Adds the metadata to `headers`, leaving the keys they already have alone.
    pub(crate) fn add_to(&self, headers: &mut http::HeaderMap) {
        for (key, value) in self.0.as_ref() {
            if !headers.contains_key(key) {
                headers.insert(key, value.clone());
            }
        }
    }
}

impl std::fmt::Debug for ExtraMetadata {
    /// Keys only: values are often credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.keys().map(|key| match key {
                tonic::metadata::KeyRef::Ascii(key) => key.as_str(),
                tonic::metadata::KeyRef::Binary(key) => key.as_str(),
            }))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_not_shown_and_a_request_s_own_keys_win() {
        let mut extra = ExtraMetadata::default();
        extra.insert(
            AsciiMetadataKey::from_static("authorization"),
            AsciiMetadataValue::from_static("Bearer secret"),
        );
        extra.insert(
            AsciiMetadataKey::from_static("x-team"),
            AsciiMetadataValue::from_static("billing"),
        );
        let shown = format!("{extra:?}");
        assert!(
            shown.contains("authorization") && !shown.contains("secret"),
            "{shown}"
        );

        let mut headers = http::HeaderMap::new();
        headers.insert("x-team", http::HeaderValue::from_static("mine"));
        extra.add_to(&mut headers);
        assert_eq!(headers["x-team"], "mine");
        assert_eq!(headers["authorization"], "Bearer secret");
        assert!(headers["authorization"].is_sensitive());
        let shown = format!("{headers:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
