//! What the command tests share: Orders servers on 127.0.0.1:0 behind the embedded DNS, and
//! the `meshless` binary run with a timeout.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use meshless::testing::TestDns;
use meshless::{Request, Response, Server, Status};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod orders {
    meshless::include_proto!("testing.orders.v1");
}

pub use orders::{
    ChangeReply, ChangeRequest, Order, OrderChangedEvent, OrdersClient, OrdersHandler,
    OrdersPublisher, OrdersService,
};

/// Every wait in a test gives up after this, failing the test.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The DNS zone of the tests.
pub const ZONE: &str = "service.consul";

/// An Orders instance: answers `Change` with its name, or fails every call with
/// `UNAVAILABLE`.
#[derive(Debug, Clone)]
pub struct Orders {
    pub name: String,
    pub broken: bool,
}

impl OrdersHandler for Orders {
    async fn change(
        &self,
        request: Request<ChangeRequest>,
    ) -> Result<Response<ChangeReply>, Status> {
        if self.broken {
            return Err(Status::unavailable(format!("{} is broken", self.name)));
        }
        let order = request.into_inner().order.unwrap_or_default();
        Ok(Response::new(ChangeReply {
            served_by: format!("{} took {}", self.name, order.id),
        }))
    }
}

/// A server on a port of 127.0.0.1, stopped by [`Running::stop`].
pub struct Running {
    pub addr: SocketAddr,
    pub name: String,
    pub publisher: OrdersPublisher,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), meshless::Error>>,
}

/// What an Orders server serves besides Orders.
#[derive(Debug, Clone, Copy, Default)]
pub struct Serving {
    pub admin: bool,
    pub reflection: bool,
    pub broken: bool,
}

impl Running {
    pub async fn orders(name: &str, serving: Serving) -> Self {
        Self::orders_on(name, serving, Server::builder()).await
    }

    /// An Orders server built on `server` (with its layers, say).
    pub async fn orders_on(name: &str, serving: Serving, server: Server) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let publisher = OrdersPublisher::new();
        let handler = Orders {
            name: name.to_owned(),
            broken: serving.broken,
        };
        let server = server
            .admin(serving.admin)
            .reflection(serving.reflection)
            // Consumer groups with events held by blocked handlers are not waited for.
            .grace_period(Duration::from_millis(200))
            .add_service(OrdersService::with_publisher(handler, publisher.clone()));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve_with_listener(listener, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            name: name.to_owned(),
            publisher,
            stop: Some(stop),
            task,
        }
    }

    pub fn target(&self) -> String {
        format!("ipv4:{}", self.addr)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let stopped = tokio::time::timeout(PATIENCE, self.task).await;
        assert!(stopped.is_ok(), "{} did not stop", self.name);
    }
}

/// Orders instances registered under one SRV name of an embedded DNS server.
pub struct Cluster {
    pub dns: TestDns,
    pub instances: Vec<Running>,
    pub target: String,
}

impl Cluster {
    pub async fn start(name: &str, count: usize, serving: Serving) -> Self {
        let dns = TestDns::start(ZONE).await.expect("the DNS server");
        dns.add_ip(&format!("node.{ZONE}"), "127.0.0.1".parse().expect("an IP"))
            .await
            .expect("an A record");
        let mut instances = Vec::new();
        for i in 0..count {
            let running = Running::orders(&format!("{name}-{}", i + 1), serving).await;
            dns.add_srv(
                &format!("{name}.{ZONE}"),
                1,
                10,
                running.addr.port(),
                &format!("node.{ZONE}"),
            )
            .await
            .expect("an SRV record");
            instances.push(running);
        }
        instances.sort_by_key(|running| running.addr);
        let target = dns.srv_target(&format!("{name}.{ZONE}"));
        Self {
            dns,
            instances,
            target,
        }
    }

    pub async fn stop(self) {
        for running in self.instances {
            running.stop().await;
        }
        self.dns.stop().await;
    }
}

/// What a run of `meshless` printed, and how it ended.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Stdout, after checking that the command succeeded.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "meshless failed: {self:#?}");
        &self.stdout
    }

    /// Stderr, after checking that the command failed with `code`.
    pub fn failed(&self, code: i32) -> &str {
        assert_eq!(
            self.code,
            Some(code),
            "meshless did not fail with {code}: {self:#?}"
        );
        &self.stderr
    }
}

/// Runs `meshless` with `args`; kills it if it runs longer than [`PATIENCE`].
pub async fn meshless(args: &[&str]) -> Ran {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshless"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("meshless starts");
    let output = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("meshless {args:?} ran longer than {PATIENCE:?}"))
        .expect("meshless's output");
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Polls `check` until it returns `Some`, failing the test after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let waited = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(value) = check().await {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    waited.unwrap_or_else(|_| panic!("timed out waiting until {what}"))
}

pub fn event(order: &str, step: u64) -> OrderChangedEvent {
    OrderChangedEvent {
        order: Some(Order {
            id: order.to_owned(),
        }),
        step,
    }
}

/// A TCP proxy to an instance that can be frozen: from then on it passes nothing either way
/// and keeps the connections open, as an instance that hangs would.
pub struct Proxy {
    pub addr: SocketAddr,
    frozen: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn to(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let (frozen, watching) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, watching.clone()));
                tokio::spawn(pump(server_read, client_write, watching.clone()));
            }
        });
        Self { addr, frozen, task }
    }

    /// Passes nothing more, either way, on any connection.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, holding what it read while frozen; stops when either side closes or
/// the proxy is dropped.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if frozen.wait_for(|frozen| !*frozen).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
