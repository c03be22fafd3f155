//! Status mapping: tonic answers a request message over the size limit with `OUT_OF_RANGE`;
//! gRPC specifies `RESOURCE_EXHAUSTED`.

/// The layer: maps every response with [`too_large_is_resource_exhausted`].
pub(crate) fn layer<B>() -> tower::util::MapResponseLayer<fn(http::Response<B>) -> http::Response<B>>
{
    tower::util::MapResponseLayer::new(too_large_is_resource_exhausted::<B>)
}

/// Rewrites tonic's `OUT_OF_RANGE` for a request message over the size limit to
/// `RESOURCE_EXHAUSTED`. Only trailers-only responses carry it in their headers: a request
/// decoded before the handler ran (unary and server-streaming calls).
fn too_large_is_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let too_large = headers.get("grpc-status").is_some_and(|s| s == "11")
        && headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| {
                m.contains("message%20length%20too%20large")
                    || m.contains("message length too large")
            });
    if too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}
