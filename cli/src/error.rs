//! [`Error`]: what went wrong, in one sentence a user can act on, and the exit code it gives.

use std::fmt;

use meshless::telemetry::code_name;

/// A failure of the command: printed as `error: {message}` on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Error {
    message: String,
    usage: bool,
}

impl Error {
    /// A failure while running the command: exit code 1.
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            usage: false,
        }
    }

    /// Bad arguments: exit code 2, with a pointer to `--help`.
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            usage: true,
        }
    }

    /// The process's exit code for this error.
    pub(crate) fn exit_code(&self) -> i32 {
        if self.usage {
            2
        } else {
            1
        }
    }

    /// Whether this is a usage error (bad arguments).
    pub(crate) fn is_usage(&self) -> bool {
        self.usage
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// `UNAVAILABLE: connection refused`: a status as gRPC tools print it.
pub(crate) fn status_text(status: &tonic::Status) -> String {
    let message = status.message();
    if message.is_empty() {
        code_name(status.code()).to_owned()
    } else {
        format!("{}: {message}", code_name(status.code()))
    }
}
