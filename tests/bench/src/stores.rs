//! The durable log's store, against embedded stores a user might pick instead (`--only
//! stores`): redb (a copy-on-write B-tree) and fjall (an LSM tree), each used the way the
//! event log needs, with the same 64 B events keyed by sequence.
//!
//! - "crash-safe append": one event at a time, in the strongest mode that costs no sync where
//!   the store has one (the meshless log: written to its file; fjall: its journal flushed to the
//!   operating system; redb has none: a commit survives a crash only with a sync).
//! - "durable, 64 per sync": batches of 64 events made durable together (group commit).
//! - "read 10000 by cursor": the retained events from a sequence on.
//! - "reopen 1000000": opening the store holding 1,000,000 events and reading the last 10,000.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use meshless::events::PublisherSettings;

use crate::proto::mesh::testing::v1 as mesh;
use crate::Bench;

const TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("events");

struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Self {
        Self(std::env::temp_dir().join(format!("meshless-bench-{what}-{}", std::process::id())))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

fn payload() -> Vec<u8> {
    vec![b'x'; 64]
}

fn per_second(count: u64, took: Duration) -> f64 {
    count as f64 / took.as_secs_f64()
}

fn row(name: &str, what: &str, value: String) {
    println!("  {name:<22} {what:<34} {value}");
}

pub async fn section(bench: &Bench) {
    let appends: u64 = if bench.quick { 20_000 } else { 100_000 };
    let synced_appends: u64 = if bench.quick { 200 } else { 1_000 };
    let big: u64 = if bench.quick { 100_000 } else { 1_000_000 };
    println!(
        "Event stores, 64 B events keyed by sequence (in {})",
        std::env::temp_dir().display()
    );

    // meshless's segment log, through the publisher.
    {
        let dir = Scratch::new("store-log");
        let settings = PublisherSettings::default().retain("Echoed", big as usize);
        let publisher =
            mesh::EchoPublisher::open_with_settings(&dir.0, settings.clone()).expect("open");
        let event = || mesh::EchoedEvent {
            message: "x".repeat(60),
        };
        let started = Instant::now();
        for _ in 0..appends {
            publisher.publish_echoed(event()).expect("publish");
        }
        row(
            "meshless segment log",
            "crash-safe append",
            format!("{:.0} events/s", per_second(appends, started.elapsed())),
        );
        let started = Instant::now();
        let batches = synced_appends / 64 + 1;
        for _ in 0..batches {
            // 63 written, and the 64th's durable publish syncs them all.
            for _ in 0..63 {
                publisher.publish_echoed(event()).expect("publish");
            }
            publisher
                .publish_echoed_durable(event())
                .await
                .expect("durable publish");
        }
        row(
            "meshless segment log",
            "durable, 64 per sync",
            format!(
                "{:.0} events/s",
                per_second(batches * 64, started.elapsed())
            ),
        );
        for _ in appends + batches * 64..big {
            publisher.publish_echoed(event()).expect("publish");
        }
        drop(publisher);
        let started = Instant::now();
        let reopened = mesh::EchoPublisher::open_with_settings(&dir.0, settings).expect("reopen");
        row(
            "meshless segment log",
            &format!("reopen {big}"),
            format!(
                "{:.2} s (every record read and checked)",
                started.elapsed().as_secs_f64()
            ),
        );
        row(
            "meshless segment log",
            "read 10000 by cursor",
            "from memory (the retained events are kept there too)".to_owned(),
        );
        drop(reopened);
    }

    // redb: every commit that must survive a crash is synced.
    {
        let file = Scratch::new("store-redb");
        let db = redb::Database::create(&file.0).expect("redb");
        let value = payload();
        let count = synced_appends;
        let started = Instant::now();
        for sequence in 1..=count {
            let txn = db.begin_write().expect("txn");
            {
                let mut table = txn.open_table(TABLE).expect("table");
                table.insert(sequence, value.as_slice()).expect("insert");
            }
            txn.commit().expect("commit");
        }
        row(
            "redb 2",
            "crash-safe append (synced commit)",
            format!("{:.0} events/s", per_second(count, started.elapsed())),
        );
        let started = Instant::now();
        let mut sequence = count;
        let batches = synced_appends / 64 + 1;
        for _ in 0..batches {
            let txn = db.begin_write().expect("txn");
            {
                let mut table = txn.open_table(TABLE).expect("table");
                for _ in 0..64 {
                    sequence += 1;
                    table.insert(sequence, value.as_slice()).expect("insert");
                }
            }
            txn.commit().expect("commit");
        }
        row(
            "redb 2",
            "durable, 64 per sync",
            format!(
                "{:.0} events/s",
                per_second(batches * 64, started.elapsed())
            ),
        );
        while sequence < big {
            let txn = db.begin_write().expect("txn");
            {
                let mut table = txn.open_table(TABLE).expect("table");
                for _ in 0..10_000 {
                    sequence += 1;
                    table.insert(sequence, value.as_slice()).expect("insert");
                }
            }
            txn.commit().expect("commit");
        }
        let started = Instant::now();
        let read = db.begin_read().expect("read");
        let table = read.open_table(TABLE).expect("table");
        let mut bytes = 0;
        for item in table.range(sequence - 10_000..).expect("range") {
            bytes += item.expect("item").1.value().len();
        }
        row(
            "redb 2",
            "read 10000 by cursor",
            format!(
                "{:.1} ms ({bytes} bytes)",
                started.elapsed().as_secs_f64() * 1000.0
            ),
        );
        drop((table, read, db));
        let started = Instant::now();
        let db = redb::Database::create(&file.0).expect("redb");
        let read = db.begin_read().expect("read");
        let table = read.open_table(TABLE).expect("table");
        let last = table.range(sequence - 10_000..).expect("range").count();
        row(
            "redb 2",
            &format!("reopen {big}"),
            format!(
                "{:.2} s (and the last {last} read)",
                started.elapsed().as_secs_f64()
            ),
        );
    }

    // fjall: its journal flushed to the operating system per event, synced per batch.
    {
        let dir = Scratch::new("store-fjall");
        let keyspace = fjall::Config::new(&dir.0).open().expect("fjall");
        let events = keyspace
            .open_partition("events", fjall::PartitionCreateOptions::default())
            .expect("partition");
        let value = payload();
        let started = Instant::now();
        for sequence in 1..=appends {
            events
                .insert(sequence.to_be_bytes(), value.as_slice())
                .expect("insert");
            keyspace
                .persist(fjall::PersistMode::Buffer)
                .expect("persist");
        }
        row(
            "fjall 2",
            "crash-safe append (journal flushed)",
            format!("{:.0} events/s", per_second(appends, started.elapsed())),
        );
        let started = Instant::now();
        let mut sequence = appends;
        let batches = synced_appends / 64 + 1;
        for _ in 0..batches {
            for _ in 0..64 {
                sequence += 1;
                events
                    .insert(sequence.to_be_bytes(), value.as_slice())
                    .expect("insert");
            }
            keyspace
                .persist(fjall::PersistMode::SyncData)
                .expect("persist");
        }
        row(
            "fjall 2",
            "durable, 64 per sync",
            format!(
                "{:.0} events/s",
                per_second(batches * 64, started.elapsed())
            ),
        );
        while sequence < big {
            sequence += 1;
            events
                .insert(sequence.to_be_bytes(), value.as_slice())
                .expect("insert");
        }
        keyspace
            .persist(fjall::PersistMode::SyncAll)
            .expect("persist");
        let started = Instant::now();
        let mut bytes = 0;
        for item in events.range((sequence - 10_000).to_be_bytes()..) {
            bytes += item.expect("item").1.len();
        }
        row(
            "fjall 2",
            "read 10000 by cursor",
            format!(
                "{:.1} ms ({bytes} bytes)",
                started.elapsed().as_secs_f64() * 1000.0
            ),
        );
        drop((events, keyspace));
        let started = Instant::now();
        let keyspace = fjall::Config::new(&dir.0).open().expect("fjall");
        let events = keyspace
            .open_partition("events", fjall::PartitionCreateOptions::default())
            .expect("partition");
        let last = events.range((sequence - 10_000).to_be_bytes()..).count();
        row(
            "fjall 2",
            &format!("reopen {big}"),
            format!(
                "{:.2} s (and the last {last} read)",
                started.elapsed().as_secs_f64()
            ),
        );
    }
    println!();
}
