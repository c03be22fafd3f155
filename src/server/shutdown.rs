//! [`Shutdown`]: what a server does, in order, once its shutdown signal fires.
//!
//! 1. A server that publishes events closes its drain: new calls are refused with
//!    `UNAVAILABLE`, before health says so, so that whoever sees `NOT_SERVING` finds them
//!    refused.
//! 2. Health turns `NOT_SERVING`.
//! 3. Events drain, while serving goes on (event streams and acknowledgements need it): the
//!    calls in flight return, plain subscribers get every event published, consumer groups
//!    with members acknowledge theirs; then the publishers close.
//! 4. The listener closes and connections are told to go away; connections that have not
//!    sent the HTTP/2 preface yet are closed. Calls still in flight get what is left of the
//!    grace period; when it is over, every connection is cut.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use super::guard::Phase;
use super::layers::drain::Drain;
use crate::events::Publisher;
use crate::Error;

pub(super) struct Shutdown {
    pub(super) grace_period: Duration,
    pub(super) publishers: Vec<Publisher>,
    pub(super) drain: Drain,
    pub(super) health: Option<HealthReporter>,
    pub(super) services: Vec<&'static str>,
    /// Tells tonic to stop accepting and send connections away.
    pub(super) stop_serving: tokio::sync::oneshot::Sender<()>,
    /// Tells the connections where the shutdown is.
    pub(super) phases: tokio::sync::watch::Sender<Phase>,
    pub(super) addr: Option<SocketAddr>,
}

impl Shutdown {
    /// Runs the sequence while `serving` goes on. Returns what serving returned, or `Ok`
    /// once the grace period is over with calls still in flight.
    pub(super) async fn run<F>(self, mut serving: Pin<&mut F>) -> Result<(), Error>
    where
        F: Future<Output = Result<(), tonic::transport::Error>> + ?Sized,
    {
        let addr = self.addr;
        tracing::info!(?addr, grace_period = ?self.grace_period, "shutting down");
        let deadline = tokio::time::Instant::now() + self.grace_period;
        if !self.publishers.is_empty() {
            self.drain.close();
        }
        set_status(
            self.health.as_ref(),
            &self.services,
            ServingStatus::NotServing,
        )
        .await;
        if !self.publishers.is_empty() {
            let drained = async {
                let calls_returned = self.drain.wait_idle(deadline).await;
                let mut events_drained = true;
                for publisher in &self.publishers {
                    events_drained &= publisher.drain(deadline).await;
                }
                (calls_returned, events_drained)
            };
            tokio::select! {
                result = &mut serving => return result.map_err(Error::transport),
                (calls_returned, events_drained) = drained => {
                    if calls_returned && events_drained {
                        tracing::info!(?addr, "events drained");
                    } else {
                        tracing::warn!(?addr, calls_returned, events_drained, "events not fully drained: the grace period ran out, or consumer groups were left without members");
                    }
                }
            }
            for publisher in &self.publishers {
                publisher.close();
            }
        }
        let _ = self.stop_serving.send(());
        self.phases.send_replace(Phase::Stopping);
        let served = tokio::time::timeout_at(deadline, serving).await;
        self.phases.send_replace(Phase::Over);
        match served {
            Ok(result) => result.map_err(Error::transport),
            Err(_) => {
                tracing::warn!(
                    ?addr,
                    "grace period over with calls still in flight: their connections are cut"
                );
                Ok(())
            }
        }
    }
}

/// Sets the health of the server as a whole (the empty name) and of each service.
pub(super) async fn set_status(
    reporter: Option<&HealthReporter>,
    services: &[&str],
    status: ServingStatus,
) {
    let Some(reporter) = reporter else { return };
    reporter.set_service_status("", status).await;
    for service in services {
        reporter.set_service_status(*service, status).await;
    }
}
