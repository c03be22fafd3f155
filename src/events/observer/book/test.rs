use super::*;

const RPC: &str = "/test.v1.S/E";

fn at(address: &str) -> Arc<str> {
    address.into()
}

fn cursor(epoch: u64, sequence: u64) -> Option<Cursor> {
    Some(Cursor { epoch, sequence })
}

#[test]
fn a_producer_back_at_its_address_resumes_after_the_last_event_handled() {
    let book = Book::default();
    assert_eq!(book.resume_after(RPC, &at("a")), None);
    assert_eq!(
        book.claim(RPC, &at("a"), 7, 1, None, Some(0)),
        Claim::Read {
            after: cursor(7, 0),
            ahead: BTreeSet::new(),
        }
    );
    book.release(RPC, 7, 1, cursor(7, 42), BTreeSet::new());
    assert_eq!(book.resume_after(RPC, &at("a")), cursor(7, 42));
}

#[test]
fn a_producer_at_two_addresses_is_read_once() {
    let book = Book::default();
    assert!(matches!(
        book.claim(RPC, &at("a"), 7, 1, None, Some(0)),
        Claim::Read { .. }
    ));
    assert_eq!(
        book.claim(RPC, &at("b"), 7, 2, None, Some(0)),
        Claim::Duplicate
    );
    assert!(book.read_elsewhere(RPC, &at("b"), 2));
    book.release(RPC, 7, 1, cursor(7, 10), BTreeSet::new());
    assert!(!book.read_elsewhere(RPC, &at("b"), 2));
    // The other address now resumes where the first stream stopped.
    assert_eq!(book.resume_after(RPC, &at("b")), cursor(7, 10));
    assert_eq!(
        book.claim(RPC, &at("b"), 7, 2, cursor(7, 10), None),
        Claim::Read {
            after: cursor(7, 10),
            ahead: BTreeSet::new(),
        }
    );
}

#[test]
fn a_known_producer_met_with_the_wrong_cursor_is_subscribed_again() {
    let book = Book::default();
    book.claim(RPC, &at("a"), 7, 1, None, Some(0));
    book.release(RPC, 7, 1, cursor(7, 5), BTreeSet::new());
    // At a new address, asked without a cursor: the book knows better.
    assert_eq!(
        book.claim(RPC, &at("c"), 7, 3, None, Some(9)),
        Claim::Resubscribe
    );
    assert_eq!(book.resume_after(RPC, &at("c")), cursor(7, 5));
}

#[test]
fn positions_only_move_forward() {
    let book = Book::default();
    book.claim(RPC, &at("a"), 7, 1, None, Some(20));
    book.release(RPC, 7, 1, cursor(7, 3), BTreeSet::new());
    assert_eq!(book.resume_after(RPC, &at("a")), cursor(7, 20));
}

#[test]
fn events_handled_ahead_are_kept_across_streams_until_the_cursor_passes_them() {
    let book = Book::default();
    book.claim(RPC, &at("a"), 7, 1, None, Some(0));
    book.release(RPC, 7, 1, cursor(7, 3), BTreeSet::from([5, 6]));
    assert_eq!(
        book.claim(RPC, &at("a"), 7, 2, cursor(7, 3), Some(3)),
        Claim::Read {
            after: cursor(7, 3),
            ahead: BTreeSet::from([5, 6]),
        }
    );
    book.release(RPC, 7, 2, cursor(7, 5), BTreeSet::new());
    assert_eq!(
        book.claim(RPC, &at("a"), 7, 3, cursor(7, 5), Some(5)),
        Claim::Read {
            after: cursor(7, 5),
            ahead: BTreeSet::from([6]),
        }
    );
}

#[test]
fn stored_cursors_are_all_kept_and_ahead_ones_behind_them_forgotten() {
    let book = Book::default();
    for epoch in 0..(MAX_PRODUCERS as u64 + 10) {
        book.preload(RPC, Cursor { epoch, sequence: 1 });
    }
    book.preload_ahead(
        RPC,
        Cursor {
            epoch: 3,
            sequence: 1,
        },
    );
    book.preload_ahead(
        RPC,
        Cursor {
            epoch: 3,
            sequence: 4,
        },
    );
    // Met without a cursor, the last one stored is known: subscribed again from it.
    let last = MAX_PRODUCERS as u64 + 9;
    assert_eq!(
        book.claim(RPC, &at("a"), last, 1, None, Some(0)),
        Claim::Resubscribe
    );
    assert_eq!(book.resume_after(RPC, &at("a")), cursor(last, 1));
    assert_eq!(
        book.claim(RPC, &at("b"), 3, 2, cursor(3, 1), Some(1)),
        Claim::Read {
            after: cursor(3, 1),
            ahead: BTreeSet::from([4]),
        }
    );
}
