//! When a call counts against the instance that answered it ([`counts_against`],
//! [`Failure`]), and how long failing instances are ejected ([`Ejection`]): gRFC A50's
//! consecutive-failure rule.

use std::fmt;
use std::time::Duration;

/// How many failures in a row eject an instance (gRFC A50's consecutive-failure default).
pub(crate) const EJECT_AFTER_FAILURES: u32 = 5;
/// How long a first ejection lasts; each ejection that follows one doubles it.
pub(crate) const FIRST_EJECTION: Duration = Duration::from_secs(1);
/// The longest an ejection lasts.
pub(crate) const LONGEST_EJECTION: Duration = Duration::from_secs(30);
/// How long an instance's ejections last: the first, and the longest (each doubles the last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ejection {
    pub(crate) first: Duration,
    pub(crate) longest: Duration,
}

impl Default for Ejection {
    fn default() -> Self {
        Self {
            first: FIRST_EJECTION,
            longest: LONGEST_EJECTION,
        }
    }
}

/// How many successes in a row make an instance's next ejection a first one again.
pub(super) const FORGIVEN_AFTER_SUCCESSES: u32 = 100;

/// Whether a call that ended with `code` counts against the instance that answered: the
/// instance or its connection failed, or it was overloaded. Answers about the request
/// (`INVALID_ARGUMENT`, `NOT_FOUND`, `PERMISSION_DENIED`, ...) do not, nor does a caller's
/// cancellation.
pub(crate) fn counts_against(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::Internal
            | tonic::Code::Unknown
            | tonic::Code::DataLoss
            | tonic::Code::ResourceExhausted
            | tonic::Code::DeadlineExceeded
    )
}

/// Why a call counts against the instance that answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// It answered with a status that [`counts_against`] it.
    Status(tonic::Code),
    /// The connection or the answer broke.
    Broken,
    /// It did not answer within the call's deadline.
    Deadline,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(code) => write!(f, "{}", crate::telemetry::code_name(*code)),
            Self::Broken => f.write_str("the connection or the answer broke"),
            Self::Deadline => f.write_str("no answer within the call's deadline"),
        }
    }
}
