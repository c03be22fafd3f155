//! A stream's life: silence, heartbeats, an end, and the cursor it resumes from.

use super::*;

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_silent_stream_is_resubscribed_after_the_last_event_handled() {
    let recorder = Arc::new(Recorder::default());
    let options = ObserverOptions::default().heartbeat(Duration::from_secs(1));
    let mut running = Running::start(options, &recorder, Book::default());
    let first = running.subscription().await;
    assert_eq!(first.after(), None);
    first.send("a", 1);
    first.send("b", 2);
    recorder.until(2).await;
    let quiet_since = tokio::time::Instant::now();

    // Three heartbeat periods without a word: taken for dead, though never closed.
    let second = running.subscription().await;
    let waited = quiet_since.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited <= Duration::from_secs(6),
        "{waited:?}"
    );
    assert_eq!(second.after(), Some(2));
    drop(first);
    running.stop().await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn heartbeats_keep_a_quiet_stream() {
    let recorder = Arc::new(Recorder::default());
    let options = ObserverOptions::default().heartbeat(Duration::from_secs(1));
    let mut running = Running::start(options, &recorder, Book::default());
    let first = running.subscription().await;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        first.heartbeat();
    }
    assert!(!running.subscribed_again());
    assert!(recorder.handled().is_empty());
    running.stop().await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_stream_that_ends_is_resubscribed_with_its_cursor() {
    let recorder = Arc::new(Recorder::default());
    let options = ObserverOptions::default()
        .reconnect_backoff(Duration::from_secs(1), Duration::from_secs(10));
    let mut running = Running::start(options, &recorder, Book::default());
    let first = running.subscription().await;
    for sequence in 1..=3 {
        first.send("a", sequence);
    }
    recorder.until(3).await;
    drop(first);

    // After a backoff pause, from the last event handled; what comes again is not handled
    // again.
    let ended = tokio::time::Instant::now();
    let second = running.subscription().await;
    assert!(ended.elapsed() >= Duration::from_secs(1));
    assert_eq!(second.after(), Some(3));
    second.send("a", 3);
    second.send("a", 4);
    recorder.until(4).await;
    assert_eq!(recorder.sequences(), [1, 2, 3, 4]);
    running.stop().await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_retired_stream_still_open_after_its_grace_is_let_go() {
    let recorder = Arc::new(Recorder::default());
    let options = ObserverOptions::default().heartbeat(Duration::from_secs(1));
    let mut running = Running::start(options, &recorder, Book::default());
    let stream = running.subscription().await;
    let retired_at = tokio::time::Instant::now();
    running
        .control
        .send_replace(Instance::Retired(retired_at + Duration::from_secs(30)));
    // A producer that keeps publishing does not hold the stream past the grace.
    let mut sequence = 0;
    while !running.task.is_finished() {
        sequence += 1;
        stream.send("a", sequence);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            retired_at.elapsed() <= Duration::from_secs(32),
            "let go in time"
        );
    }
    assert!(retired_at.elapsed() >= Duration::from_secs(30));
    assert!(!running.subscribed_again());
    assert!(recorder.handled().len() >= 29, "read until then");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn heartbeats_move_a_filtered_cursor_only_from_a_producer_that_applies_the_filter() {
    for applies_filters in [true, false] {
        let recorder = Arc::new(Recorder::default());
        let options = ObserverOptions::default()
            .heartbeat(Duration::from_secs(1))
            .reconnect_backoff(Duration::from_secs(1), Duration::from_secs(10));
        let mut running = Running::start_filtered(options, &recorder, applies_filters);
        let first = running.subscription().await;
        assert!(first.request.filter.is_some(), "the filter is sent");
        first.send("a", 1);
        recorder.until(1).await;
        // Everything up to 10 passed over, says the heartbeat: a cursor only when the producer
        // said it filters (an older one's heartbeat carries its latest sequence, which may be
        // ahead of what it sent).
        first.heartbeat_at(10);
        drop(first);
        let second = running.subscription().await;
        let expected = if applies_filters { 10 } else { 1 };
        assert_eq!(
            second.after(),
            Some(expected),
            "applies filters: {applies_filters}"
        );
        running.stop().await;
    }
}
