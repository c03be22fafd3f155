//! The task that keeps one instance connected.

use std::sync::{Arc, Weak};

use super::instance::Instance;
use super::set::InstanceSet;
use crate::backoff::Backoff;

/// Connects to an instance and reconnects it, with exponential backoff and jitter, whenever a
/// call reports its connection failed; ends when the instance is removed or the set is dropped.
pub(super) async fn keep_connected(instance: Arc<Instance>, set: Weak<InstanceSet>) {
    let Some(settings) = set.upgrade().map(|s| s.settings().clone()) else {
        return;
    };
    let mut backoff = Backoff::new(settings.reconnect_backoff, settings.reconnect_backoff_max);
    loop {
        let result = instance.endpoint.connect().await;
        if instance.is_removed() {
            return;
        }
        let Some(set) = set.upgrade() else { return };
        match result {
            Ok(channel) => {
                tracing::debug!(target = %set.target(), instance = %instance.key, "connected");
                instance.connected(channel);
                set.rebuild_ready();
                drop(set);
                backoff.reset();
                // Sleep until a call reports a failure, or the instance is removed.
                instance.wake.notified().await;
            }
            Err(error) => {
                let error = error_chain(&error);
                tracing::debug!(target = %set.target(), instance = %instance.key, %error, "connect failed");
                instance.connect_failed(error);
                set.rebuild_ready();
                drop(set);
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_pause()) => {}
                    () = instance.wake.notified() => {}
                }
            }
        }
        if instance.is_removed() {
            return;
        }
    }
}

/// An error and its sources on one line: tonic's transport errors say little at the top.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
