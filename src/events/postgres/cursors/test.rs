use super::*;

/// A store that read `cursors` and `handled` records (epoch, sequence), with no writer: what
/// the observer is told, and what is left to write, without a database. Within a runtime.
fn stored(cursors: &[(u64, u64)], handled: &[(u64, u64)]) -> PgCursors {
    let positions = |of: &[(u64, u64)]| -> Vec<Position> {
        of.iter()
            .map(|&(epoch, sequence)| (RPC.to_owned(), epoch, sequence))
            .collect()
    };
    let producers = known(positions(cursors), positions(handled));
    let pool = PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
    PgCursors {
        handle: Arc::new(Handle {
            shared: Arc::new(Shared::new(&pool, "test", producers)),
        }),
    }
}

const RPC: &str = "/a.v1.S/E";

fn at(epoch: u64, sequence: u64) -> (String, Cursor) {
    (RPC.to_owned(), Cursor { epoch, sequence })
}

#[tokio::test]
async fn records_behind_the_stored_cursor_are_not_given_back() {
    let store = stored(&[(7, 10)], &[(7, 9), (7, 10), (7, 12), (7, 14), (8, 2)]);
    assert_eq!(store.load().unwrap(), [at(7, 10)]);
    assert_eq!(
        store.load_ahead().unwrap(),
        [at(7, 12), at(7, 14), at(8, 2)]
    );
}

#[tokio::test]
async fn a_moving_cursor_passes_the_events_ahead_and_is_left_to_write() {
    let store = stored(&[(7, 10)], &[(7, 12), (7, 14)]);
    store.handled_ahead(
        RPC,
        Cursor {
            epoch: 7,
            sequence: 13,
        },
    );
    store.handled_ahead(
        RPC,
        Cursor {
            epoch: 7,
            sequence: 9,
        },
    );
    assert_eq!(
        store.load_ahead().unwrap(),
        [at(7, 12), at(7, 13), at(7, 14)],
        "behind the cursor: not kept"
    );
    store.handled(
        RPC,
        Cursor {
            epoch: 7,
            sequence: 13,
        },
    );
    store.handled(
        RPC,
        Cursor {
            epoch: 7,
            sequence: 11,
        },
    );
    assert_eq!(store.load().unwrap(), [at(7, 13)], "never backwards");
    assert_eq!(store.load_ahead().unwrap(), [at(7, 14)]);
    let moved = store.handle.shared.lock().moved.clone();
    assert_eq!(moved, BTreeMap::from([((RPC.to_owned(), 7), 13)]));
}
