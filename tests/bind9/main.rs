//! Discovery against a real DNS server: BIND 9 (`named`, Debian package `bind9`), on a port of
//! 127.0.0.1, changed at run time with `nsupdate` (package `bind9-dnsutils`).
//!
//! Ignored by default, so that `cargo test` passes without bind9; `.ci/run` installs bind9 and
//! runs it with `cargo test --test bind9 -- --ignored`.

#[path = "../support/mod.rs"]
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use meshless::discovery::{DiscoveryStatus, DnsSettings};
use meshless::Channel;
use support::{request, served_by, Echo, EchoClient, Running};

const ZONE: &str = "svc.test.";
const USERS: &str = "users.svc.test";

/// A `named` process serving one zone, stopped (by its PID) when dropped.
struct Named {
    dir: PathBuf,
    port: u16,
    pid: Option<u32>,
}

impl Named {
    fn start(srv_ports: &[u16]) -> Self {
        let named = ["/usr/sbin/named", "/usr/bin/named"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("named is not installed: apt-get install -y bind9 bind9-dnsutils");
        let dir = std::env::temp_dir().join(format!("meshless-bind9-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let mut zone = format!(
            "$TTL 0\n@ IN SOA ns.{ZONE} admin.{ZONE} 1 3600 600 86400 0\n@ IN NS ns.{ZONE}\nns IN A 127.0.0.1\n\
             node IN A 127.0.0.1\n"
        );
        for port in srv_ports {
            zone.push_str(&format!("users IN SRV 1 1 {port} node.{ZONE}\n"));
        }
        std::fs::write(dir.join("zone.db"), zone).unwrap();
        let config = format!(
            "options {{ directory \"{dir}\"; listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }};\n\
             pid-file \"{dir}/named.pid\"; recursion no; dnssec-validation no; allow-update {{ 127.0.0.1; }}; }};\n\
             controls {{ }};\n\
             zone \"{ZONE}\" {{ type master; file \"{dir}/zone.db\"; allow-update {{ 127.0.0.1; }}; }};\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("named.conf"), config).unwrap();
        let status = Command::new(named)
            .args([
                "-c",
                &dir.join("named.conf").to_string_lossy(),
                "-p",
                &port.to_string(),
                "-u",
                "root",
            ])
            .args(["-L", &dir.join("named.log").to_string_lossy()])
            .status()
            .expect("run named");
        assert!(
            status.success(),
            "named failed to start: see {}",
            dir.join("named.log").display()
        );
        let mut named = Self {
            dir,
            port,
            pid: None,
        };
        named.pid = Some(named.wait_until_ready());
        named
    }

    /// named forks into the background; it is ready once its pid file exists and it answers
    /// TCP. On a loaded machine (CI runs other suites before this one) that has taken over 5 s.
    fn wait_until_ready(&self) -> u32 {
        for _ in 0..1200 {
            let pid = std::fs::read_to_string(self.dir.join("named.pid"))
                .ok()
                .and_then(|p| p.trim().parse().ok());
            if let Some(pid) = pid {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    return pid;
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "named did not start: see {}",
            self.dir.join("named.log").display()
        );
    }

    fn update(&self, commands: &str) {
        let script = format!(
            "server 127.0.0.1 {}\nzone {ZONE}\n{commands}\nsend\n",
            self.port
        );
        let mut child = Command::new("nsupdate")
            .stdin(Stdio::piped())
            .spawn()
            .expect("run nsupdate");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(
            child.wait().unwrap().success(),
            "nsupdate failed: {commands}"
        );
    }

    fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            // Wait for it to go, so the port is free and nothing is left behind.
            for _ in 0..200 {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

async fn served(client: &EchoClient, calls: usize) -> std::collections::HashMap<String, usize> {
    let mut served = std::collections::HashMap::new();
    for _ in 0..calls {
        let reply = client.unary(request("hi")).await.expect("call");
        *served
            .entry(served_by(reply.get_ref()).to_owned())
            .or_default() += 1;
    }
    served
}

#[tokio::test]
#[ignore = "needs bind9 (named, nsupdate): run by .ci/run"]
async fn discovery_follows_bind9_and_survives_it_going_down() {
    let one = Running::echo(Echo::named("one")).await;
    let two = Running::echo(Echo::named("two")).await;
    let mut named = Named::start(&[one.addr.port()]);

    let mut dns = DnsSettings::default();
    dns.refresh_floor = Duration::from_millis(50);
    dns.timeout = Duration::from_millis(300);
    dns.retries = 0;
    let target = format!("dns+srv://127.0.0.1:{}/{USERS}", named.port);
    let channel = Channel::builder().dns(dns).connect(&target).await.unwrap();
    let client = EchoClient::new(channel.clone());
    let mut status = channel.discovery_status();
    assert_eq!(*status.borrow(), DiscoveryStatus::Resolved { instances: 1 });
    assert_eq!(served(&client, 20).await.get("one"), Some(&20));

    // An added instance receives calls within one refresh.
    named.update(&format!(
        "update add {USERS}. 0 SRV 1 1 {} node.{ZONE}",
        two.addr.port()
    ));
    status
        .wait_for(|s| *s == DiscoveryStatus::Resolved { instances: 2 })
        .await
        .unwrap();
    let mut seen = std::collections::HashMap::new();
    while !seen.contains_key("two") {
        seen = served(&client, 10).await;
    }

    // A removed one receives none after one refresh.
    named.update(&format!(
        "update delete {USERS}. SRV 1 1 {} node.{ZONE}",
        one.addr.port()
    ));
    status
        .wait_for(|s| *s == DiscoveryStatus::Resolved { instances: 1 })
        .await
        .unwrap();
    assert_eq!(served(&client, 50).await.get("two"), Some(&50));

    // With named stopped, calls keep succeeding on the last known instance.
    named.stop();
    status
        .wait_for(|s| matches!(s, DiscoveryStatus::Failing { instances: 1, .. }))
        .await
        .unwrap();
    assert_eq!(served(&client, 50).await.get("two"), Some(&50));

    one.stop().await.unwrap();
    two.stop().await.unwrap();
}
