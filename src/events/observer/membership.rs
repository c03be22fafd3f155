//! An observer's membership of a consumer group on one producer instance: acknowledging what
//! was handled, batched, and leaving the group when the observer stops.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::backoff::Backoff;
use crate::extra_metadata::ExtraMetadata;
use crate::v1::event_groups_client::EventGroupsClient;
use crate::v1::{AcknowledgeResponse, Acknowledgement, Cursor};

/// The first and longest pause before an acknowledgement that failed is sent again.
const RETRY_PAUSE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// How long one acknowledgement may take before it is given up and sent again: a producer
/// that takes the call and never answers must not stall the member's acknowledgements.
const ACKNOWLEDGE_TIMEOUT: Duration = Duration::from_secs(10);

/// The membership of one subscription's stream. The background task sends what was handled
/// since its last call whenever there is something, one call at a time, so everything handled
/// while a call is on its way goes with the next one: the latest event handled in delivery
/// order (cumulative), and the events handled out of it (keyed lanes), each on its own.
pub(crate) struct Membership {
    channel: Channel,
    base: Acknowledgement,
    metadata: ExtraMetadata,
    pending: Arc<Pending>,
    task: JoinHandle<()>,
}

/// What is handled and not yet acknowledged.
#[derive(Default)]
struct Pending {
    handled: Mutex<Handled>,
    /// Stores a wake-up when nobody waits, so none is lost.
    added: Notify,
    /// The producer's number of the member's stream (its `meshless-member-connection`
    /// header), sent with every acknowledgement, so that one from an earlier life of the
    /// member is told apart; 0 until known.
    connection: AtomicU64,
}

#[derive(Default)]
struct Handled {
    /// The latest event handled with everything delivered before it; kept once sent, so that
    /// leaving sends it again should its call have been cut short.
    through: Option<Cursor>,
    /// Whether `through` changed since it was last sent.
    through_changed: bool,
    /// Events handled alone, until a call acknowledged them.
    each: Vec<Cursor>,
    /// How many of `each` (the first) the call on its way carries.
    sending: usize,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, Handled> {
        self.handled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What the next call sends, if anything is new.
    fn to_send(&self) -> Option<(Option<Cursor>, Vec<Cursor>)> {
        let mut handled = self.lock();
        if !handled.through_changed && handled.each.is_empty() {
            return None;
        }
        let through = handled.through.filter(|_| handled.through_changed);
        handled.through_changed = false;
        handled.sending = handled.each.len();
        Some((through, handled.each.clone()))
    }

    /// The call ended: what it carried is acknowledged, or (`sent` false) still to send.
    fn call_ended(&self, sent: bool) {
        let mut handled = self.lock();
        if sent {
            let sending = std::mem::take(&mut handled.sending);
            handled.each.drain(..sending);
        } else {
            handled.sending = 0;
            handled.through_changed = handled.through.is_some();
        }
    }

    /// `base` with the stream's connection number.
    fn stamped(&self, base: &Acknowledgement) -> Acknowledgement {
        Acknowledgement {
            connection: self.connection.load(Ordering::Relaxed),
            ..base.clone()
        }
    }

    /// Everything handled, for leaving.
    fn all(&self) -> (Option<Cursor>, Vec<Cursor>) {
        let handled = self.lock();
        (handled.through, handled.each.clone())
    }
}

impl Membership {
    pub(crate) fn start(channel: Channel, base: Acknowledgement, metadata: ExtraMetadata) -> Self {
        let pending = Arc::new(Pending::default());
        let task = tokio::spawn(acknowledge_loop(
            channel.clone(),
            base.clone(),
            metadata.clone(),
            pending.clone(),
        ));
        Self {
            channel,
            base,
            metadata,
            pending,
            task,
        }
    }

    /// The producer numbered the member's stream `connection` (its response header): every
    /// acknowledgement names it from now on.
    pub(crate) fn set_connection(&self, connection: u64) {
        self.pending.connection.store(connection, Ordering::Relaxed);
    }

    /// Records an event as handled, with every event delivered before it; acknowledged soon
    /// after.
    pub(crate) fn handled(&self, cursor: Cursor) {
        let mut handled = self.pending.lock();
        handled.through = Some(cursor);
        handled.through_changed = true;
        drop(handled);
        self.pending.added.notify_one();
    }

    /// Records one event as handled, alone (events delivered before it may not be); acknowledged
    /// soon after.
    pub(crate) fn handled_alone(&self, cursor: Cursor) {
        self.pending.lock().each.push(cursor);
        self.pending.added.notify_one();
    }

    /// Acknowledges what was handled alone and not yet acknowledged, if anything, waiting at
    /// most `timeout`: for a stream that ended, whose member resubscribes with a cursor that
    /// covers only what was handled in delivery order.
    pub(crate) async fn flush(self, timeout: Duration) {
        self.task.abort();
        let (_, each) = self.pending.all();
        if each.is_empty() {
            return;
        }
        let ack = Acknowledgement {
            handled_each: each,
            ..self.pending.stamped(&self.base)
        };
        let rpc = ack.rpc.clone();
        match tokio::time::timeout(
            timeout,
            acknowledge(self.channel.clone(), ack, &self.metadata),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => {
                tracing::debug!(rpc, code = ?status.code(), "acknowledging after the stream ended failed; those events come again")
            }
            Err(_) => tracing::debug!(
                rpc,
                "acknowledging after the stream ended timed out; those events come again"
            ),
        }
    }

    /// Acknowledges everything handled and leaves the group, so that the producer hands the
    /// member's other events to the rest of the group at once. Waits at most `timeout`.
    pub(crate) async fn leave(self, timeout: Duration) {
        self.task.abort();
        let (through, each) = self.pending.all();
        let base = Acknowledgement {
            handled_each: each,
            ..self.pending.stamped(&self.base)
        };
        leave(self.channel.clone(), base, &self.metadata, through, timeout).await;
    }
}

/// Leaves a group after acknowledging `handled`, waiting at most `timeout`: for a member
/// whose stream is already gone, over a new connection.
pub(crate) async fn leave(
    channel: Channel,
    base: Acknowledgement,
    metadata: &ExtraMetadata,
    handled: Option<Cursor>,
    timeout: Duration,
) {
    let ack = Acknowledgement {
        handled,
        leave: true,
        ..base
    };
    let rpc = ack.rpc.clone();
    match tokio::time::timeout(timeout, acknowledge(channel, ack, metadata)).await {
        Ok(Ok(_)) => tracing::debug!(rpc, "left the consumer group"),
        Ok(Err(status)) => tracing::info!(rpc, code = ?status.code(), message = status.message(), "leaving the consumer group failed; the producer lets the member go when its lease runs out"),
        Err(_) => tracing::info!(rpc, "leaving the consumer group timed out; the producer lets the member go when its lease runs out"),
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn acknowledge_loop(
    channel: Channel,
    base: Acknowledgement,
    metadata: ExtraMetadata,
    pending: Arc<Pending>,
) {
    let mut backoff = Backoff::new(RETRY_PAUSE.0, RETRY_PAUSE.1);
    loop {
        pending.added.notified().await;
        let Some((handled, handled_each)) = pending.to_send() else {
            continue;
        };
        let ack = Acknowledgement {
            handled,
            handled_each,
            ..pending.stamped(&base)
        };
        match acknowledge(channel.clone(), ack, &metadata).await {
            Ok(_) => {
                pending.call_ended(true);
                backoff.reset();
            }
            // The producer will not take it: the member is gone there (its lease ran out, or
            // the producer restarted), or it serves no acknowledgements. The stream ends or
            // carries on as the producer decides; the member rejoins when it resubscribes.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::NotFound
                        | tonic::Code::FailedPrecondition
                        | tonic::Code::InvalidArgument
                        | tonic::Code::Unimplemented
                ) =>
            {
                pending.call_ended(true);
                tracing::warn!(rpc = %base.rpc, group = %base.group, code = ?status.code(), message = status.message(), "acknowledgement refused");
            }
            Err(status) => {
                // Refused for who this observer is: a refreshed token, or the end of the
                // lease of a member of the same name joined by another identity, may lift it.
                // Said louder than a failure of the connection.
                if matches!(
                    status.code(),
                    tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
                ) {
                    tracing::warn!(rpc = %base.rpc, group = %base.group, code = ?status.code(), message = status.message(), "acknowledgement refused for this observer's identity; sending it again");
                } else {
                    tracing::debug!(rpc = %base.rpc, code = ?status.code(), message = status.message(), "acknowledgement failed; sending it again");
                }
                pending.call_ended(false);
                tokio::time::sleep(backoff.next_pause()).await;
                pending.added.notify_one();
            }
        }
    }
}

async fn acknowledge(
    channel: Channel,
    ack: Acknowledgement,
    metadata: &ExtraMetadata,
) -> Result<AcknowledgeResponse, tonic::Status> {
    let call = async {
        let mut client = EventGroupsClient::new(channel);
        let mut request = tonic::Request::new(ack);
        request.set_timeout(ACKNOWLEDGE_TIMEOUT);
        metadata.add_to(request.metadata_mut().as_mut());
        client
            .acknowledge(request)
            .await
            .map(tonic::Response::into_inner)
    };
    tokio::time::timeout(ACKNOWLEDGE_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(format!(
                "no answer to an acknowledgement within {ACKNOWLEDGE_TIMEOUT:?}"
            )))
        })
}
