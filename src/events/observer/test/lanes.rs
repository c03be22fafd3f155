//! Keyed lanes at a stream's end: what waits is handled when the stream ends (a retired
//! producer is never read again), and what was handled ahead of the cursor is not handled
//! again after a resubscription or a restart.

use super::*;

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_retired_stream_that_ends_handles_what_waits_in_its_lanes() {
    let recorder = Recorder::holding("slow");
    let mut running = Running::start(lanes(2), &recorder, Book::default());
    let stream = running.subscription().await;
    // `slow` 1 is held, `slow` 2 waits behind it; `a` 3 is handled meanwhile.
    stream.send("slow", 1);
    stream.send("slow", 2);
    stream.send("a", 3);
    recorder.entered().await;
    recorder.until(1).await;

    // Gone from discovery, then drained: the stream ends.
    running.control.send_replace(Instance::Retired(
        tokio::time::Instant::now() + Duration::from_secs(30),
    ));
    drop(stream);
    recorder.release();
    recorder.release();
    within(&mut running.task).await.expect("the stream ended");
    assert_eq!(recorder.sequences(), [1, 2, 3]);
    assert!(
        !running.subscribed_again(),
        "a retired instance is not subscribed again"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_broken_stream_finishes_its_lanes_and_resumes_after_everything_handled() {
    let recorder = Recorder::holding("slow");
    let mut running = Running::start(lanes(2), &recorder, Book::default());
    let first = running.subscription().await;
    first.send("slow", 1);
    first.send("slow", 2);
    first.send("a", 3);
    first.send("b", 4);
    recorder.entered().await;
    recorder.until(2).await;
    first
        .events
        .send(Err(tonic::Status::unavailable("cut")))
        .unwrap();
    recorder.release();
    recorder.release();

    let second = running.subscription().await;
    assert_eq!(second.after(), Some(4), "after everything handled");
    second.send("c", 5);
    recorder.until(5).await;
    assert_eq!(recorder.sequences(), [1, 2, 3, 4, 5]);
    running.stop().await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_stop_keeps_what_the_lanes_handled_ahead_and_a_restart_skips_it() {
    let path = std::env::temp_dir().join(format!("meshless-lanes-{:016x}", fastrand::u64(..)));
    let store = Arc::new(super::super::FileCursors::open(&path).unwrap());
    // A failed attempt waits an hour before the next: the stop finds `slow` 1 unhandled.
    let options = || {
        let store: Arc<dyn CursorStore> = store.clone();
        let mut options = lanes(2).handler_retries(3, Duration::from_secs(3600));
        options.cursor_store = Some(store);
        options
    };
    let recorder = Recorder::failing_once("slow");
    let mut running = Running::start(options(), &recorder, book_from(store.as_ref()));
    let stream = running.subscription().await;
    stream.send("slow", 1);
    stream.send("slow", 2);
    stream.send("a", 3);
    stream.send("b", 4);
    recorder.entered().await;
    recorder.until(2).await;
    running.stop().await;
    store.flush();
    assert_eq!(recorder.sequences(), [3, 4]);

    // Restarted on the same file: the two events of `slow`, then on.
    let store_again = super::super::FileCursors::open(&path).unwrap();
    assert_eq!(
        store_again.load().unwrap(),
        [(
            RPC.to_owned(),
            Cursor {
                epoch: EPOCH,
                sequence: 0
            }
        )],
        "nothing handled in order: the cursor is where the stream started"
    );
    assert_eq!(
        store_again.load_ahead().unwrap(),
        [
            (
                RPC.to_owned(),
                Cursor {
                    epoch: EPOCH,
                    sequence: 3
                }
            ),
            (
                RPC.to_owned(),
                Cursor {
                    epoch: EPOCH,
                    sequence: 4
                }
            )
        ]
    );
    let recorder = Arc::new(Recorder::default());
    let mut running = Running::start(options(), &recorder, book_from(&store_again));
    // The first subscription learns the producer's epoch, the next resumes from the store.
    assert_eq!(running.subscription().await.after(), None);
    let stream = running.subscription().await;
    assert_eq!(stream.after(), Some(0));
    for (key, sequence) in [("slow", 1), ("slow", 2), ("a", 3), ("b", 4), ("c", 5)] {
        stream.send(key, sequence);
    }
    recorder.until(3).await;
    running.stop().await;
    assert_eq!(recorder.sequences(), [1, 2, 5]);
    store.flush();
    let stored = super::super::FileCursors::open(&path).unwrap();
    assert_eq!(
        stored.load().unwrap(),
        [(
            RPC.to_owned(),
            Cursor {
                epoch: EPOCH,
                sequence: 5
            }
        )]
    );
    assert!(stored.load_ahead().unwrap().is_empty());
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_restart_resumes_where_the_producer_started_the_stream_even_with_nothing_handled() {
    let path = std::env::temp_dir().join(format!("meshless-start-{:016x}", fastrand::u64(..)));
    let store = Arc::new(super::super::FileCursors::open(&path).unwrap());
    let options = || {
        let store: Arc<dyn CursorStore> = store.clone();
        // At the live end; a failed attempt waits an hour: the stop finds event 41 unhandled.
        let mut options = ObserverOptions::default()
            .start(crate::v1::StartPosition::Live)
            .handler_retries(3, Duration::from_secs(3600));
        options.cursor_store = Some(store);
        options
    };
    let recorder = Recorder::failing_once("first");
    let mut running = Running::start_at(options(), &recorder, book_from(store.as_ref()), 40);
    let stream = running.subscription().await;
    assert_eq!(stream.after(), None);
    stream.send("first", 41);
    recorder.entered().await;
    running.stop().await;
    store.flush();
    assert!(recorder.handled().is_empty());

    // Restarted on the same file, the producer's live end having moved on: it asks for what
    // follows 40, so event 41 is not skipped.
    let store_again = super::super::FileCursors::open(&path).unwrap();
    let recorder = Arc::new(Recorder::default());
    let mut running = Running::start_at(options(), &recorder, book_from(&store_again), 50);
    // The first subscription learns the producer's epoch, the next resumes from the store.
    assert_eq!(running.subscription().await.after(), None);
    let stream = running.subscription().await;
    assert_eq!(stream.after(), Some(40));
    stream.send("first", 41);
    recorder.until(1).await;
    assert_eq!(recorder.sequences(), [41]);
    running.stop().await;
    let _ = std::fs::remove_file(&path);
}
