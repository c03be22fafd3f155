//! One subscription: one event RPC on one producer instance, from connect to stop. The
//! [`InstanceStream`] subscribes through its [`Source`], claims the producer in the book, has
//! its [`Reader`] read until the stream ends, breaks, goes quiet or the observer stops, and
//! resubscribes after the last event handled (with backoff when it failed).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::watch;
use tokio::time::Instant;

use super::book::Claim;
use super::control::{Instance, Shared, Typed};
use super::handling::Handler;
use super::read::{Ended, Reader};
use super::subscribe::{Source, Subscribed};
use crate::backoff::Backoff;
use crate::v1::{Acknowledgement, Subscribe};

pub(crate) struct InstanceStream<T, H> {
    /// Tells this stream apart from the others of the observer in the book.
    id: u64,
    source: Arc<dyn Source<T>>,
    /// Whether a consumer group member's subscription went through once.
    joined: bool,
    reader: Reader<T, H>,
}

impl<T, H> InstanceStream<T, H>
where
    T: Message + Default + Clone + Send + Sync + 'static,
    H: Handler<T>,
{
    pub(crate) fn new(
        typed: &Typed<T, H>,
        instance: Arc<str>,
        source: Arc<dyn Source<T>>,
        shared: Arc<Shared>,
        control: watch::Receiver<Instance>,
    ) -> Self {
        static STREAMS: AtomicU64 = AtomicU64::new(1);
        Self {
            id: STREAMS.fetch_add(1, Ordering::Relaxed),
            source,
            joined: false,
            reader: Reader::new(typed, instance, shared, control),
        }
    }

    pub(crate) async fn run(mut self) {
        let options = self.reader.shared.options.clone();
        let mut backoff = Backoff::new(options.reconnect_backoff, options.reconnect_backoff_max);
        loop {
            let retired = match *self.reader.control.borrow() {
                Instance::Active => false,
                Instance::Retired(until) => Instant::now() >= until,
                Instance::Stopped => break,
            };
            if retired {
                return;
            }
            let ended = self.subscribe_once().await;
            let retired = matches!(*self.reader.control.borrow(), Instance::Retired(_));
            match ended {
                Ended::Left => return,
                Ended::Stopped => break,
                // Cut off while the producer drains: what it still holds is ours to read.
                Ended::Resubscribe => backoff.reset(),
                // Gone from discovery, and the stream is over: never subscribe again.
                Ended::Failed(_) | Ended::Duplicate if retired => return,
                Ended::Duplicate => {
                    if self.wait_for_release().await {
                        break;
                    }
                }
                Ended::Failed(error) => {
                    let pause = backoff.next_pause();
                    tracing::debug!(instance = %self.reader.instance, rpc = self.reader.rpc, %error, ?pause, "subscription failed; retrying");
                    if self.sleep_unless_told(pause).await {
                        break;
                    }
                }
            }
        }
        // Stopped between streams: a member that joined leaves over a new connection, so that
        // its unacknowledged events go to the others at once rather than after its lease.
        if let (Some(group), true) = (&options.group, self.joined) {
            let member = self.acknowledgement(group);
            self.source.leave(member, self.reader.progress.cursor).await;
        }
    }

    /// This observer's name in the consumer group on this producer instance: one per
    /// instance, so that an instance reachable at two addresses sees two members, not one
    /// member whose streams keep taking over from each other.
    fn member_name(&self) -> String {
        format!("{}@{}", self.reader.shared.member, self.reader.instance)
    }

    /// An acknowledgement of this stream's group member, to fill in.
    fn acknowledgement(&self, group: &str) -> Acknowledgement {
        Acknowledgement {
            rpc: self.reader.rpc.to_owned(),
            group: group.to_owned(),
            member: self.member_name(),
            ..Acknowledgement::default()
        }
    }

    fn plain(&self) -> bool {
        self.reader.plain()
    }

    /// Sleeps; returns whether the observer stopped meanwhile. A change of the instance's
    /// state (retired, back in discovery) ends the pause early.
    async fn sleep_unless_told(&mut self, pause: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = self.reader.control.changed() => {}
        }
        *self.reader.control.borrow() == Instance::Stopped
    }

    /// Waits until the stream that reads this producer lets go (or the instance's state
    /// changes); returns whether the observer stopped meanwhile.
    async fn wait_for_release(&mut self) -> bool {
        let book = &self.reader.shared.book;
        tokio::select! {
            () = book.released() => {}
            _ = self.reader.control.changed() => {}
            // In case the release came between the claim and this wait.
            () = tokio::time::sleep(self.reader.shared.options.heartbeat) => {}
        }
        *self.reader.control.borrow() == Instance::Stopped
    }

    /// Subscribes, after the cursor the book holds for this address.
    async fn subscribe(&mut self) -> Result<Subscribed<T>, Ended> {
        let options = &self.reader.shared.options;
        if self.plain() {
            if self.reader.shared.book.read_elsewhere(
                self.reader.rpc,
                &self.reader.instance,
                self.id,
            ) {
                return Err(Ended::Duplicate);
            }
            self.reader.progress.cursor = self
                .reader
                .shared
                .book
                .resume_after(self.reader.rpc, &self.reader.instance);
        }
        // A group member's cursor names an event in delivery order, which a rejoin can change:
        // sent once, so that a later subscription cannot acknowledge an event delivered anew
        // since (at worst, what it handled comes again).
        let after = if self.plain() {
            self.reader.progress.cursor
        } else {
            self.reader.progress.cursor.take()
        };
        let request = Subscribe {
            after,
            start: options.start as i32,
            start_time_unix_micros: options
                .start_time
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| {
                    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
                }),
            heartbeat_interval_ms: u32::try_from(options.heartbeat.as_millis()).unwrap_or(u32::MAX),
            group: options.group.clone().unwrap_or_default(),
            member: options
                .group
                .as_ref()
                .map(|_| self.member_name())
                .unwrap_or_default(),
            lease_ms: u32::try_from(options.member_lease.as_millis()).unwrap_or(u32::MAX),
            max_unacknowledged: options.max_unacknowledged,
            filter: self.reader.filter.clone(),
        };
        let member = options
            .group
            .as_ref()
            .map(|group| self.acknowledgement(group));
        let mut control = self.reader.control.clone();
        tokio::select! {
            subscribed = self.source.subscribe(request, member) => subscribed.map_err(Ended::Failed),
            _ = control.wait_for(|state| *state == Instance::Stopped) => Err(Ended::Stopped),
        }
    }

    async fn subscribe_once(&mut self) -> Ended {
        let subscribed = match self.subscribe().await {
            Ok(subscribed) => subscribed,
            Err(ended) => return ended,
        };
        let claimed = match (self.plain(), subscribed.epoch) {
            (true, Some(epoch)) => {
                let claim = self.reader.shared.book.claim(
                    self.reader.rpc,
                    &self.reader.instance,
                    epoch,
                    self.id,
                    self.reader.progress.cursor,
                    subscribed.start_after,
                );
                match claim {
                    Claim::Read { after, ahead } => {
                        self.reader.progress.resume(epoch, after, ahead);
                        if let Some(start) =
                            after.filter(|after| Some(after.sequence) == subscribed.start_after)
                        {
                            // The producer chose where this stream starts (the live end, the
                            // oldest retained, past a gap): a restart resumes there too, not
                            // at its own start position again.
                            self.reader.progress.started_after(start);
                        }
                        Some(epoch)
                    }
                    Claim::Duplicate => return Ended::Duplicate,
                    Claim::Resubscribe => return Ended::Resubscribe,
                }
            }
            _ => None,
        };
        tracing::debug!(instance = %self.reader.instance, rpc = self.reader.rpc, cursor = ?self.reader.progress.cursor, "subscribed");
        if subscribed.membership.is_some() {
            // The subscription acknowledged everything up to the cursor. From here the cursor
            // is the last event handled on this stream: events come in delivery order, and an
            // older cursor could name an event delivered again later, acknowledging the events
            // delivered before it unhandled.
            self.joined = true;
            self.reader.progress.cursor = None;
        }
        if self.reader.filter.is_some() && !subscribed.filtered {
            tracing::warn!(instance = %self.reader.instance, rpc = self.reader.rpc, "the producer does not apply filters (a meshless older than filters): every event comes, the handler gets them all");
        }
        self.reader.producer_filters = subscribed.filtered;
        let ended = self
            .reader
            .read(subscribed.events, subscribed.membership)
            .await;
        match (claimed, self.reader.progress.cursor) {
            (Some(epoch), handled) => {
                let ahead = self.reader.progress.ahead_of(epoch);
                self.reader
                    .shared
                    .book
                    .release(self.reader.rpc, epoch, self.id, handled, ahead);
            }
            (None, Some(handled)) if self.plain() => {
                self.reader
                    .shared
                    .book
                    .record(self.reader.rpc, &self.reader.instance, handled);
            }
            _ => {}
        }
        ended
    }
}
