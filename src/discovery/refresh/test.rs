use std::collections::VecDeque;

use super::*;

/// Answers from a script, and records when it was asked.
struct Scripted {
    answers: VecDeque<Result<Answer, String>>,
    asked: mpsc::UnboundedSender<Instant>,
}

impl Lookup for Scripted {
    async fn lookup(&mut self) -> Result<Answer, String> {
        let _ = self.asked.send(Instant::now());
        self.answers
            .pop_front()
            .unwrap_or_else(|| Err("script over".into()))
    }
}

const SCHEDULE: Schedule = Schedule {
    floor: Duration::from_secs(1),
    ceiling: Duration::from_secs(30),
    retry: Duration::from_millis(250),
};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn instances(ports: &[u16], ttl_secs: u64) -> Result<Answer, String> {
    Ok(Answer::Instances {
        instances: ports
            .iter()
            .map(|p| (addr(*p), Placement::default()))
            .collect(),
        ttl: Duration::from_secs(ttl_secs),
    })
}

struct Harness {
    updates: mpsc::Receiver<Update>,
    asked: mpsc::UnboundedReceiver<Instant>,
    refresh: Arc<Notify>,
    start: Instant,
}

impl Harness {
    fn start(answers: Vec<Result<Answer, String>>) -> Self {
        let (asked_tx, asked) = mpsc::unbounded_channel();
        let (tx, updates) = mpsc::channel(16);
        let refresh = Arc::new(Notify::new());
        let lookup = Scripted {
            answers: answers.into(),
            asked: asked_tx,
        };
        tokio::spawn(run(lookup, SCHEDULE, refresh.clone(), tx));
        Self {
            updates,
            asked,
            refresh,
            start: Instant::now(),
        }
    }

    /// The updates of the next lookup, up to and including its status, and when it was made.
    async fn next_lookup(&mut self) -> (Duration, Vec<Update>) {
        let at = self.asked.recv().await.expect("a lookup") - self.start;
        let mut updates = Vec::new();
        loop {
            let update = self.updates.recv().await.expect("an update");
            let done = matches!(update, Update::Status(_));
            updates.push(update);
            if done {
                return (at, updates);
            }
        }
    }
}

fn sorted(mut updates: Vec<Update>) -> Vec<Update> {
    updates.sort_by_key(|u| format!("{u:?}"));
    updates
}

#[tokio::test(start_paused = true)]
async fn answers_are_diffed_into_changes_and_refreshed_by_ttl() {
    let mut h = Harness::start(vec![
        instances(&[1, 2], 5),
        instances(&[2, 3], 5),
        instances(&[2, 3], 60),
    ]);

    let (at, updates) = h.next_lookup().await;
    assert_eq!(at, Duration::ZERO);
    assert_eq!(
        sorted(updates),
        sorted(vec![
            Update::Insert(addr(1), Placement::default()),
            Update::Insert(addr(2), Placement::default()),
            Update::Status(DiscoveryStatus::Resolved { instances: 2 }),
        ])
    );

    let (at, updates) = h.next_lookup().await;
    assert_eq!(
        at,
        Duration::from_secs(5),
        "the TTL decides the next lookup"
    );
    assert_eq!(
        updates,
        vec![
            // Insertions first: an answer that replaces every address never leaves the set
            // empty between the two.
            Update::Insert(addr(3), Placement::default()),
            Update::Remove(addr(1)),
            Update::Status(DiscoveryStatus::Resolved { instances: 2 }),
        ]
    );

    let (at, updates) = h.next_lookup().await;
    assert_eq!(at, Duration::from_secs(10));
    assert_eq!(
        updates,
        vec![Update::Status(DiscoveryStatus::Resolved { instances: 2 })],
        "nothing changed"
    );

    let (at, _) = h.next_lookup().await;
    assert_eq!(
        at,
        Duration::from_secs(40),
        "a TTL of 60 s is capped at the 30 s ceiling"
    );
}

#[tokio::test(start_paused = true)]
async fn a_ttl_of_zero_refreshes_at_the_floor() {
    let mut h = Harness::start(vec![instances(&[1], 0), instances(&[1], 0)]);
    h.next_lookup().await;
    let (at, _) = h.next_lookup().await;
    assert_eq!(at, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn failures_keep_the_instances_and_retry_with_backoff() {
    let mut h = Harness::start(vec![
        instances(&[1], 5),
        Err("timed out".into()),
        Err("SERVFAIL".into()),
        instances(&[1], 5),
    ]);
    h.next_lookup().await;

    let (at, updates) = h.next_lookup().await;
    assert_eq!(at, Duration::from_secs(5));
    assert_eq!(
        updates,
        vec![Update::Status(DiscoveryStatus::Failing {
            error: "timed out".into(),
            instances: 1
        })],
        "no instance is removed"
    );
    let (at, _) = h.next_lookup().await;
    assert_eq!(at, Duration::from_millis(5250));
    let (at, updates) = h.next_lookup().await;
    assert_eq!(at, Duration::from_millis(5750), "the pause doubles");
    assert_eq!(
        updates,
        vec![Update::Status(DiscoveryStatus::Resolved { instances: 1 })]
    );
}

#[tokio::test(start_paused = true)]
async fn an_authoritative_empty_answer_removes_every_instance() {
    let nxdomain = Ok(Answer::NoInstances {
        reason: "NXDOMAIN".into(),
    });
    let mut h = Harness::start(vec![instances(&[1, 2], 5), nxdomain]);
    h.next_lookup().await;
    let (_, updates) = h.next_lookup().await;
    assert_eq!(
        sorted(updates),
        sorted(vec![
            Update::Remove(addr(1)),
            Update::Remove(addr(2)),
            Update::Status(DiscoveryStatus::NoInstances {
                reason: "NXDOMAIN".into()
            }),
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn a_refresh_request_looks_again_promptly_but_at_most_once_per_floor() {
    let mut h = Harness::start(vec![
        instances(&[1], 30),
        instances(&[1], 30),
        instances(&[1], 30),
    ]);
    h.next_lookup().await;

    // Asked at once: the floor since the last lookup has not passed, so it waits for it.
    h.refresh.notify_one();
    let (at, _) = h.next_lookup().await;
    assert_eq!(at, Duration::from_secs(1));

    tokio::time::sleep(Duration::from_secs(10)).await;
    h.refresh.notify_one();
    let (at, _) = h.next_lookup().await;
    assert_eq!(
        at,
        Duration::from_secs(11),
        "long after the floor, the lookup is immediate"
    );
}

#[tokio::test(start_paused = true)]
async fn the_loop_ends_when_its_consumer_goes() {
    let (asked_tx, _asked) = mpsc::unbounded_channel();
    let (tx, updates) = mpsc::channel(16);
    let lookup = Scripted {
        answers: vec![instances(&[1], 5)].into(),
        asked: asked_tx,
    };
    let task = tokio::spawn(run(lookup, SCHEDULE, Arc::new(Notify::new()), tx));
    drop(updates);
    task.await.unwrap();
}
