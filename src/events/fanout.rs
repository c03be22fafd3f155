//! Waking plain subscribers: the streams that have read everything in the log register here,
//! and each new event wakes them all, once.
//!
//! Registrations are counted in rounds (one per wake-up), so that a stream polled twice while
//! it waits is not registered twice, and one that ends while it waits takes its waker out: a
//! waker keeps its task's memory alive.

use std::task::Waker;

/// The plain streams waiting for the next event.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    waiting: Vec<(u64, Waker)>,
    round: u64,
    /// An empty list with room, swapped in when `waiting` is taken.
    spare: Vec<(u64, Waker)>,
}

/// Streams taken to be woken, outside the hub's lock.
pub(crate) type Woken = Vec<(u64, Waker)>;

impl Waiters {
    /// Registers stream `stream` to be woken, unless it is already, in this round
    /// (`registered` is the round it registered in).
    pub(crate) fn register(&mut self, stream: u64, registered: &mut Option<u64>, waker: &Waker) {
        if *registered != Some(self.round) {
            self.waiting.push((stream, waker.clone()));
            *registered = Some(self.round);
        }
    }

    /// Takes stream `stream` out, when it registered in `round` and that round is not over.
    pub(crate) fn unregister(&mut self, stream: u64, round: u64) {
        if self.round == round {
            if let Some(at) = self.waiting.iter().position(|(s, _)| *s == stream) {
                self.waiting.swap_remove(at);
            }
        }
    }

    /// Takes every waiting stream, to wake once the lock is released; a new round starts.
    pub(crate) fn take(&mut self) -> Woken {
        self.round += 1;
        let spare = std::mem::take(&mut self.spare);
        std::mem::replace(&mut self.waiting, spare)
    }

    /// Gives back a list [`wake`] emptied, so that the next round allocates nothing.
    pub(crate) fn recycle(&mut self, emptied: Woken) {
        if self.spare.capacity() < emptied.capacity() {
            self.spare = emptied;
        }
    }
}

/// Wakes the streams taken; returns the emptied list, to [`Waiters::recycle`].
pub(crate) fn wake(mut woken: Woken) -> Woken {
    for (_, waker) in woken.drain(..) {
        waker.wake();
    }
    woken
}

#[cfg(test)]
mod test {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn each_waiting_stream_is_woken_once_per_event_and_one_that_ended_not_at_all() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut waiters = Waiters::default();
        let (mut a, mut b) = (None, None);
        waiters.register(1, &mut a, &waker);
        waiters.register(1, &mut a, &waker);
        waiters.register(2, &mut b, &waker);
        waiters.unregister(2, b.unwrap());
        let emptied = wake(waiters.take());
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        waiters.recycle(emptied);
        // A new round: registering again works, and a stale unregister changes nothing.
        waiters.register(1, &mut a, &waker);
        waiters.unregister(2, 0);
        wake(waiters.take());
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
    }
}
