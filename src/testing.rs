//! An in-process authoritative DNS server, for development and tests (feature `testing`).
//!
//! [`TestDns`] answers for one zone on a free port of 127.0.0.1 (UDP and TCP), like Consul's
//! DNS interface: records have TTL 0 and negative answers are not cached, a name without
//! records is NXDOMAIN. Records are added and removed while it runs, and the next lookup sees
//! the change, so tests can scale a service up and down by DNS alone.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), meshless::Error> {
//! use meshless::testing::TestDns;
//!
//! let dns = TestDns::start("service.consul").await?;
//! dns.add_srv("users.service.consul", 1, 10, 50051, "node-1.service.consul").await?;
//! dns.add_ip("node-1.service.consul", "127.0.0.1".parse().unwrap()).await?;
//! let target = dns.srv_target("users.service.consul");
//! assert_eq!(target, format!("dns+srv://{}/users.service.consul", dns.addr()));
//! dns.stop().await;
//! # Ok(()) }
//! ```

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_resolver::proto::rr::{LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};

use crate::Error;

/// An authoritative DNS server for one zone on 127.0.0.1; see the [module docs](self).
pub struct TestDns {
    addr: SocketAddr,
    origin: Name,
    zone: Arc<InMemoryZoneHandler<TokioRuntimeProvider>>,
    server: Server<Catalog>,
    serial: AtomicU32,
}

impl std::fmt::Debug for TestDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDns")
            .field("addr", &self.addr)
            .field("zone", &self.origin.to_string())
            .finish_non_exhaustive()
    }
}

impl TestDns {
    /// Starts a server for `zone` (such as `service.consul`) on a free port of 127.0.0.1.
    pub async fn start(zone: &str) -> Result<Self, Error> {
        let origin = fqdn(zone)?;
        let mut handler = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        );
        let soa = SOA::new(
            fqdn(&format!("ns.{origin}"))?,
            fqdn(&format!("admin.{origin}"))?,
            1,
            3600,
            600,
            86400,
            0,
        );
        handler.upsert_mut(Record::from_rdata(origin.clone(), 0, RData::SOA(soa)), 1);
        let zone = Arc::new(handler);
        let mut catalog = Catalog::new();
        catalog.upsert(
            LowerName::from(&origin),
            vec![zone.clone() as Arc<dyn ZoneHandler>],
        );

        let udp = UdpSocket::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::io("binding the test DNS server's UDP socket", e))?;
        let addr = udp
            .local_addr()
            .map_err(|e| Error::io("reading the test DNS server's address", e))?;
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        // TCP on the same port, for answers too large for UDP; UDP alone works for most tests.
        if let Ok(tcp) = TcpListener::bind(addr).await {
            server.register_listener(tcp, Duration::from_secs(5), 64);
        }
        Ok(Self {
            addr,
            origin,
            zone,
            server,
            serial: AtomicU32::new(2),
        })
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `dns://ADDR/name:port`: a target that looks `name`'s A/AAAA records up here.
    pub fn target(&self, name: &str, port: u16) -> String {
        format!("dns://{}/{name}:{port}", self.addr)
    }

    /// `dns+srv://ADDR/name`: a target that looks `name`'s SRV records up here.
    pub fn srv_target(&self, name: &str) -> String {
        format!("dns+srv://{}/{name}", self.addr)
    }

    /// Adds an A (IPv4) or AAAA (IPv6) record, TTL 0.
    pub async fn add_ip(&self, name: &str, ip: IpAddr) -> Result<(), Error> {
        let record = Record::from_rdata(self.name_in_zone(name)?, 0, ip_rdata(ip));
        self.zone.upsert(record, self.next_serial()).await;
        Ok(())
    }

    /// Removes an A or AAAA record.
    pub async fn remove_ip(&self, name: &str, ip: IpAddr) -> Result<(), Error> {
        let record_type = if ip.is_ipv4() {
            RecordType::A
        } else {
            RecordType::AAAA
        };
        self.remove(name, record_type, ip_rdata(ip)).await
    }

    /// Adds an SRV record, TTL 0: instances of `name` at `target:port`.
    pub async fn add_srv(
        &self,
        name: &str,
        priority: u16,
        weight: u16,
        port: u16,
        target: &str,
    ) -> Result<(), Error> {
        let srv = SRV::new(priority, weight, port, fqdn(target)?);
        let record = Record::from_rdata(self.name_in_zone(name)?, 0, RData::SRV(srv));
        self.zone.upsert(record, self.next_serial()).await;
        Ok(())
    }

    /// Removes an SRV record (priority and weight do not matter).
    pub async fn remove_srv(&self, name: &str, port: u16, target: &str) -> Result<(), Error> {
        let name_in_zone = self.name_in_zone(name)?;
        let target = fqdn(target)?;
        let key = RrKey::new(LowerName::from(&name_in_zone), RecordType::SRV);
        let mut records = self.zone.records_mut().await;
        let serial = self.next_serial();
        let mut empty = false;
        if let Some(rrset) = records.get_mut(&key) {
            let matching: Vec<Record> = rrset
                .records_without_rrsigs()
                .filter(
                    |r| matches!(&r.data, RData::SRV(s) if s.port == port && s.target == target),
                )
                .cloned()
                .collect();
            let rrset = Arc::make_mut(rrset);
            for record in &matching {
                rrset.remove(record, serial);
            }
            empty = rrset.is_empty();
        }
        if empty {
            records.remove(&key);
        }
        Ok(())
    }

    /// Removes every record of `name`: lookups of it answer NXDOMAIN.
    pub async fn remove_name(&self, name: &str) -> Result<(), Error> {
        let name = LowerName::from(&self.name_in_zone(name)?);
        self.zone
            .records_mut()
            .await
            .retain(|key, _| key.name() != &name);
        Ok(())
    }

    /// Stops the server; lookups then time out, as with a DNS server that went down.
    pub async fn stop(mut self) {
        let _ = self.server.shutdown_gracefully().await;
    }

    async fn remove(&self, name: &str, record_type: RecordType, data: RData) -> Result<(), Error> {
        let name = self.name_in_zone(name)?;
        let key = RrKey::new(LowerName::from(&name), record_type);
        let mut records = self.zone.records_mut().await;
        let serial = self.next_serial();
        let mut empty = false;
        if let Some(rrset) = records.get_mut(&key) {
            let rrset = Arc::make_mut(rrset);
            rrset.remove(&Record::from_rdata(name, 0, data), serial);
            empty = rrset.is_empty();
        }
        if empty {
            records.remove(&key);
        }
        Ok(())
    }

    fn name_in_zone(&self, name: &str) -> Result<Name, Error> {
        let name = fqdn(name)?;
        if self.origin.zone_of(&name) {
            Ok(name)
        } else {
            Err(Error::invalid_input(format!(
                "`{name}` is not in the test zone `{}`",
                self.origin
            )))
        }
    }

    fn next_serial(&self) -> u32 {
        self.serial.fetch_add(1, Ordering::Relaxed)
    }
}

fn ip_rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(ip) => RData::A(A(ip)),
        IpAddr::V6(ip) => RData::AAAA(AAAA(ip)),
    }
}

/// `name` as a fully qualified name (with the final dot).
fn fqdn(name: &str) -> Result<Name, Error> {
    let absolute = if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    };
    Name::from_str(&absolute)
        .map_err(|e| Error::invalid_input(format!("`{name}` is not a DNS name: {e}")))
}
