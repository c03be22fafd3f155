//! The header by which a meshless server marks a call it turned away without processing it
//! (it is draining), so that a meshless client knows the call is safe to send elsewhere.
//! Shared by the server, which sets it, and the client, which reads it.

pub(crate) const REFUSED_HEADER: http::HeaderName =
    http::HeaderName::from_static("meshless-refused");
