//! `meshless::Error`: what can go wrong setting up a channel or a server.

use std::fmt;

use crate::target::TargetError;

/// An error from setting up a [`Channel`](crate::Channel) or running a
/// [`Server`](crate::Server). Errors of calls are [`Status`](crate::Status)es, as in tonic.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
}

#[derive(Debug, thiserror::Error)]
enum Kind {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    InvalidInput(String),
    #[error("gRPC transport error: {0}")]
    Transport(#[source] tonic::transport::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[cfg(feature = "postgres")]
    #[error("{context}: {source}")]
    Database {
        context: String,
        #[source]
        source: sqlx::Error,
    },
    #[cfg(feature = "postgres")]
    #[error("{0}")]
    StreamInUse(String),
}

impl Error {
    pub(crate) fn unsupported(message: impl Into<String>) -> Self {
        Self {
            kind: Kind::Unsupported(message.into()),
        }
    }

    pub(crate) fn invalid_input(message: impl Into<String>) -> Self {
        Self {
            kind: Kind::InvalidInput(message.into()),
        }
    }

    pub(crate) fn transport(error: tonic::transport::Error) -> Self {
        Self {
            kind: Kind::Transport(error),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self {
            kind: Kind::Io {
                context: context.into(),
                source,
            },
        }
    }

    #[cfg(feature = "postgres")]
    pub(crate) fn database(context: impl Into<String>, source: sqlx::Error) -> Self {
        Self {
            kind: Kind::Database {
                context: context.into(),
                source,
            },
        }
    }

    #[cfg(feature = "postgres")]
    pub(crate) fn stream_in_use(message: impl Into<String>) -> Self {
        Self {
            kind: Kind::StreamInUse(message.into()),
        }
    }

    /// Whether opening a publisher on Postgres failed because another live publisher serves
    /// the same stream name (feature `postgres`).
    #[cfg(feature = "postgres")]
    pub fn is_stream_in_use(&self) -> bool {
        matches!(self.kind, Kind::StreamInUse(_))
    }

    /// The database's error, when the error is one (feature `postgres`).
    #[cfg(feature = "postgres")]
    pub fn as_database_error(&self) -> Option<&sqlx::Error> {
        match &self.kind {
            Kind::Database { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Whether the error is a target that could not be parsed.
    pub fn is_invalid_target(&self) -> bool {
        matches!(self.kind, Kind::Target(_))
    }
}

impl From<TargetError> for Error {
    fn from(error: TargetError) -> Self {
        Self {
            kind: Kind::Target(error),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.kind, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.kind)
    }
}
