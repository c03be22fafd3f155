//! Parsing targets: the strings that name the instances a client talks to.
//!
//! Targets follow gRPC's naming, plus SRV:
//!
//! | form | meaning |
//! |---|---|
//! | `dns:[//dns-server[:port]/]host:port` | the A/AAAA records of `host` (Kubernetes headless Services, Consul, plain DNS) |
//! | `dns+srv:[//dns-server[:port]/]name` | the SRV records of `name` (Consul's `users.service.consul`): hosts, ports, weights |
//! | `ipv4:addr:port[,addr:port...]` | fixed IPv4 addresses |
//! | `ipv6:[addr]:port[,[addr]:port...]` | fixed IPv6 addresses |
//! | `http://host:port` | one host, as tonic's `Endpoint` takes it |
//!
//! A port is required wherever one appears: meshless does not guess 443 for plaintext
//! traffic. Parsing never panics; a bad target is a [`TargetError`] that quotes it and lists the
//! accepted forms.
//!
//! # Examples
//!
//! ```
//! use meshless::Target;
//!
//! let target: Target = "dns:///users.service.consul:50051".parse()?;
//! assert_eq!(target.to_string(), "dns:///users.service.consul:50051");
//!
//! let error = "users:50051".parse::<Target>().unwrap_err();
//! assert!(error.to_string().contains("unknown scheme `users`"));
//! # Ok::<(), meshless::TargetError>(())
//! ```

mod parse;

use std::fmt;
use std::net::SocketAddr;

pub use parse::TargetError;

/// The default port of DNS servers named in a target's authority.
pub const DNS_PORT: u16 = 53;

/// Where a client finds the instances of a service. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Target {
    /// `dns:[//dns-server[:port]/]host:port`: every address of `host`'s A and AAAA records.
    Dns {
        /// The DNS server to ask; `None`: the system's (`/etc/resolv.conf`).
        server: Option<SocketAddr>,
        /// The name to look up.
        host: String,
        /// The port of every instance.
        port: u16,
    },
    /// `dns+srv:[//dns-server[:port]/]name`: the SRV records of `name`, which carry each
    /// instance's host, port, priority and weight.
    DnsSrv {
        /// The DNS server to ask; `None`: the system's.
        server: Option<SocketAddr>,
        /// The SRV name, such as `users.service.consul` or `_grpc._tcp.users.example`.
        name: String,
    },
    /// `ipv4:` and `ipv6:` lists, and `http://` with an IP address: fixed instances.
    Static(Vec<SocketAddr>),
    /// `http://host:port` with a host name: one instance, resolved by the system when a
    /// connection is made.
    Http {
        /// The host name.
        host: String,
        /// The port.
        port: u16,
    },
}

impl Target {
    /// The service's DNS name, which TLS certificates name: the looked-up host or SRV name, or
    /// the host of an `http://` target. `None` for IP address lists.
    pub fn server_name(&self) -> Option<&str> {
        match self {
            Target::Dns { host, .. } | Target::Http { host, .. } => {
                Some(host.trim_end_matches('.'))
            }
            Target::DnsSrv { name, .. } => Some(name.trim_end_matches('.')),
            Target::Static(_) => None,
        }
    }
}

impl std::str::FromStr for Target {
    type Err = TargetError;

    fn from_str(target: &str) -> Result<Self, Self::Err> {
        parse::parse(target)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let authority =
            |server: &Option<SocketAddr>| server.map(|s| s.to_string()).unwrap_or_default();
        match self {
            Target::Dns { server, host, port } => {
                write!(
                    f,
                    "dns://{}/{}:{port}",
                    authority(server),
                    bracket_ipv6(host)
                )
            }
            Target::DnsSrv { server, name } => write!(f, "dns+srv://{}/{name}", authority(server)),
            Target::Static(addrs) => {
                let scheme = if addrs.iter().all(SocketAddr::is_ipv4) {
                    "ipv4"
                } else {
                    "ipv6"
                };
                write!(f, "{scheme}:")?;
                for (i, addr) in addrs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{addr}")?;
                }
                Ok(())
            }
            Target::Http { host, port } => write!(f, "http://{host}:{port}"),
        }
    }
}

fn bracket_ipv6(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}
