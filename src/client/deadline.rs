//! Reading a call's deadline from its `grpc-timeout` header.

use std::time::Duration;

/// The timeout a gRPC request carries (`grpc-timeout: 250m`), if any.
pub(crate) fn grpc_timeout<B>(request: &http::Request<B>) -> Option<Duration> {
    let value = request.headers().get("grpc-timeout")?.to_str().ok()?;
    parse(value)
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
    fn rejects_malformed_values() {
        for bad in ["", "m", "123456789m", "12x", "-1S", "1.5S", "ü"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
