//! The target parser and its error.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Target, DNS_PORT};

/// The forms a target may take, quoted in every parse error.
const ACCEPTED: &str = "dns:[//dns-server[:port]/]host:port, dns+srv:[//dns-server[:port]/]name, \
                        ipv4:addr:port[,addr:port...], ipv6:[addr]:port[,[addr]:port...], http://host:port";

/// A target string that could not be parsed. Its message quotes the target, says what is
/// wrong, and lists the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetError {
    target: String,
    reason: String,
}

impl TargetError {
    fn new(target: &str, reason: impl Into<String>) -> Self {
        Self {
            target: target.to_owned(),
            reason: reason.into(),
        }
    }

    /// The target that failed to parse.
    pub fn target(&self) -> &str {
        &self.target
    }
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid target `{}`: {} (accepted forms: {ACCEPTED})",
            self.target, self.reason
        )
    }
}

impl std::error::Error for TargetError {}

pub(super) fn parse(target: &str) -> Result<Target, TargetError> {
    let fail = |reason: String| TargetError::new(target, reason);
    if target.is_empty() {
        return Err(fail("the target is empty".into()));
    }
    if let Some(c) = target.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(fail(format!("it contains {c:?}")));
    }
    let Some((scheme, rest)) = target.split_once(':') else {
        return Err(fail("it has no scheme".into()));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "dns" => {
            let (server, name) = authority(rest).map_err(fail)?;
            let (host, port) = host_port(name).map_err(fail)?;
            let port =
                port.ok_or_else(|| fail(format!("`{name}` has no port: write `{name}:PORT`")))?;
            check_host(&host).map_err(fail)?;
            Ok(Target::Dns { server, host, port })
        }
        "dns+srv" => {
            let (server, name) = authority(rest).map_err(fail)?;
            if name.contains(':') {
                return Err(fail(format!(
                    "`{name}` has a port, but SRV records carry the ports: write the name alone"
                )));
            }
            check_host(name).map_err(fail)?;
            Ok(Target::DnsSrv {
                server,
                name: name.to_owned(),
            })
        }
        "ipv4" => addresses(rest, |addr| match host_port(addr)? {
            (host, Some(port)) => match host.parse::<Ipv4Addr>() {
                Ok(ip) => Ok(SocketAddr::new(ip.into(), port)),
                Err(_) => Err(format!("`{host}` is not an IPv4 address")),
            },
            (_, None) => Err(format!("`{addr}` has no port: write `{addr}:PORT`")),
        })
        .map_err(fail),
        "ipv6" => addresses(rest, |addr| {
            if !addr.starts_with('[') {
                return Err(format!(
                    "write IPv6 addresses in brackets with a port: `[{addr}]:PORT`"
                ));
            }
            match host_port(addr)? {
                (host, Some(port)) => match host.parse::<Ipv6Addr>() {
                    Ok(ip) => Ok(SocketAddr::new(ip.into(), port)),
                    Err(_) => Err(format!("`{host}` is not an IPv6 address")),
                },
                (_, None) => Err(format!("`{addr}` has no port: write `{addr}:PORT`")),
            }
        })
        .map_err(fail),
        "http" => {
            let Some(authority) = rest.strip_prefix("//") else {
                return Err(fail("write http targets as `http://host:port`".into()));
            };
            let authority = authority.strip_suffix('/').unwrap_or(authority);
            if authority.contains('/') || authority.contains('?') || authority.contains('@') {
                return Err(fail(
                    "an http target is `http://host:port`, without path, query or user".into(),
                ));
            }
            let (host, port) = host_port(authority).map_err(fail)?;
            let port = port.ok_or_else(|| {
                fail(format!(
                    "`{authority}` has no port: write `http://{authority}:PORT`"
                ))
            })?;
            match host.parse::<IpAddr>() {
                Ok(ip) => Ok(Target::Static(vec![SocketAddr::new(ip, port)])),
                Err(_) => {
                    check_host(&host).map_err(fail)?;
                    Ok(Target::Http { host, port })
                }
            }
        }
        "https" => Err(fail(
            "TLS targets are not supported yet: use http://, dns:, dns+srv:, ipv4: or ipv6:".into(),
        )),
        _ => Err(fail(format!("unknown scheme `{scheme}`"))),
    }
}

/// Splits `//server[:port]/rest` (or `rest` alone) into the DNS server and the rest.
fn authority(rest: &str) -> Result<(Option<SocketAddr>, &str), String> {
    let Some(after) = rest.strip_prefix("//") else {
        if rest.starts_with('/') {
            return Err("write `dns:///name` (three slashes) or `dns://server/name`".into());
        }
        return Ok((None, rest));
    };
    let Some((server, name)) = after.split_once('/') else {
        return Err(
            "after `//dns-server` comes `/` and the name: `dns://8.8.8.8/users.example:50051`"
                .into(),
        );
    };
    if name.is_empty() {
        return Err("the name to look up is missing".into());
    }
    if server.is_empty() {
        return Ok((None, name));
    }
    let (host, port) = host_port(server)?;
    let ip: IpAddr = host
        .parse()
        .map_err(|_| format!("the DNS server `{host}` must be an IP address"))?;
    Ok((Some(SocketAddr::new(ip, port.unwrap_or(DNS_PORT))), name))
}

/// Splits `host[:port]` or `[v6][:port]`; the port, when present, must be a valid number.
fn host_port(s: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(bracketed) = s.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(format!("`{s}` opens `[` but does not close it"));
        };
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(format!("unexpected `{after}` after `[{host}]`")),
            },
        }
    } else {
        match s.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err(format!(
                    "write the IPv6 address `{s}` in brackets: `[addr]:port`"
                ))
            }
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err(format!("`{s}` has no host"));
    }
    let port = match port {
        None => None,
        Some(port) => match port.parse::<u16>() {
            Ok(0) => return Err("port 0 is not a port one can connect to".into()),
            Ok(port) => Some(port),
            Err(_) => return Err(format!("`{port}` is not a port (1 to 65535)")),
        },
    };
    Ok((host.to_owned(), port))
}

/// A DNS name: labels of letters, digits, `-` and `_` (SRV), 1 to 63 bytes, 253 in all.
fn check_host(host: &str) -> Result<(), String> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return Err(format!("`{host}` is not a DNS name"));
    }
    for label in name.split('.') {
        let valid_chars = label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if label.is_empty() || label.len() > 63 || !valid_chars {
            return Err(format!("`{host}` is not a DNS name (label `{label}`)"));
        }
    }
    Ok(())
}

/// Parses a comma-separated address list.
fn addresses(
    list: &str,
    parse_one: impl Fn(&str) -> Result<SocketAddr, String>,
) -> Result<Target, String> {
    if list.is_empty() {
        return Err("the address list is empty".into());
    }
    let addrs = list
        .split(',')
        .map(parse_one)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Target::Static(addrs))
}

#[cfg(test)]
mod test;
