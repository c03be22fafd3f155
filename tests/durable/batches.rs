//! `publish_*_batch` on a publisher in files: all or none, consecutive sequences, read in
//! order by subscribers, and kept across a reopen.

use meshless::events::{PublishError, PublisherSettings};

use super::{cut_at_event, echoed, first_events, scratch, support};

#[tokio::test]
async fn a_batch_is_read_in_order_and_kept_across_a_reopen() {
    let dir = scratch();
    let publisher = support::EchoPublisher::open(&dir.0).unwrap();
    let first = publisher
        .publish_echoed_batch(&[echoed("one"), echoed("two"), echoed("three")])
        .unwrap()
        .expect("the last cursor of a batch of three");
    assert_eq!(first.sequence, 3);
    assert_eq!(publisher.publish_echoed_batch(&[]).unwrap(), None);
    let syncs = publisher.as_publisher().syncs();
    let last = publisher
        .publish_echoed_batch_durable(&[echoed("four"), echoed("five")])
        .await
        .unwrap()
        .expect("the last cursor of a batch of two");
    assert_eq!((last.epoch, last.sequence), (first.epoch, 5));
    assert!(
        publisher.as_publisher().syncs() > syncs,
        "a durable batch syncs"
    );

    // A live subscriber gets a batch published after it subscribed, in order.
    let producer = support::Running::publishing(publisher.clone()).await;
    let target = producer.target();
    let reading =
        tokio::spawn(async move { first_events(&target, Some((first.epoch, 5)), 2).await });
    // Published once the subscriber waits (it reads nothing before).
    let published = async {
        while publisher.as_publisher().subscribers() == 0 {
            tokio::task::yield_now().await;
        }
        publisher
            .publish_echoed_batch(&[echoed("six"), echoed("seven")])
            .unwrap()
    };
    tokio::time::timeout(support::PATIENCE, published)
        .await
        .expect("subscribed within the patience");
    let live = reading.await.unwrap();
    assert_eq!(
        live.iter()
            .map(|(message, _, sequence, _)| (message.as_str(), *sequence))
            .collect::<Vec<_>>(),
        [("six", 6), ("seven", 7)]
    );
    producer.stop().await.unwrap();
    drop(publisher);

    let reopened = support::EchoPublisher::open(&dir.0).unwrap();
    let producer = support::Running::publishing(reopened).await;
    let all = first_events(&producer.target(), None, 7).await;
    assert_eq!(
        all.iter()
            .map(|(message, epoch, sequence, _)| (message.as_str(), *epoch, *sequence))
            .collect::<Vec<_>>(),
        ["one", "two", "three", "four", "five", "six", "seven"]
            .into_iter()
            .zip(1..)
            .map(|(message, sequence)| (message, first.epoch, sequence))
            .collect::<Vec<_>>()
    );
    producer.stop().await.unwrap();
}

#[tokio::test]
async fn a_batch_with_an_event_too_large_publishes_none_of_it() {
    let dir = scratch();
    let mut settings = PublisherSettings::default();
    settings.max_event_size = 64;
    let publisher = support::EchoPublisher::open_with_settings(&dir.0, settings).unwrap();
    let error = publisher
        .publish_echoed_batch(&[echoed("small"), echoed(&"x".repeat(100))])
        .unwrap_err();
    assert!(
        matches!(error, PublishError::TooLarge { limit: 64, .. }),
        "{error}"
    );
    let next = publisher.publish_echoed(echoed("after")).unwrap();
    assert_eq!(next.sequence, 1, "nothing of the refused batch was kept");
}

#[tokio::test]
async fn a_batch_cut_by_a_killed_process_inside_its_write_is_not_published() {
    let dir = scratch();
    let publisher = support::EchoPublisher::open(&dir.0).unwrap();
    publisher.publish_echoed(echoed("one")).unwrap();
    let two = publisher.publish_echoed(echoed("two")).unwrap();
    publisher
        .publish_echoed_batch(&[echoed("three"), echoed("four"), echoed("five")])
        .unwrap();
    drop(publisher);
    // What a process killed inside the batch's write leaves: the batch's first two records
    // whole, not its last; and no clean close.
    cut_at_event(&dir.0, 5, 0);
    std::fs::remove_file(dir.0.join("closed-cleanly")).unwrap();

    let reopened = support::EchoPublisher::open(&dir.0).unwrap();
    assert_eq!(
        reopened.as_publisher().epoch(),
        two.epoch,
        "the epoch goes on"
    );
    let after = reopened.publish_echoed(echoed("after")).unwrap();
    assert_eq!(after.sequence, 3, "none of the batch was kept");
    let producer = support::Running::publishing(reopened).await;
    let read = first_events(&producer.target(), None, 3).await;
    assert_eq!(
        read.iter()
            .map(|(message, _, sequence, _)| (message.as_str(), *sequence))
            .collect::<Vec<_>>(),
        [("one", 1), ("two", 2), ("after", 3)]
    );
    producer.stop().await.unwrap();
}
