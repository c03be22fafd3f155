use super::*;

#[test]
fn cursors_written_on_flush_read_back() {
    let path = std::env::temp_dir().join(format!("meshless-cursors-{:016x}", fastrand::u64(..)));
    let store = FileCursors::open(&path).unwrap();
    assert!(store.load().unwrap().is_empty());
    let cursor = |epoch, sequence| Cursor { epoch, sequence };
    store.handled("/a.v1.S/E", cursor(7, 3));
    store.handled("/a.v1.S/E", cursor(7, 2));
    store.handled("/a.v1.S/E", cursor(9, 1));
    store.flush();
    let reopened = FileCursors::open(&path).unwrap();
    assert_eq!(
        reopened.load().unwrap(),
        [
            ("/a.v1.S/E".to_owned(), cursor(7, 3)),
            ("/a.v1.S/E".to_owned(), cursor(9, 1))
        ]
    );
    std::fs::write(&path, "not cursors").unwrap();
    assert!(FileCursors::open(&path).is_err());
    let _ = std::fs::remove_file(&path);
}

#[test]
fn events_handled_ahead_are_kept_until_the_cursor_passes_them() {
    let path = std::env::temp_dir().join(format!("meshless-cursors-{:016x}", fastrand::u64(..)));
    let store = FileCursors::open(&path).unwrap();
    let cursor = |epoch, sequence| Cursor { epoch, sequence };
    store.handled("/a.v1.S/E", cursor(7, 2));
    store.handled_ahead("/a.v1.S/E", cursor(7, 5));
    store.handled_ahead("/a.v1.S/E", cursor(7, 4));
    store.handled_ahead("/a.v1.S/E", cursor(7, 9));
    store.handled_ahead("/a.v1.S/E", cursor(7, 1));
    store.flush();
    drop(store);
    // Each line without its time.
    let lines = || -> Vec<String> {
        let text = std::fs::read_to_string(&path).unwrap();
        text.lines()
            .map(|line| {
                line.split_whitespace()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    };
    assert_eq!(
        lines(),
        [
            "/a.v1.S/E 0x7 2",
            "/a.v1.S/E 0x7 +4",
            "/a.v1.S/E 0x7 +5",
            "/a.v1.S/E 0x7 +9"
        ],
        "the one behind the cursor is not kept"
    );
    let reopened = FileCursors::open(&path).unwrap();
    assert_eq!(
        reopened.load().unwrap(),
        [("/a.v1.S/E".to_owned(), cursor(7, 2))]
    );
    assert_eq!(reopened.load_ahead().unwrap().len(), 3);

    // The cursor moves past two of them.
    reopened.handled("/a.v1.S/E", cursor(7, 5));
    reopened.flush();
    assert_eq!(lines(), ["/a.v1.S/E 0x7 5", "/a.v1.S/E 0x7 +9"]);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_file_of_an_earlier_version_reads_and_bad_lines_are_refused() {
    let cursors = parse("/a.v1.S/E 0x7 3\n/a.v1.S/E 0x7 +2\n/a.v1.S/E 0x9 +4\n", 0).unwrap();
    let stored = &cursors[&("/a.v1.S/E".to_owned(), 7)];
    assert_eq!(stored.cursor, Some(3));
    assert!(stored.ahead.is_empty(), "behind the cursor");
    let stored = &cursors[&("/a.v1.S/E".to_owned(), 9)];
    assert_eq!((stored.cursor, stored.ahead.len()), (None, 1));
    for bad in [
        "/a 0x7 +x\n",
        "/a 0x7 3 4 5\n",
        "/a 0x7 +3 4\n",
        "/a 7 3\n",
        "/a 0x7\n",
    ] {
        assert!(parse(bad, 0).is_none(), "{bad:?}");
    }
}

/// Polls `done` every 5 ms, failing the test after 10 s.
fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_file_is_written_behind_the_handler_without_a_flush() {
    let path = std::env::temp_dir().join(format!("meshless-cursors-{:016x}", fastrand::u64(..)));
    let store = FileCursors::open(&path).unwrap();
    store.handled(
        "/a.v1.S/E",
        Cursor {
            epoch: 7,
            sequence: 3,
        },
    );
    eventually("the cursor is in the file", || {
        std::fs::read_to_string(&path).is_ok_and(|text| text.starts_with("/a.v1.S/E 0x7 3"))
    });
    drop(store);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn the_file_keeps_at_most_the_producers_seen_last() {
    let path = std::env::temp_dir().join(format!("meshless-cursors-{:016x}", fastrand::u64(..)));
    let store = FileCursors::open(&path).unwrap();
    let producers = MAX_PRODUCERS as u64 + 904;
    for epoch in 1..=producers {
        store.handled("/a.v1.S/E", Cursor { epoch, sequence: 1 });
    }
    store.flush();
    let cursors = FileCursors::open(&path).unwrap().load().unwrap();
    assert_eq!(cursors.len(), MAX_PRODUCERS);
    // The live producer, seen last, is kept.
    assert!(cursors.iter().any(|(_, cursor)| cursor.epoch == producers));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn the_producers_seen_longest_ago_are_forgotten_first() {
    // Seen at distinct times, in an order unlike the keys' (epochs sort the other way), so
    // that only an eviction by time keeps the right ones.
    let over = 10u64;
    let total = MAX_PRODUCERS as u64 + over;
    let text: String = (1..=total)
        .map(|epoch| format!("/a.v1.S/E {epoch:#x} 1 {}\n", 1_000_000 + (total - epoch)))
        .collect();
    let mut state = State {
        cursors: parse(&text, 0).unwrap(),
        dirty: false,
        closed: false,
    };
    state.forget();
    assert_eq!(state.cursors.len(), MAX_PRODUCERS);
    // The highest epochs were seen longest ago: they go.
    let highest_kept = state.cursors.keys().map(|(_, epoch)| *epoch).max();
    assert_eq!(highest_kept, Some(total - over));
}

#[test]
fn a_producer_that_publishes_nothing_for_long_keeps_its_cursor() {
    let text = "/a.v1.S/E 0x1 5 1\n/a.v1.S/E 0x1 +7\n/a.v1.S/E 0x2 9 2000000000\n";
    let mut state = State {
        cursors: parse(text, 2_000_000_000).unwrap(),
        dirty: false,
        closed: false,
    };
    state.forget();
    let kept: Vec<u64> = state.cursors.keys().map(|(_, epoch)| *epoch).collect();
    assert_eq!(kept, [1, 2]);
}
