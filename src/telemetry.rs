//! What meshless reports about itself: `tracing` spans, and metrics through the [`metrics`]
//! facade, which any exporter (Prometheus, StatsD, OpenTelemetry...) installed by the
//! application collects. Without an exporter, recording costs next to nothing. The metrics
//! (labels in braces):
//!
//! | name | kind | what |
//! |---|---|---|
//! | `meshless_client_calls_total` {target, method, code} | counter | calls made, by gRPC status |
//! | `meshless_client_call_duration_seconds` {target, method} | histogram | from the call to its status |
//! | `meshless_client_retries_total` {target} | counter | calls sent again (see [`ChannelBuilder::attempts`](crate::ChannelBuilder::attempts)) |
//! | `meshless_client_ready_instances` {target} | gauge | instances calls can be sent to |
//! | `meshless_server_calls_total` {method, code} | counter | calls served, by gRPC status |
//! | `meshless_server_call_duration_seconds` {method} | histogram | from the request to the status |
//! | `meshless_server_connections_refused_total` {reason} | counter | connections closed as soon as accepted: `max_connections` (the server's cap) or `max_connections_per_peer` (the cap of one IP address, or of one IPv6 /64) |
//! | `meshless_events_published_total` {rpc} | counter | events published |
//! | `meshless_events_refused_total` {rpc} | counter | events `publish_*` refused (too large) |
//! | `meshless_event_subscribers` {rpc} | gauge | open streams of subscribers without a group |
//! | `meshless_event_subscribers_cut_off_total` {rpc} | counter | subscribers that fell behind |
//! | `meshless_event_redeliveries_total` {rpc} | counter | events handed out again to a consumer group (a member left, or its lease ran out, with them unacknowledged; or after a restart of the producer) |
//! | `meshless_event_log_errors_total` {rpc} | counter | writes and syncs of the event log that failed (`publish_*` returned `PublishError::Io`) |
//! | `meshless_event_compaction_dropped_total` {rpc} | counter | with `compact_by_key`: kept events dropped because more keys were kept than `PublisherSettings::max_compacted_keys` |
//! | `meshless_observer_events_total` {rpc, outcome} | counter | events handled (`handled`, `dead_letter`) |
//! | `meshless_observer_lag_seconds` {rpc} | gauge | publish-to-handled time of the latest event handled, from any producer instance (no per-instance label: instances come and go) |
//! | `meshless_observer_missed_events_total` {rpc} | counter | events reported missed (gaps of a known count) |
//! | `meshless_observer_gaps_total` {rpc} | counter | gap reports, those of an unknown count (a producer that restarted) included |
//! | `meshless_observer_redelivered_events_total` {rpc} | counter | events received with a delivery count above 1 |
//!
//! Every name above is made in this module (the `metrics::*!` calls below), nowhere else.
//!
//! Spans: `meshless.call` (client: target, method, instance, status), `meshless.serve`
//! (server: method, status), `meshless.event` (observer: rpc, instance, epoch, sequence,
//! delivery count), all at DEBUG level.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::admin::registry::CallCounts;

pub use code::code_name;
pub(crate) use report::{CallReport, Reported};

mod code;
mod report;

/// The header (or trailer) that carries a call's status.
pub(crate) const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

fn status_of(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let status = headers
        .get(GRPC_STATUS)?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(tonic::Code::from(status))
}

/// Which end of a call is reporting.
#[derive(Debug, Clone)]
pub(crate) enum Side {
    Client { target: Arc<str> },
    Server,
}

/// The metric handles of calls, per method, made on first use: labelling metrics per call
/// would allocate per call. One per channel (client side) or server.
#[derive(Debug)]
pub(crate) struct CallMetrics {
    side: Side,
    /// Read by every call without a lock; replaced whole when a method is added.
    by_method: arc_swap::ArcSwap<HashMap<String, Arc<MethodMetrics>>>,
    /// Held while a method is added.
    adding: Mutex<()>,
    /// Calls started and ended, over all methods, for channelz and the admin service.
    pub(crate) counts: Arc<CallCounts>,
}

/// How many methods get handles of their own; more share one entry labelled `other`, so that
/// a peer sending made-up method names cannot grow the table (or a metrics backend) at will.
const MAX_METHODS: usize = 512;

#[derive(Debug)]
struct MethodMetrics {
    side: Side,
    method: metrics::SharedString,
    /// By gRPC status code, 0 to 16.
    calls: [OnceLock<metrics::Counter>; 17],
    duration: metrics::Histogram,
    /// The channel's or server's [`CallMetrics::counts`].
    counts: Arc<CallCounts>,
}

impl CallMetrics {
    pub(crate) fn new(side: Side) -> Self {
        Self {
            side,
            by_method: arc_swap::ArcSwap::default(),
            adding: Mutex::new(()),
            counts: Arc::default(),
        }
    }

    /// Counts the calls in `counts` (a server's, shared with its registry entry).
    pub(crate) fn counting_in(mut self, counts: Arc<CallCounts>) -> Self {
        self.counts = counts;
        self
    }

    fn method(&self, method: &str) -> Arc<MethodMetrics> {
        if let Some(found) = self.by_method.load().get(method) {
            return found.clone();
        }
        let _adding = self.adding.lock().unwrap_or_else(|e| e.into_inner());
        let known = self.by_method.load_full();
        let key = if known.len() < MAX_METHODS || known.contains_key(method) {
            method
        } else {
            "other"
        };
        if let Some(found) = known.get(key) {
            return found.clone();
        }
        let metrics = Arc::new(MethodMetrics::new(
            self.side.clone(),
            key,
            self.counts.clone(),
        ));
        let mut by_method = HashMap::clone(&known);
        by_method.insert(key.to_owned(), metrics.clone());
        self.by_method.store(Arc::new(by_method));
        metrics
    }
}

impl MethodMetrics {
    fn new(side: Side, method: &str, counts: Arc<CallCounts>) -> Self {
        let label: metrics::SharedString = Arc::<str>::from(method).into();
        let duration = match &side {
            Side::Client { target } => metrics::histogram!(
                "meshless_client_call_duration_seconds",
                "target" => metrics::SharedString::from(target.clone()),
                "method" => label.clone()
            ),
            Side::Server => {
                metrics::histogram!("meshless_server_call_duration_seconds", "method" => label.clone())
            }
        };
        Self {
            side,
            method: label,
            calls: Default::default(),
            duration,
            counts,
        }
    }

    fn calls(&self, code: tonic::Code) -> &metrics::Counter {
        self.calls[(code as usize).min(16)].get_or_init(|| {
            let code = code_name(code);
            match &self.side {
                Side::Client { target } => metrics::counter!(
                    "meshless_client_calls_total",
                    "target" => metrics::SharedString::from(target.clone()),
                    "method" => self.method.clone(),
                    "code" => code
                ),
                Side::Server => metrics::counter!(
                    "meshless_server_calls_total",
                    "method" => self.method.clone(),
                    "code" => code
                ),
            }
        })
    }
}

/// The metric handles of one event RPC on a publisher, made once per event RPC.
#[derive(Debug)]
pub(crate) struct EventMetrics {
    pub(crate) published: metrics::Counter,
    pub(crate) refused: metrics::Counter,
    pub(crate) subscribers: metrics::Gauge,
    pub(crate) cut_off: metrics::Counter,
    pub(crate) redeliveries: metrics::Counter,
    pub(crate) log_errors: metrics::Counter,
    pub(crate) compaction_dropped: metrics::Counter,
}

impl EventMetrics {
    pub(crate) fn new(rpc: &str) -> Self {
        let rpc = metrics::SharedString::from(rpc.to_owned());
        Self {
            published: metrics::counter!("meshless_events_published_total", "rpc" => rpc.clone()),
            refused: metrics::counter!("meshless_events_refused_total", "rpc" => rpc.clone()),
            subscribers: metrics::gauge!("meshless_event_subscribers", "rpc" => rpc.clone()),
            cut_off: metrics::counter!("meshless_event_subscribers_cut_off_total", "rpc" => rpc.clone()),
            redeliveries: metrics::counter!("meshless_event_redeliveries_total", "rpc" => rpc.clone()),
            log_errors: metrics::counter!("meshless_event_log_errors_total", "rpc" => rpc.clone()),
            compaction_dropped: metrics::counter!("meshless_event_compaction_dropped_total", "rpc" => rpc),
        }
    }
}

/// The metric handles of one event RPC on an observer, made once per stream.
#[derive(Debug, Clone)]
pub(crate) struct ObserverMetrics {
    pub(crate) handled: metrics::Counter,
    pub(crate) dead_letters: metrics::Counter,
    pub(crate) missed: metrics::Counter,
    pub(crate) redelivered: metrics::Counter,
    pub(crate) gaps: metrics::Counter,
    pub(crate) lag: metrics::Gauge,
}

impl ObserverMetrics {
    pub(crate) fn new(rpc: &'static str) -> Self {
        Self {
            handled: metrics::counter!("meshless_observer_events_total", "rpc" => rpc, "outcome" => "handled"),
            dead_letters: metrics::counter!("meshless_observer_events_total", "rpc" => rpc, "outcome" => "dead_letter"),
            missed: metrics::counter!("meshless_observer_missed_events_total", "rpc" => rpc),
            redelivered: metrics::counter!("meshless_observer_redelivered_events_total", "rpc" => rpc),
            gaps: metrics::counter!("meshless_observer_gaps_total", "rpc" => rpc),
            lag: metrics::gauge!("meshless_observer_lag_seconds", "rpc" => rpc),
        }
    }
}

/// The gauge of the instances of `target` that calls can be sent to.
pub(crate) fn ready_instances(target: &str) -> metrics::Gauge {
    metrics::gauge!("meshless_client_ready_instances", "target" => target.to_owned())
}

/// The counters of connections a server refused at its caps: over all peers, and per peer.
pub(crate) fn connections_refused() -> (metrics::Counter, metrics::Counter) {
    (
        metrics::counter!("meshless_server_connections_refused_total", "reason" => "max_connections"),
        metrics::counter!("meshless_server_connections_refused_total", "reason" => "max_connections_per_peer"),
    )
}

/// The counter of calls to `target` sent again.
pub(crate) fn retries(target: &str) -> metrics::Counter {
    metrics::counter!("meshless_client_retries_total", "target" => target.to_owned())
}

#[cfg(test)]
mod table_test;
