//! Servers on 127.0.0.1:0 and the Echo handler the tests call.

#![allow(dead_code, unreachable_pub, missing_docs, unused_imports)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshless::{Code, Request, Response, Server, Status, Streaming};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

meshless::include_protos!();

pub use testing::v1::{
    EchoClient, EchoHandler, EchoPublisher, EchoReply, EchoRequest, EchoService, EchoedEvent,
    EchoedObserver,
};

/// Every wait in a test gives up after this, failing the test.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `done` until it holds, failing the test after [`PATIENCE`]: for state no event
/// announces (what a process or a background task did).
pub async fn eventually(what: &str, done: impl Fn() -> bool) {
    let waited = tokio::time::timeout(PATIENCE, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting until {what}");
}

/// DNS settings that notice a change within a tenth of a second.
pub fn quick_dns() -> meshless::discovery::DnsSettings {
    let mut settings = meshless::discovery::DnsSettings::default();
    settings.refresh_floor = Duration::from_millis(20);
    settings.refresh_ceiling = Duration::from_millis(100);
    settings
}

/// The message that makes `Unary` wait for [`Gate::open`].
pub const WAIT: &str = "wait";

/// Lets a test hold a call inside the handler and know that it got there.
#[derive(Debug, Clone)]
pub struct Gate {
    entered: Arc<Notify>,
    permits: Arc<Semaphore>,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            entered: Arc::new(Notify::new()),
            permits: Arc::new(Semaphore::new(0)),
        }
    }
}

impl Gate {
    pub async fn entered(&self) {
        self.entered.notified().await;
    }

    pub fn open(&self) {
        self.permits.add_permits(1);
    }

    /// For handlers: tells the test the gate was reached.
    pub fn entered_once(&self) {
        self.entered.notify_one();
    }

    /// For handlers: waits until the test opens the gate.
    pub async fn pass(&self) {
        let _ = self.permits.acquire().await;
    }
}

#[derive(Debug, Clone, Default)]
pub struct Echo {
    pub name: String,
    pub gate: Gate,
    /// How long `Unary` takes.
    pub delay: Duration,
    /// When set, `Unary` fails at once with this code: a broken instance.
    pub broken: Option<Code>,
}

impl Echo {
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    pub fn slow(name: &str, delay: Duration) -> Self {
        Self {
            name: name.to_owned(),
            delay,
            ..Self::default()
        }
    }

    fn reply(&self, request: &EchoRequest) -> Result<EchoReply, Status> {
        if request.fail_with_code != 0 {
            return Err(Status::new(
                Code::from(request.fail_with_code),
                format!("failed as asked: {}", request.message),
            ));
        }
        Ok(EchoReply {
            message: if self.name.is_empty() {
                request.message.clone()
            } else {
                format!("{}: {}", self.name, request.message)
            },
            at: None,
            payload: vec![b'x'; request.reply_size as usize],
        })
    }
}

type ReplyStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<EchoReply, Status>> + Send>>;

impl EchoHandler for Echo {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        if let Some(code) = self.broken {
            return Err(Status::new(code, format!("{} is broken", self.name)));
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if request.get_ref().message == WAIT {
            self.gate.entered.notify_one();
            let _permit = self
                .gate
                .permits
                .acquire()
                .await
                .map_err(|_| Status::aborted("gate closed"))?;
        }
        let request_id = request.metadata().get("x-request-id").cloned();
        let binary = request.metadata().get_bin("x-trace-bin").cloned();
        let mut response = Response::new(self.reply(request.get_ref())?);
        if let Some(id) = request_id {
            response.metadata_mut().insert("x-request-id", id);
        }
        if let Some(bin) = binary {
            response.metadata_mut().insert_bin("x-trace-bin", bin);
        }
        Ok(response)
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        let this = self.clone();
        let replies: Vec<_> = request
            .into_inner()
            .message
            .chars()
            .map(|c| {
                this.reply(&EchoRequest {
                    message: c.to_string(),
                    ..Default::default()
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(replies))))
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        let mut stream = request.into_inner();
        let mut joined = Vec::new();
        while let Some(request) = stream.next().await {
            joined.push(request?.message);
        }
        Ok(Response::new(self.reply(&EchoRequest {
            message: joined.join(" "),
            ..Default::default()
        })?))
    }

    type BidiStreamStream = ReplyStream;

    async fn bidi_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let this = self.clone();
        let replies = request
            .into_inner()
            .map(move |request| this.reply(&request?));
        Ok(Response::new(Box::pin(replies)))
    }

    async fn old_unary(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<EchoReply>, Status> {
        Ok(Response::new(self.reply(request.get_ref())?))
    }
}

/// An observer that forwards the message of every event it handles.
#[derive(Clone)]
pub struct Forward(pub tokio::sync::mpsc::UnboundedSender<String>);

impl EchoedObserver for Forward {
    async fn echoed(
        &self,
        event: meshless::events::Event<EchoedEvent>,
    ) -> Result<(), meshless::events::HandlerError> {
        let _ = self.0.send(event.message().message.clone());
        Ok(())
    }
}

/// A server running on a port of 127.0.0.1, stopped by [`Running::stop`].
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), meshless::Error>>,
}

impl Running {
    pub async fn start(server: Server) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        Self::start_on(listener, server)
    }

    pub fn start_on(listener: TcpListener, server: Server) -> Self {
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve_with_listener(listener, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub async fn echo(echo: Echo) -> Self {
        Self::start(Server::builder().add_service(EchoService::new(echo))).await
    }

    /// An Echo server whose `Echoed` events come from `publisher`.
    pub async fn publishing(publisher: EchoPublisher) -> Self {
        Self::start(
            Server::builder().add_service(EchoService::with_publisher(Echo::default(), publisher)),
        )
        .await
    }

    pub fn target(&self) -> String {
        format!("ipv4:{}", self.addr)
    }

    /// Whether `serve` has returned.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Sends the shutdown signal without waiting for the server to finish.
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts down gracefully and returns what `serve` returned.
    pub async fn stop(mut self) -> Result<(), meshless::Error> {
        self.signal_stop();
        self.task.await.expect("server task panicked")
    }
}

/// A port on 127.0.0.1 with nothing listening on it.
pub async fn dead_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("local address")
}

pub fn request(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.to_owned(),
        ..Default::default()
    }
}

/// A server on a runtime of its own, so that it can be killed hard: every task and socket of
/// it gone at once, as when a process dies.
pub struct Killable {
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Killable {
    pub fn echo(echo: Echo) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("local address");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("tokio listener");
            Server::builder()
                .add_service(EchoService::new(echo))
                .serve_with_listener(listener, std::future::pending())
                .await
        });
        Self {
            addr,
            runtime: Some(runtime),
        }
    }

    /// Kills the server: its connections and listener close without a goodbye.
    pub fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// An observer on a runtime of its own, killed without a goodbye: its connections close, and
/// it neither acknowledges nor leaves its consumer group, as after SIGKILL.
pub struct KillableObserver {
    runtime: Option<tokio::runtime::Runtime>,
}

impl KillableObserver {
    /// Runs `start` (which starts the observer) on a runtime of its own; returns once it
    /// started.
    pub async fn start(
        start: impl std::future::Future<Output = meshless::events::ObserverHandle> + Send + 'static,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let (started, ready) = oneshot::channel();
        runtime.spawn(async move {
            let handle = start.await;
            let _ = started.send(());
            // Runs until the runtime is killed.
            std::future::pending::<()>().await;
            drop(handle);
        });
        ready.await.expect("the observer started");
        Self {
            runtime: Some(runtime),
        }
    }

    pub fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for KillableObserver {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The instance name an Echo reply carries (`name: message`).
pub fn served_by(reply: &EchoReply) -> &str {
    reply.message.split(':').next().unwrap_or_default()
}

/// A TCP proxy on 127.0.0.1 in front of `backend`, whose connections a test can cut.
pub struct Proxy {
    pub addr: SocketAddr,
    connections: Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(backend: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let connections = Arc::new(std::sync::Mutex::new(tokio::task::JoinSet::new()));
        let accept = tokio::spawn({
            let connections = connections.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    connections.lock().unwrap().spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(backend).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                }
            }
        });
        Self {
            addr,
            connections,
            accept,
        }
    }

    /// Drops every connection through the proxy; new ones are accepted.
    pub fn cut(&self) {
        self.connections.lock().unwrap().abort_all();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.connections.lock().unwrap().abort_all();
    }
}

/// A producer as a separate process: the `interop-server` example (built by `cargo test` with
/// the other examples), which publishes every unary message as an `Echoed` event and drains
/// on SIGTERM. Killed by its PID when dropped, however the test ends.
pub struct ProducerProcess {
    child: std::process::Child,
    pub addr: SocketAddr,
}

/// A producer process started, not yet known to serve. Killed by its PID when dropped.
pub struct StartingProducer {
    /// Taken once it serves.
    child: Option<std::process::Child>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl StartingProducer {
    /// The next line it prints, within [`PATIENCE`] (`None` if none comes).
    pub fn next_line(&self) -> Option<String> {
        self.lines.recv_timeout(PATIENCE).ok()
    }

    /// Waits until it serves (it prints `listening on ADDR`); fails the test after
    /// [`PATIENCE`].
    pub fn serving(mut self) -> ProducerProcess {
        loop {
            let line = self
                .next_line()
                .unwrap_or_else(|| panic!("interop-server did not say it serves"));
            if let Some(addr) = line.strip_prefix("listening on ") {
                let addr = addr.trim().parse().expect("an address");
                let child = self.child.take().expect("the process");
                return ProducerProcess { child, addr };
            }
        }
    }
}

impl Drop for StartingProducer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl ProducerProcess {
    /// Starts one listening on `listen` (`127.0.0.1:0` for a free port), keeping its events
    /// in `data_dir` if given.
    pub fn start(listen: &str, data_dir: Option<&std::path::Path>) -> Self {
        let mut args: Vec<&std::ffi::OsStr> = Vec::new();
        if let Some(dir) = data_dir {
            args.extend(["--data-dir".as_ref(), dir.as_os_str()]);
        }
        Self::start_with(listen, &args)
    }

    /// Starts one listening on `listen`, with more arguments (`--postgres URL NAME`); returns
    /// once it serves.
    pub fn start_with(listen: &str, args: &[&std::ffi::OsStr]) -> Self {
        Self::spawn_with(listen, args).serving()
    }

    /// Starts one without waiting for it to serve: what it prints comes line by line.
    pub fn spawn_with(listen: &str, args: &[&std::ffi::OsStr]) -> StartingProducer {
        use std::io::BufRead;
        let exe = std::env::current_exe().expect("the test's path");
        // target/debug/deps/TEST-HASH -> target/debug/examples/interop-server
        let server = exe
            .parent()
            .and_then(|deps| deps.parent())
            .map(|dir| dir.join("examples").join("interop-server"))
            .expect("the target directory");
        assert!(
            server.exists(),
            "{} is missing: `cargo test` builds the examples",
            server.display()
        );
        let mut command = std::process::Command::new(&server);
        command.args(["--listen", listen]).args(args);
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start interop-server");
        let stdout = child.stdout.take().expect("its stdout");
        let (sender, lines) = std::sync::mpsc::channel();
        // Ends with the process's stdout.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        StartingProducer {
            child: Some(child),
            lines,
        }
    }

    /// Sends SIGTERM, as an orchestrator does, and waits for the drain to end the process.
    pub fn terminate(&mut self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("the producer's status") {
                assert!(status.success(), "the producer exited with {status}");
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the producer did not exit within {PATIENCE:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGKILL and waits for the process to be gone.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("the killed producer's status");
    }
}

impl Drop for ProducerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
