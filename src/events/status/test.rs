//! The admin status of a publisher's event RPCs, gathered from publishers made as services
//! make them, with subscribers and group members that come through `Publisher::subscribe`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::transport::server::TcpConnectInfo;

use crate::admin::v1::{EventRpcStatus, GroupMemberStatus, GroupStatus, SubscriberStatus};
use crate::events::stream::EventStream;
use crate::events::{EventRpc, Publisher, PublisherSettings};
use crate::keys::{KeyKind, KeyPath};
use crate::peer::PeerIdentity;
use crate::v1::{Acknowledgement, Cursor, StartPosition, Subscribe};

const SERVICE: &str = "test.v1.S";

fn rpc(name: &'static str) -> EventRpc {
    EventRpc {
        name,
        retain: 0,
        key: None,
        compact_by_key: false,
        event: ".meshless.v1.Cursor",
        descriptors: &[],
    }
}

/// An event RPC whose events are `Cursor` messages keyed by their `sequence` field.
fn keyed(name: &'static str) -> EventRpc {
    EventRpc {
        key: Some(KeyPath {
            fields: &[2],
            kind: KeyKind::Uint64,
        }),
        ..rpc(name)
    }
}

fn publish(publisher: &Publisher, rpc: usize, count: u64, key: u64) {
    for _ in 0..count {
        publisher
            .publish(
                rpc,
                &Cursor {
                    epoch: 0,
                    sequence: key,
                },
            )
            .unwrap();
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// Subscribes as a request from `peer` (if given, as a server hands it in) would.
fn subscribe(
    publisher: &Publisher,
    rpc: usize,
    subscribe: Subscribe,
    peer: Option<SocketAddr>,
    identity: Option<&PeerIdentity>,
) -> EventStream<Cursor> {
    let mut request = tonic::Request::new(subscribe);
    if let Some(peer) = peer {
        request.extensions_mut().insert(TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(peer),
        });
    }
    if let Some(identity) = identity {
        request.extensions_mut().insert(identity.clone());
    }
    publisher.subscribe(rpc, request).unwrap().into_inner()
}

fn member(name: &str) -> Subscribe {
    Subscribe {
        group: "g".into(),
        member: name.into(),
        max_unacknowledged: 10,
        lease_ms: 30_000,
        ..Subscribe::default()
    }
}

fn the(statuses: &[EventRpcStatus], rpc: &str) -> EventRpcStatus {
    statuses
        .iter()
        .find(|status| status.rpc == rpc)
        .unwrap_or_else(|| panic!("no status of {rpc} in {statuses:?}"))
        .clone()
}

#[tokio::test]
async fn plain_subscribers_show_their_cursor_and_lag_and_rpcs_come_by_path() {
    let publisher = Publisher::new(SERVICE, &[rpc("B"), rpc("A")], PublisherSettings::default());
    publish(&publisher, 0, 10, 0);
    let mut oldest = subscribe(
        &publisher,
        0,
        Subscribe::default(),
        Some(addr("10.0.0.7:50051")),
        None,
    );
    // Events 1 to 4 handed out.
    for _ in 1..=4 {
        oldest.next().await.unwrap().unwrap();
    }
    // Told it starts after 10, the latest: nothing to catch up on.
    let live = subscribe(
        &publisher,
        0,
        Subscribe {
            start: StartPosition::Live as i32,
            ..Subscribe::default()
        },
        None,
        None,
    );

    let statuses = publisher.admin_status();
    let paths: Vec<&str> = statuses.iter().map(|s| s.rpc.as_str()).collect();
    assert_eq!(paths, ["/test.v1.S/A", "/test.v1.S/B"]);
    assert_eq!(
        statuses[1],
        EventRpcStatus {
            rpc: "/test.v1.S/B".into(),
            epoch: publisher.epoch(),
            first_sequence: 1,
            last_sequence: 10,
            storage: "memory".into(),
            bytes_on_disk: 0,
            subscribers: vec![
                SubscriberStatus {
                    peer: "10.0.0.7:50051".into(),
                    cursor: 4,
                    lag: 6,
                },
                SubscriberStatus {
                    peer: String::new(),
                    cursor: 10,
                    lag: 0,
                },
            ],
            subscribers_cut_off: 0,
            groups: Vec::new(),
            last_error: String::new(),
            compacted_keys: 0,
        }
    );
    assert_eq!(
        (statuses[0].first_sequence, statuses[0].last_sequence),
        (0, 0),
        "nothing published: no sequence"
    );

    drop(oldest);
    let after = the(&publisher.admin_status(), "/test.v1.S/B");
    assert_eq!(
        after.subscribers.len(),
        1,
        "a stream that ended is no longer listed"
    );
    assert_eq!(after.subscribers[0].cursor, 10);
    drop(live);
    assert!(the(&publisher.admin_status(), "/test.v1.S/B")
        .subscribers
        .is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_group_shows_what_each_member_has_out_and_how_far_it_is_acknowledged() {
    let publisher = Publisher::new(
        SERVICE,
        &[rpc("E"), keyed("K")],
        PublisherSettings::default(),
    );
    let billing = PeerIdentity::new("billing");
    let _a = subscribe(
        &publisher,
        0,
        member("a"),
        Some(addr("10.0.0.1:1001")),
        Some(&billing),
    );
    let _b = subscribe(
        &publisher,
        0,
        member("b"),
        Some(addr("10.0.0.2:1002")),
        None,
    );
    let group = |rpc: &str| {
        let mut status = the(&publisher.admin_status(), rpc);
        assert_eq!(status.groups.len(), 1, "{status:?}");
        status.groups.remove(0)
    };
    let numbers = |group: &GroupStatus| {
        (
            group.unacknowledged,
            group.held_keys,
            group.acknowledged_through,
            group.lag,
        )
    };
    let acknowledgement = |rpc: &str, member: &str, sequence: u64| Acknowledgement {
        rpc: rpc.into(),
        group: "g".into(),
        member: member.into(),
        handled: Some(Cursor {
            epoch: publisher.epoch(),
            sequence,
        }),
        ..Acknowledgement::default()
    };

    // The least loaded member first, turn about: `a` has 1 and 3 out, `b` 2 and 4.
    publish(&publisher, 0, 4, 0);
    assert_eq!(
        group("/test.v1.S/E"),
        GroupStatus {
            name: "g".into(),
            members: vec![
                GroupMemberStatus {
                    peer: "10.0.0.1:1001".into(),
                    identity: "billing".into(),
                    lease_ms: 30_000,
                    unacknowledged: 2,
                    member: "a".into(),
                },
                GroupMemberStatus {
                    peer: "10.0.0.2:1002".into(),
                    identity: String::new(),
                    lease_ms: 30_000,
                    unacknowledged: 2,
                    member: "b".into(),
                },
            ],
            unacknowledged: 4,
            held_keys: 0,
            acknowledged_through: 0,
            lag: 4,
            last_acknowledgement_ms_ago: None,
        }
    );

    // `a` handled 3 (and 1 before it): 2 is still out, so everything through 1 is
    // acknowledged, and 3 out of order.
    let ack = acknowledgement("/test.v1.S/E", "a", 3);
    publisher
        .acknowledge(&ack, Some(&billing))
        .unwrap()
        .unwrap();
    tokio::time::advance(Duration::from_millis(1500)).await;
    let status = group("/test.v1.S/E");
    let out: Vec<u64> = status.members.iter().map(|m| m.unacknowledged).collect();
    assert_eq!(out, [0, 2]);
    assert_eq!(numbers(&status), (2, 0, 1, 2));
    assert_eq!(status.last_acknowledgement_ms_ago, Some(1500));

    // `b` handled 2 and 4: everything is acknowledged.
    let ack = acknowledgement("/test.v1.S/E", "b", 4);
    publisher.acknowledge(&ack, None).unwrap().unwrap();
    assert_eq!(numbers(&group("/test.v1.S/E")), (0, 0, 4, 0));

    // With keys: 1 (key 7) and 3 (key 8) go out, 2 (key 7 again) waits for 1.
    let _c = subscribe(&publisher, 1, member("c"), None, None);
    for key in [7, 7, 8] {
        publish(&publisher, 1, 1, key);
    }
    let status = group("/test.v1.S/K");
    assert_eq!(numbers(&status), (2, 2, 0, 3));
    assert_eq!(status.last_acknowledgement_ms_ago, None);
    // Once 1 is handled, 2 goes out.
    let ack = acknowledgement("/test.v1.S/K", "c", 1);
    publisher.acknowledge(&ack, None).unwrap().unwrap();
    assert_eq!(numbers(&group("/test.v1.S/K")), (2, 2, 1, 2));
}

/// A directory of its own, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("meshless-status-{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The sizes of the files under `dir`, at any depth, added up.
fn size_under(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .map(|path| {
            if path.is_dir() {
                size_under(&path)
            } else {
                std::fs::metadata(&path).unwrap().len()
            }
        })
        .sum()
}

#[tokio::test]
async fn a_publisher_in_files_shows_the_size_of_its_log() {
    let scratch = Scratch::new();
    let publisher = Publisher::open(
        SERVICE,
        &[rpc("E")],
        PublisherSettings::default(),
        &scratch.0,
    )
    .unwrap();
    publish(&publisher, 0, 49, 0);
    publisher
        .publish_durable(
            0,
            &Cursor {
                epoch: 0,
                sequence: 0,
            },
        )
        .await
        .unwrap();

    let status = the(&publisher.admin_status(), "/test.v1.S/E");
    assert_eq!(status.storage, "files");
    assert_eq!((status.first_sequence, status.last_sequence), (1, 50));
    assert!(status.bytes_on_disk > 0);
    assert_eq!(status.bytes_on_disk, size_under(&scratch.0.join("E")));
    assert_eq!(status.last_error, "");
    drop(publisher);
}

#[tokio::test]
async fn a_subscriber_cut_off_for_falling_behind_is_counted() {
    let mut settings = PublisherSettings::default();
    settings.subscriber_buffer = 8;
    let publisher = Publisher::new(SERVICE, &[rpc("E")], settings);
    let mut slow = subscribe(
        &publisher,
        0,
        Subscribe {
            start: StartPosition::Live as i32,
            ..Subscribe::default()
        },
        None,
        None,
    );
    publish(&publisher, 0, 20, 0);
    let before = the(&publisher.admin_status(), "/test.v1.S/E");
    assert_eq!(
        (before.subscribers[0].cursor, before.subscribers[0].lag),
        (0, 20)
    );
    assert_eq!(before.subscribers_cut_off, 0);

    let ended = slow.next().await.unwrap().unwrap_err();
    assert_eq!(ended.code(), tonic::Code::ResourceExhausted);
    drop(slow);
    let after = the(&publisher.admin_status(), "/test.v1.S/E");
    assert_eq!(after.subscribers_cut_off, 1);
    assert!(after.subscribers.is_empty());
}
