//! The per-instance runtime under a paused clock: a scripted producer ([`Script`]) that answers
//! each subscription with a stream the test writes, a handler that records what it handled
//! ([`Recorder`]), and no real sleeps: every timer (silence, backoff, grace) runs on tokio's
//! paused time.

mod handling;
mod lanes;
mod stream;

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::book::Book;
use super::control::{Instance, Shared, Typed};
use super::cursors::CursorStore;
use super::event::{Event, HandlerError};
use super::options::ObserverOptions;
use super::run::InstanceStream;
use super::subscribe::{Pending, Source, Subscribed};
use crate::v1::{Acknowledgement, Cursor, EventMetadata, Subscribe};

const RPC: &str = "/test.v1.Orders/OrderChanged";
const EPOCH: u64 = 7;
/// Longer than anything a test waits for: waiting this long fails the test.
const PATIENCE: Duration = Duration::from_secs(24 * 3600);

type Sent = Result<(String, EventMetadata), tonic::Status>;

/// One subscription the stream made: what it asked, and where the test writes its events.
struct Subscription {
    request: Subscribe,
    events: mpsc::UnboundedSender<Sent>,
}

impl Subscription {
    /// Sends the event of `key` at `sequence`.
    fn send(&self, key: &str, sequence: u64) {
        let metadata = EventMetadata {
            epoch: EPOCH,
            sequence,
            key: key.as_bytes().to_vec(),
            ..EventMetadata::default()
        };
        let _ = self.events.send(Ok((key.to_owned(), metadata)));
    }

    fn heartbeat(&self) {
        self.heartbeat_at(0);
    }

    /// A heartbeat that carries `sequence`.
    fn heartbeat_at(&self, sequence: u64) {
        let metadata = EventMetadata {
            epoch: EPOCH,
            sequence,
            heartbeat: true,
            ..EventMetadata::default()
        };
        let _ = self.events.send(Ok((String::new(), metadata)));
    }

    /// The sequence the stream asked to resume after.
    fn after(&self) -> Option<u64> {
        self.request
            .after
            .filter(|cursor| cursor.epoch == EPOCH)
            .map(|cursor| cursor.sequence)
    }
}

/// A producer whose every subscription is handed to the test. A subscription without a cursor
/// starts after `live_end`.
struct Script {
    subscriptions: mpsc::UnboundedSender<Subscription>,
    live_end: u64,
    /// Whether the producer says it applies filters (`meshless-filtered`).
    applies_filters: bool,
}

impl Source<String> for Script {
    fn subscribe(
        &self,
        request: Subscribe,
        _member: Option<Acknowledgement>,
    ) -> Pending<'_, Result<Subscribed<String>, String>> {
        let (events, sent) = mpsc::unbounded_channel();
        let start_after = request
            .after
            .filter(|cursor| cursor.epoch == EPOCH)
            .map_or(self.live_end, |cursor| cursor.sequence);
        let applies_filters = self.applies_filters;
        let told = self.subscriptions.send(Subscription { request, events });
        Box::pin(async move {
            told.map_err(|_| "the test is over".to_owned())?;
            Ok(Subscribed {
                events: Box::pin(UnboundedReceiverStream::new(sent)),
                epoch: Some(EPOCH),
                start_after: Some(start_after),
                membership: None,
                filtered: applies_filters,
            })
        })
    }

    fn leave(&self, _member: Acknowledgement, _handled: Option<Cursor>) -> Pending<'_, ()> {
        Box::pin(async {})
    }
}

/// A handler that records the (key, sequence) it handled, in the order handlings end. The
/// events of key `held` wait for [`Recorder::release`], one per call; the first attempt of
/// key `failing`'s first event fails.
struct Recorder {
    handled: Mutex<Vec<(String, u64)>>,
    changed: Notify,
    held: Option<&'static str>,
    gate: Semaphore,
    entered: Notify,
    failing: Option<&'static str>,
    failed: AtomicBool,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            handled: Mutex::default(),
            changed: Notify::new(),
            held: None,
            gate: Semaphore::new(0),
            entered: Notify::new(),
            failing: None,
            failed: AtomicBool::new(false),
        }
    }
}

type Handled = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>;

impl Recorder {
    fn holding(key: &'static str) -> Arc<Self> {
        Arc::new(Self {
            held: Some(key),
            ..Self::default()
        })
    }

    fn failing_once(key: &'static str) -> Arc<Self> {
        Arc::new(Self {
            failing: Some(key),
            ..Self::default()
        })
    }

    fn handler(self: &Arc<Self>) -> impl Fn(Event<String>) -> Handled + Send + Sync + 'static {
        let recorder = self.clone();
        move |event: Event<String>| -> Handled {
            let recorder = recorder.clone();
            Box::pin(async move {
                let key = event.message().clone();
                if recorder.held == Some(key.as_str()) {
                    recorder.entered.notify_one();
                    let _ = recorder.gate.acquire().await.map(|permit| permit.forget());
                }
                if recorder.failing == Some(key.as_str())
                    && !recorder.failed.swap(true, Ordering::SeqCst)
                {
                    recorder.entered.notify_one();
                    return Err("the first attempt fails".into());
                }
                recorder
                    .handled
                    .lock()
                    .unwrap()
                    .push((key, event.cursor().sequence));
                recorder.changed.notify_waiters();
                Ok(())
            })
        }
    }

    fn release(&self) {
        self.gate.add_permits(1);
    }

    /// Waits until a held or failing event reached the handler.
    async fn entered(&self) {
        within(self.entered.notified()).await;
    }

    fn handled(&self) -> Vec<(String, u64)> {
        self.handled.lock().unwrap().clone()
    }

    /// The sequences handled, sorted.
    fn sequences(&self) -> Vec<u64> {
        let mut sequences: Vec<u64> = self.handled().iter().map(|(_, s)| *s).collect();
        sequences.sort_unstable();
        sequences
    }

    /// Waits until `count` events were handled.
    async fn until(&self, count: usize) {
        within(async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.handled.lock().unwrap().len() >= count {
                    return;
                }
                changed.await;
            }
        })
        .await;
    }
}

/// Waits for `future`, failing the test after [`PATIENCE`].
async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(PATIENCE, future)
        .await
        .expect("waited too long")
}

/// One instance stream, run against a [`Script`].
struct Running {
    subscriptions: mpsc::UnboundedReceiver<Subscription>,
    control: watch::Sender<Instance>,
    task: JoinHandle<()>,
}

impl Running {
    /// Starts a stream of a keyed event RPC with `options`, resuming from `book`.
    fn start(options: ObserverOptions, recorder: &Arc<Recorder>, book: Book) -> Self {
        Self::start_at(options, recorder, book, 0)
    }

    /// [`start`](Self::start) with a filter, against a producer that says it applies filters
    /// or not.
    fn start_filtered(
        options: ObserverOptions,
        recorder: &Arc<Recorder>,
        applies_filters: bool,
    ) -> Self {
        let filter = crate::events::Filter::new().eq("region", "eu").into();
        Self::with(
            options,
            recorder,
            Book::default(),
            0,
            Some((filter, applies_filters)),
        )
    }

    /// [`start`](Self::start) against a producer whose live end is `live_end`.
    fn start_at(
        options: ObserverOptions,
        recorder: &Arc<Recorder>,
        book: Book,
        live_end: u64,
    ) -> Self {
        Self::with(options, recorder, book, live_end, None)
    }

    fn with(
        options: ObserverOptions,
        recorder: &Arc<Recorder>,
        book: Book,
        live_end: u64,
        filter: Option<(crate::v1::Filter, bool)>,
    ) -> Self {
        let applies_filters = filter.as_ref().is_some_and(|(_, applies)| *applies);
        let shared = Arc::new(Shared {
            handlers: options
                .max_concurrent_handlers
                .map(|n| Arc::new(Semaphore::new(n))),
            options,
            member: "m".into(),
            book,
            filters: filter
                .into_iter()
                .map(|(filter, _)| (RPC, filter))
                .collect(),
        });
        let typed = Typed {
            rpc: RPC,
            handler: Arc::new(recorder.handler()),
            event: PhantomData,
            keyed: true,
        };
        let (subscribed, subscriptions) = mpsc::unbounded_channel();
        let (control, controlled) = watch::channel(Instance::Active);
        let source = Arc::new(Script {
            subscriptions: subscribed,
            live_end,
            applies_filters,
        });
        let stream = InstanceStream::new(&typed, "127.0.0.1:1".into(), source, shared, controlled);
        Self {
            subscriptions,
            control,
            task: tokio::spawn(stream.run()),
        }
    }

    /// The next subscription the stream makes.
    async fn subscription(&mut self) -> Subscription {
        within(self.subscriptions.recv())
            .await
            .expect("the stream runs")
    }

    /// Whether the stream subscribed again (without waiting).
    fn subscribed_again(&mut self) -> bool {
        self.subscriptions.try_recv().is_ok()
    }

    /// Stops the stream and waits until it ended.
    async fn stop(self) {
        self.control.send_replace(Instance::Stopped);
        within(self.task).await.expect("the stream ended cleanly");
    }
}

/// A book that starts from what `store` holds, as an observer that starts does.
fn book_from(store: &dyn CursorStore) -> Book {
    let book = Book::default();
    for (_, cursor) in store.load().unwrap() {
        book.preload(RPC, cursor);
    }
    for (_, cursor) in store.load_ahead().unwrap() {
        book.preload_ahead(RPC, cursor);
    }
    book
}

fn lanes(limit: usize) -> ObserverOptions {
    ObserverOptions::default().max_concurrent_handlers(limit)
}
