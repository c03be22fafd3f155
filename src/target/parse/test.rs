use std::net::SocketAddr;

use crate::Target;

fn parse(s: &str) -> Result<Target, String> {
    s.parse::<Target>().map_err(|e| e.to_string())
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn dns_targets() {
    assert_eq!(
        parse("dns:///users.service.consul:50051"),
        Ok(Target::Dns {
            server: None,
            host: "users.service.consul".into(),
            port: 50051
        })
    );
    assert_eq!(
        parse("dns:users.ns.svc.cluster.local:8080"),
        Ok(Target::Dns {
            server: None,
            host: "users.ns.svc.cluster.local".into(),
            port: 8080
        })
    );
    assert_eq!(
        parse("dns://127.0.0.1:8600/users.service.consul:50051"),
        Ok(Target::Dns {
            server: Some(addr("127.0.0.1:8600")),
            host: "users.service.consul".into(),
            port: 50051
        })
    );
    assert_eq!(
        parse("dns://[::1]/users:1"),
        Ok(Target::Dns {
            server: Some(addr("[::1]:53")),
            host: "users".into(),
            port: 1
        })
    );
}

#[test]
fn srv_targets() {
    assert_eq!(
        parse("dns+srv:///users.service.consul"),
        Ok(Target::DnsSrv {
            server: None,
            name: "users.service.consul".into()
        })
    );
    assert_eq!(
        parse("dns+srv://127.0.0.1:8600/_users._tcp.service.consul"),
        Ok(Target::DnsSrv {
            server: Some(addr("127.0.0.1:8600")),
            name: "_users._tcp.service.consul".into()
        })
    );
}

#[test]
fn static_targets() {
    assert_eq!(
        parse("ipv4:127.0.0.1:1,127.0.0.2:2"),
        Ok(Target::Static(vec![
            addr("127.0.0.1:1"),
            addr("127.0.0.2:2")
        ]))
    );
    assert_eq!(
        parse("ipv6:[::1]:50051"),
        Ok(Target::Static(vec![addr("[::1]:50051")]))
    );
    assert_eq!(
        parse("http://127.0.0.1:50051"),
        Ok(Target::Static(vec![addr("127.0.0.1:50051")]))
    );
    assert_eq!(
        parse("http://[::1]:50051/"),
        Ok(Target::Static(vec![addr("[::1]:50051")]))
    );
    assert_eq!(
        parse("http://localhost:50051"),
        Ok(Target::Http {
            host: "localhost".into(),
            port: 50051
        })
    );
}

#[test]
fn display_round_trips() {
    for target in [
        "dns:///users.service.consul:50051",
        "dns://127.0.0.1:8600/users:1",
        "dns+srv:///users.service.consul",
        "ipv4:127.0.0.1:1,127.0.0.2:2",
        "ipv6:[::1]:2",
        "http://localhost:50051",
    ] {
        let parsed = parse(target).unwrap();
        assert_eq!(parse(&parsed.to_string()), Ok(parsed), "{target}");
    }
}

#[test]
fn bad_targets_say_what_is_wrong() {
    let cases = [
        ("", "empty"),
        ("users:50051", "unknown scheme `users`"),
        ("127.0.0.1:50051", "unknown scheme `127.0.0.1`"),
        ("localhost", "no scheme"),
        ("dns:///users", "has no port"),
        ("dns:///users:0", "port 0"),
        ("dns:///users:70000", "`70000` is not a port"),
        ("dns:///users:http", "`http` is not a port"),
        ("dns:///:50051", "has no host"),
        ("dns:///bad..name:1", "not a DNS name"),
        ("dns:///bad name:1", "contains ' '"),
        ("dns://users/x:1", "must be an IP address"),
        ("dns://1.2.3.4", "comes `/` and the name"),
        ("dns://1.2.3.4/", "name to look up is missing"),
        ("dns:/users:1", "three slashes"),
        ("dns+srv:///users:50051", "SRV records carry the ports"),
        ("ipv4:", "list is empty"),
        ("ipv4:1.2.3.4", "has no port"),
        ("ipv4:1.2.3.999:1", "not an IPv4 address"),
        ("ipv4:1.2.3.4:1,", "has no host"),
        ("ipv6:::1", "in brackets"),
        ("ipv6:[::1", "does not close"),
        ("ipv6:[zz]:1", "not an IPv6 address"),
        ("http:localhost:1", "http://host:port"),
        ("http://localhost", "has no port"),
        ("http://localhost:1/path", "without path"),
        ("https://localhost:1", "TLS"),
        ("http://::1:1", "in brackets"),
    ];
    for (target, expected) in cases {
        let message = parse(target).expect_err(target);
        assert!(message.contains(expected), "{target}: {message}");
        assert!(message.contains("accepted forms"), "{target}: {message}");
        assert!(
            message.contains(&format!("`{target}`")),
            "{target}: {message}"
        );
    }
}

#[test]
fn never_panics_on_arbitrary_input() {
    let pieces = [
        "dns:", "dns+srv:", "ipv4:", "ipv6:", "http:", "//", "/", "[", "]", ":", ",", "1", "::1",
        "a.b", "ü", "65536", "",
    ];
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..20_000 {
        let target: String = (0..rng.usize(1..7))
            .map(|_| pieces[rng.usize(..pieces.len())])
            .collect();
        let _ = parse(&target);
    }
}
