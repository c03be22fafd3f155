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
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text, "/a.v1.S/E 0x7 2\n/a.v1.S/E 0x7 +4\n/a.v1.S/E 0x7 +5\n/a.v1.S/E 0x7 +9\n",
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
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, "/a.v1.S/E 0x7 5\n/a.v1.S/E 0x7 +9\n");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_file_of_an_earlier_version_reads_and_bad_lines_are_refused() {
    let cursors = parse("/a.v1.S/E 0x7 3\n/a.v1.S/E 0x7 +2\n/a.v1.S/E 0x9 +4\n").unwrap();
    let stored = &cursors[&("/a.v1.S/E".to_owned(), 7)];
    assert_eq!(stored.cursor, Some(3));
    assert!(stored.ahead.is_empty(), "behind the cursor");
    let stored = &cursors[&("/a.v1.S/E".to_owned(), 9)];
    assert_eq!((stored.cursor, stored.ahead.len()), (None, 1));
    for bad in ["/a 0x7 +x\n", "/a 0x7 3 4\n", "/a 7 3\n", "/a 0x7\n"] {
        assert!(parse(bad).is_none(), "{bad:?}");
    }
}
