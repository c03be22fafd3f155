//! [`Deadline`]: when a call must be answered, from its `grpc-timeout` header, for handlers
//! to see and pass on.

use std::time::Duration;

use tokio::time::Instant;

/// When a call must be answered by: the caller's deadline, as the server received it.
///
/// A handler that calls other services passes it on, so that they stop working for a caller
/// that has given up:
///
/// ```no_run
/// # async fn handle(request: meshless::Request<()>, mut downstream: meshless::Request<()>) {
/// if let Some(deadline) = meshless::Deadline::of(&request) {
///     if deadline.is_expired() {
///         return; // the caller has given up
///     }
///     deadline.apply(&mut downstream); // the same deadline, minus the time spent here
/// }
/// # }
/// ```
///
/// Servers started with [`meshless::Server`](crate::Server) record it for every call that has
/// one; meshless clients send one with every unary and client-streaming call (30 s unless set:
/// [`ChannelBuilder::timeout`](crate::ChannelBuilder::timeout), or `Request::set_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// The deadline of `request`, if its caller set one.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<Deadline> {
        request.extensions().get::<Deadline>().copied()
    }

    /// A deadline `timeout` from now.
    pub fn after(timeout: Duration) -> Self {
        Self {
            at: Instant::now() + timeout,
        }
    }

    /// The instant itself.
    pub fn instant(&self) -> Instant {
        self.at
    }

    /// The time left; zero once passed.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Whether it has passed.
    pub fn is_expired(&self) -> bool {
        self.remaining().is_zero()
    }

    /// Gives `request` (to another service) this deadline: the time left as its timeout.
    pub fn apply<T>(&self, request: &mut tonic::Request<T>) {
        request.set_timeout(self.remaining());
    }

    /// Records the deadline of an incoming request, counted from now, in its extensions.
    pub(crate) fn record<B>(request: &mut http::Request<B>) {
        if let Some(timeout) = grpc_timeout(request) {
            request.extensions_mut().insert(Deadline::after(timeout));
        }
    }
}

/// The header that carries a call's timeout.
pub(crate) const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// The timeout a gRPC request carries (`grpc-timeout: 250m`), if any.
pub(crate) fn grpc_timeout<B>(request: &http::Request<B>) -> Option<Duration> {
    let value = request.headers().get(GRPC_TIMEOUT)?.to_str().ok()?;
    parse(value)
}

/// `timeout` as a `grpc-timeout` value: whole milliseconds, rounded up, at most 8 digits.
pub(crate) fn encode(timeout: Duration) -> http::HeaderValue {
    let millis = timeout.as_nanos().div_ceil(1_000_000).min(99_999_999);
    http::HeaderValue::from_str(&format!("{millis}m")).expect("digits and a letter")
}

/// `<digits><unit>`, at most 8 digits, unit one of `H M S m u n` (gRPC over HTTP/2 spec).
fn parse(value: &str) -> Option<Duration> {
    let unit_start = value.len().checked_sub(1)?;
    if !value.is_char_boundary(unit_start) {
        return None;
    }
    let (digits, unit) = value.split_at(unit_start);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn parses_the_spec_units() {
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
    }

    #[test]
    fn encodes_what_it_parses() {
        for timeout in [
            Duration::from_millis(250),
            Duration::from_secs(30),
            Duration::from_micros(1),
        ] {
            let value = encode(timeout);
            let parsed = parse(value.to_str().unwrap()).unwrap();
            assert!(parsed >= timeout && parsed - timeout < Duration::from_millis(1));
        }
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in ["", "m", "123456789m", "12x", "-1S", "1.5S", "ü"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
