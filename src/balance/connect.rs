//! The task that keeps one instance connected.

use std::sync::{Arc, Weak};

use std::time::Duration;

use super::connection::Connection;
use super::instance::{Instance, State};
use super::set::InstanceSet;
use crate::backoff::Backoff;

/// Connects to an instance and reconnects it, with exponential backoff and jitter, whenever a
/// call reports its connection failed; ends when the instance is removed or the set is dropped.
/// An instance is ready only once its server has answered over HTTP/2 (see [`answers`]): a
/// TCP connection alone proves nothing (a deadlocked process, a port held open by something
/// else).
pub(super) async fn keep_connected(instance: Arc<Instance>, set: Weak<InstanceSet>) {
    let Some(settings) = set.upgrade().map(|s| s.settings().clone()) else {
        return;
    };
    let mut backoff = Backoff::new(settings.reconnect_backoff, settings.reconnect_backoff_max);
    let answer_within = settings.connector.connect_timeout;
    loop {
        // Per attempt, so that the end of an earlier connection is not taken for this one's.
        let closed = Arc::new(tokio::sync::Notify::new());
        let connecting = Connection::connect(
            &instance.key,
            &instance.endpoint,
            &settings.connector,
            closed.clone(),
        );
        let result = match connecting.await {
            Ok(connection) => answers(&connection, answer_within)
                .await
                .map(|()| connection),
            Err(error) => Err(error),
        };
        if instance.is_removed() {
            return;
        }
        let Some(set) = set.upgrade() else { return };
        match result {
            Ok(connection) => {
                tracing::debug!(target = %set.target(), instance = %instance.key, "connected");
                instance.connected(connection);
                set.rebuild_ready();
                let connected_at = tokio::time::Instant::now();
                // Sleep until the connection ends, a call reports a failure, or the instance
                // is removed. The set is not held meanwhile: dropping it ends this task.
                let set = Arc::downgrade(&set);
                tokio::select! {
                    () = instance.wake.notified() => {}
                    () = closed.notified() => {
                        if let (true, Some(set)) = (instance.connection_ended(), set.upgrade()) {
                            tracing::debug!(target = %set.target(), instance = %instance.key, "connection ended; connecting again");
                            set.rebuild_ready();
                        }
                    }
                }
                // A connection that lasted starts the backoff over; one that a call found
                // failed soon after it was made (a draining server, which still answers the
                // readiness check) is remade after a pause that grows each time.
                if connected_at.elapsed() >= settings.reconnect_backoff_max {
                    backoff.reset();
                }
                if instance.state() == State::Failed && !instance.is_removed() {
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_pause()) => {}
                        () = instance.wake.notified() => {}
                    }
                }
            }
            Err(error) => {
                tracing::debug!(target = %set.target(), instance = %instance.key, %error, "connect failed");
                instance.connect_failed(error);
                set.rebuild_ready();
                set.connect_failed();
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

/// Whether the server at the other end of `connection` answers an HTTP/2 request within `within`:
/// a health check with an empty request. Any answer will do (`UNIMPLEMENTED` from a server
/// without the health service included): the point is that the server reads and writes HTTP/2.
async fn answers(connection: &Connection, within: Duration) -> Result<(), String> {
    // One gRPC message: uncompressed, 0 bytes long (an empty `HealthCheckRequest`).
    let body = tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from_static(
        &[0; 5],
    )));
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri("/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(within, connection.call(request)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(crate::text::error_chain(&*error)),
        Err(_) => Err(format!(
            "connected, but no HTTP/2 answer within {within:?}: not a gRPC server, or a stuck one"
        )),
    }
}
