//! A handler that keeps failing: retried with doubling pauses up to their ceiling, then
//! dead-lettered; a stop during a pause leaves the event unhandled.

use super::super::handling::LONGEST_RETRY_PAUSE;
use super::*;

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn retries_pause_no_longer_than_the_ceiling_then_the_event_is_dead_lettered() {
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let dead = Arc::new(Mutex::new(Vec::new()));
    let (tried, dead_letters) = (attempts.clone(), dead.clone());
    let options = ObserverOptions::default()
        .handler_retries(8, Duration::from_secs(10))
        .on_dead_letter(move |letter| dead_letters.lock().unwrap().push(letter.cursor.sequence));
    let shared = Arc::new(Shared {
        options,
        handlers: None,
        member: "m".into(),
        book: Book::default(),
        filters: Default::default(),
    });
    let handler = move |_: Event<String>| -> Handled {
        tried.lock().unwrap().push(tokio::time::Instant::now());
        Box::pin(async { Err("always fails".into()) })
    };
    let typed = Typed {
        rpc: RPC,
        handler: Arc::new(handler),
        event: PhantomData,
        keyed: false,
    };
    let (subscribed, mut subscriptions) = mpsc::unbounded_channel();
    let (control, controlled) = watch::channel(Instance::Active);
    let source = Arc::new(Script {
        subscriptions: subscribed,
        live_end: 0,
        applies_filters: false,
    });
    let stream = InstanceStream::new(&typed, "127.0.0.1:1".into(), source, shared, controlled);
    let task = tokio::spawn(stream.run());
    let subscription = within(subscriptions.recv()).await.unwrap();
    subscription.send("a", 1);
    within(async {
        while dead.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await;
    let attempts = attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 8);
    let pauses: Vec<u64> = attempts
        .windows(2)
        .map(|pair| (pair[1] - pair[0]).as_secs())
        .collect();
    assert_eq!(pauses, [10, 20, 30, 30, 30, 30, 30]);
    assert_eq!(LONGEST_RETRY_PAUSE, Duration::from_secs(30));
    assert_eq!(*dead.lock().unwrap(), [1]);
    control.send_replace(Instance::Stopped);
    within(task).await.unwrap();
}
