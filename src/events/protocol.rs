//! The gRPC face of an event RPC: what a `Subscribe` or an `Acknowledgement` may ask for, and
//! the status every refusal becomes. The hub and the groups deal in domain values and errors;
//! only this module speaks `tonic::Status`, and no status echoes more than a short piece of
//! what a peer sent.

use std::time::Duration;

use super::error::PublishError;
use super::group::{self, AckError, JoinError};
use crate::peer::PeerIdentity;
use crate::v1::{Acknowledgement, Cursor, Filter, StartPosition, Subscribe};

/// The longest a member name or group name may be, in bytes.
pub(crate) const MAX_NAME_LEN: usize = 256;
/// A member's window when its `Subscribe` leaves `max_unacknowledged` at 0.
pub(crate) const DEFAULT_WINDOW: usize = 256;
/// A member's lease when its `Subscribe` leaves `lease_ms` at 0.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(5);
/// The longest lease a member may ask for.
pub(crate) const MAX_LEASE: Duration = Duration::from_secs(600);

/// The shortest heartbeat interval a subscriber may ask for: faster is a mistake (or an
/// attack), not a liveness check.
pub(crate) const MIN_HEARTBEAT: Duration = Duration::from_secs(1);

/// A `Subscribe`, checked.
#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    /// A cursor of some epoch, when the subscriber sent one.
    pub(crate) after: Option<Cursor>,
    pub(crate) start: Start,
    pub(crate) heartbeat: Option<Duration>,
    pub(crate) membership: Option<Membership>,
    /// Only the events that match; no conditions: every event.
    pub(crate) filter: Filter,
    /// The subscriber's address, when the request carries it (for the admin status).
    pub(crate) peer: Option<std::net::SocketAddr>,
}

/// Where a subscription without a usable cursor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// The oldest retained event.
    Oldest,
    /// The next event published.
    Live,
    /// The first event published at or after this time (microseconds since the Unix epoch).
    Time(u64),
    /// The latest event of every key, then live.
    LatestPerKey,
}

/// What a consumer group member asks for.
#[derive(Debug, Clone)]
pub(crate) struct Membership {
    pub(crate) group: String,
    pub(crate) member: String,
    /// Not yet capped by the hub's buffer.
    pub(crate) window: usize,
    pub(crate) lease: Duration,
    /// Who joins: the member is bound to it.
    pub(crate) identity: Option<PeerIdentity>,
}

/// Why a subscription or a join was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The cursor names an event of this epoch that was never published.
    CursorAhead {
        cursor: Cursor,
        latest: u64,
    },
    ShuttingDown,
    TooManySubscribers(usize),
    Join(JoinError),
}

impl Subscription {
    /// Checks what a subscriber sent; refuses names too long to be names, and members without
    /// one.
    pub(crate) fn parse(request: &Subscribe) -> Result<Self, tonic::Status> {
        let membership = if request.group.is_empty() {
            None
        } else {
            for (what, name) in [("group", &request.group), ("member", &request.member)] {
                if name.len() > MAX_NAME_LEN {
                    return Err(tonic::Status::invalid_argument(format!(
                        "the {what} name is {} bytes long; at most {} are allowed",
                        name.len(),
                        MAX_NAME_LEN
                    )));
                }
            }
            if request.member.is_empty() {
                return Err(tonic::Status::invalid_argument(format!(
                    "a member of consumer group `{}` needs a name (`Subscribe.member`), unique in \
                     the group and kept across reconnections, to acknowledge what it handles",
                    crate::text::shown(&request.group)
                )));
            }
            Some(Membership {
                group: request.group.clone(),
                member: request.member.clone(),
                window: match request.max_unacknowledged {
                    0 => DEFAULT_WINDOW,
                    n => usize::try_from(n).unwrap_or(usize::MAX),
                },
                lease: match request.lease_ms {
                    0 => DEFAULT_LEASE,
                    ms => Duration::from_millis(u64::from(ms)).min(MAX_LEASE),
                },
                identity: None,
            })
        };
        if membership.is_some() && request.start() == StartPosition::LatestPerKey {
            return Err(tonic::Status::invalid_argument(format!(
                "consumer group `{}` cannot start at the latest event of every key: a group \
                 stands at one sequence of the log, and the latest events of the keys are \
                 scattered over it; start the group at the oldest event (with compaction by key, \
                 a group behind the retained events reads the events kept past them)",
                crate::text::shown(&request.group)
            )));
        }
        Ok(Self {
            after: request.after.filter(|c| c.epoch != 0),
            start: match request.start() {
                StartPosition::LatestPerKey => Start::LatestPerKey,
                StartPosition::Unspecified | StartPosition::Oldest => Start::Oldest,
                StartPosition::Live => Start::Live,
                StartPosition::Time => {
                    Start::Time(u64::try_from(request.start_time_unix_micros).map_err(|_| {
                        tonic::Status::invalid_argument(format!(
                            "`start_time_unix_micros` is {}: a time before 1970 cannot be a \
                             publish time",
                            request.start_time_unix_micros
                        ))
                    })?)
                }
            },
            heartbeat: match request.heartbeat_interval_ms {
                0 => None,
                ms => Some(Duration::from_millis(u64::from(ms)).max(MIN_HEARTBEAT)),
            },
            membership,
            filter: request.filter.clone().unwrap_or_default(),
            peer: None,
        })
    }
}

impl From<PublishError> for tonic::Status {
    /// `RESOURCE_EXHAUSTED` for an event (or a batch) over the size limit, as for any message
    /// over it;
    /// `UNAVAILABLE` when the event log failed (another instance may take the call);
    /// `FAILED_PRECONDITION` for a plain publish on a publisher whose events are published in
    /// transactions.
    fn from(error: PublishError) -> Self {
        match error {
            PublishError::TooLarge { .. } | PublishError::BatchTooLarge { .. } => {
                tonic::Status::resource_exhausted(error.to_string())
            }
            PublishError::Io { .. } => tonic::Status::unavailable(error.to_string()),
            PublishError::InTransaction { .. } => {
                tonic::Status::failed_precondition(error.to_string())
            }
        }
    }
}

/// The status of an acknowledgement for `rpc`, which no publisher of the server serves.
pub(crate) fn unknown_event_rpc(rpc: &str) -> tonic::Status {
    tonic::Status::not_found(format!(
        "`{}` is not an event RPC this server publishes (expected `/package.Service/Method`)",
        crate::text::shown(rpc)
    ))
}

/// The status that ends the stream of a plain subscriber to `method` that fell more than
/// `buffer` events behind, having been sent up to `last_sent` of `epoch`.
pub(crate) fn cut_off(method: &str, buffer: usize, epoch: u64, last_sent: u64) -> tonic::Status {
    tonic::Status::resource_exhausted(format!(
        "subscriber fell more than {buffer} events behind on {method} and was cut off; \
         resubscribe with after = (epoch {epoch:#x}, sequence {last_sent}) to resume without loss"
    ))
}

/// The status of a subscription to `method` whose filter does not fit its event message.
pub(crate) fn bad_filter(method: &str, why: &str) -> tonic::Status {
    tonic::Status::invalid_argument(format!("the filter does not fit {method}'s events: {why}"))
}

/// The status of a refused subscription to `method`.
pub(crate) fn refused(
    method: &str,
    refusal: &Refusal,
    membership: Option<&Membership>,
) -> tonic::Status {
    let group = || membership.map_or_else(String::new, |m| crate::text::shown(&m.group));
    match refusal {
        Refusal::CursorAhead { cursor, latest } => tonic::Status::invalid_argument(format!(
            "cursor (epoch {:#x}, sequence {}) is ahead of {method}'s latest event ({latest}); \
             resubscribe without a cursor",
            cursor.epoch, cursor.sequence
        )),
        Refusal::ShuttingDown => shutting_down(method),
        Refusal::TooManySubscribers(limit) => tonic::Status::resource_exhausted(format!(
            "{method} already has {limit} subscribers, its limit"
        )),
        Refusal::Join(JoinError::TooManyGroups) => tonic::Status::resource_exhausted(format!(
            "{method} already serves {} consumer groups, each with a member; group `{}` cannot \
             be added",
            group::MAX_GROUPS,
            group()
        )),
        Refusal::Join(JoinError::TooManyMembers) => tonic::Status::resource_exhausted(format!(
            "consumer group `{}` on {method} already has {} members",
            group(),
            group::MAX_MEMBERS
        )),
        Refusal::Join(JoinError::OtherFilter) => tonic::Status::failed_precondition(format!(
            "consumer group `{}` on {method} was formed with another filter: its members all \
             take the events of the filter its first member asked for",
            group()
        )),
        Refusal::Join(JoinError::NotYours) => not_yours(
            method,
            membership.map_or("", |m| &m.group),
            membership.map_or("", |m| &m.member),
        ),
    }
}

pub(crate) fn shutting_down(method: &str) -> tonic::Status {
    tonic::Status::unavailable(format!("{method} is shutting down"))
}

/// What an acknowledgement says was handled: `None` when it only leaves.
pub(crate) fn handled(
    method: &str,
    epoch: u64,
    latest: u64,
    ack: &Acknowledgement,
) -> Result<(Option<u64>, Vec<u64>), tonic::Status> {
    let each = ack
        .handled_each
        .iter()
        .map(|cursor| sequence_of(method, epoch, latest, cursor))
        .collect::<Result<Vec<u64>, _>>()?;
    match ack.handled {
        Some(cursor) => Ok((Some(sequence_of(method, epoch, latest, &cursor)?), each)),
        None if ack.leave || !each.is_empty() => Ok((None, each)),
        None => Err(tonic::Status::invalid_argument(
            "an acknowledgement names the last event handled (`handled`), or events handled \
             (`handled_each`), or leaves",
        )),
    }
}

/// The sequence an acknowledged cursor names, if it names an event of this epoch.
fn sequence_of(
    method: &str,
    epoch: u64,
    latest: u64,
    cursor: &crate::v1::Cursor,
) -> Result<u64, tonic::Status> {
    if cursor.epoch != epoch {
        return Err(tonic::Status::failed_precondition(format!(
            "cursor of epoch {:#x}, but this instance of {method} publishes epoch {epoch:#x}: it \
             restarted, and what the earlier run delivered cannot be acknowledged here",
            cursor.epoch
        )));
    }
    if cursor.sequence == 0 || cursor.sequence > latest {
        return Err(tonic::Status::invalid_argument(format!(
            "no event {} was published on {method} (latest: {latest})",
            cursor.sequence
        )));
    }
    Ok(cursor.sequence)
}

/// The status of a refused acknowledgement.
pub(crate) fn ack_refused(method: &str, error: &AckError, ack: &Acknowledgement) -> tonic::Status {
    match error {
        AckError::UnknownGroup => tonic::Status::not_found(format!(
            "no consumer group `{}` on this instance of {method}",
            crate::text::shown(&ack.group),
        )),
        AckError::UnknownMember => tonic::Status::not_found(format!(
            "no member `{}` in consumer group `{}` on this instance of {method} (its lease ran \
             out, or it left); resubscribe to rejoin",
            crate::text::shown(&ack.member),
            crate::text::shown(&ack.group),
        )),
        AckError::NotYours => not_yours(method, &ack.group, &ack.member),
        AckError::EarlierLife { connection } => tonic::Status::failed_precondition(format!(
            "stream {connection} of member `{}` of consumer group `{}` on {method} ended and its \
             lease ran out; its events went to the group again, and this acknowledgement \
             acknowledges none of them",
            crate::text::shown(&ack.member),
            crate::text::shown(&ack.group),
        )),
    }
}

/// A member's name used by an identity other than the one that joined it.
fn not_yours(method: &str, group: &str, member: &str) -> tonic::Status {
    tonic::Status::permission_denied(format!(
        "member `{}` of consumer group `{}` on {method} was joined by another identity; only \
         it may take the member over, acknowledge for it or leave",
        crate::text::shown(member),
        crate::text::shown(group),
    ))
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn heartbeats_are_never_asked_for_more_often_than_every_second() {
        let asked = |ms| {
            Subscription::parse(&Subscribe {
                heartbeat_interval_ms: ms,
                ..Subscribe::default()
            })
            .unwrap()
            .heartbeat
        };
        assert_eq!(asked(0), None);
        assert_eq!(asked(10), Some(MIN_HEARTBEAT));
        assert_eq!(asked(2500), Some(Duration::from_millis(2500)));
    }

    #[test]
    fn group_members_need_short_names() {
        let join = |group: &str, member: &str| {
            Subscription::parse(&Subscribe {
                group: group.into(),
                member: member.into(),
                ..Subscribe::default()
            })
        };
        assert!(join("g", "a").unwrap().membership.is_some());
        let long = "n".repeat(300);
        for (group, member) in [("g", ""), (long.as_str(), "a"), ("g", long.as_str())] {
            let refused = join(group, member).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::InvalidArgument);
            assert!(refused.message().len() < 300, "{}", refused.message());
        }
    }
}
