use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::transport::Endpoint;

use super::*;

/// A subscription whose tasks record what they are told, and end when retired.
#[derive(Default)]
struct Recorder {
    spawned: AtomicUsize,
    told: Arc<Mutex<Vec<Instance>>>,
}

impl Subscription for Recorder {
    fn spawn(
        &self,
        _instance: String,
        _endpoint: Endpoint,
        _shared: Arc<Shared>,
        mut control: watch::Receiver<Instance>,
    ) -> JoinHandle<()> {
        self.spawned.fetch_add(1, Ordering::SeqCst);
        let told = self.told.clone();
        tokio::spawn(async move {
            loop {
                let state = *control.borrow_and_update();
                lock(&told).push(state);
                match state {
                    Instance::Active => {}
                    Instance::Retired(until) => {
                        // Reads until the grace is over, unless back in discovery.
                        tokio::select! {
                            () = tokio::time::sleep_until(until) => return,
                            _ = control.changed() => continue,
                        }
                    }
                    Instance::Stopped => return,
                }
                if control.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}

fn instances(recorder: &Arc<Recorder>, grace: Duration) -> Instances {
    let (_stop, stopped) = watch::channel(false);
    Instances {
        connector: Connector::default(),
        subscriptions: vec![recorder.clone() as Arc<dyn Subscription>],
        shared: Arc::new(Shared {
            options: ObserverOptions::default().removal_grace(grace),
            handlers: None,
            member: "m".into(),
            book: Book::default(),
            filters: Default::default(),
        }),
        stop: stopped,
        running: HashMap::new(),
        listed: Arc::default(),
    }
}

#[tokio::test(start_paused = true)]
async fn an_instance_back_within_its_grace_keeps_its_stream() {
    let recorder = Arc::new(Recorder::default());
    let mut instances = instances(&recorder, Duration::from_secs(30));
    instances.add("127.0.0.1:1".into()).unwrap();
    tokio::task::yield_now().await;
    let removed_at = tokio::time::Instant::now();
    instances.remove("127.0.0.1:1");
    tokio::time::sleep(Duration::from_secs(10)).await;
    instances.add("127.0.0.1:1".into()).unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        recorder.spawned.load(Ordering::SeqCst),
        1,
        "the same stream"
    );
    assert_eq!(
        *lock(&recorder.told),
        [
            Instance::Active,
            Instance::Retired(removed_at + Duration::from_secs(30)),
            Instance::Active
        ]
    );
    assert_eq!(lock(&instances.listed).len(), 1);
    instances.finish().await;
    assert_eq!(lock(&recorder.told).last(), Some(&Instance::Stopped));
}

#[tokio::test(start_paused = true)]
async fn an_instance_back_after_its_grace_is_subscribed_anew_and_stop_waits_for_every_stream() {
    let recorder = Arc::new(Recorder::default());
    let mut instances = instances(&recorder, Duration::from_secs(30));
    instances.add("127.0.0.1:1".into()).unwrap();
    instances.add("127.0.0.1:2".into()).unwrap();
    tokio::task::yield_now().await;
    instances.remove("127.0.0.1:1");
    assert_eq!(
        lock(&instances.listed).iter().collect::<Vec<_>>(),
        ["127.0.0.1:2"]
    );
    tokio::time::sleep(Duration::from_secs(31)).await;
    instances.add("127.0.0.1:1".into()).unwrap();
    assert_eq!(recorder.spawned.load(Ordering::SeqCst), 3, "a new stream");
    // A retired stream still reading is waited for by stop too.
    instances.remove("127.0.0.1:2");
    instances.finish().await;
    assert!(instances.running.is_empty());
    let stopped = lock(&recorder.told)
        .iter()
        .filter(|state| **state == Instance::Stopped)
        .count();
    assert_eq!(stopped, 2, "both live tasks told to stop and awaited");
}
