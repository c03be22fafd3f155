//! The generator's error: what went wrong, where in which `.proto` file, and what to do.

use std::fmt;

/// Why code generation failed.
///
/// Its `Display` (and `Debug`, so that `fn main() -> Result<(), Box<dyn Error>>` in a
/// `build.rs` prints it readably) starts with `file:line:col:` where the problem has a place
/// in a `.proto` file, then says what is wrong and how to fix it.
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// What kind of problem an [`Error`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A `.proto` file, or one it imports, could not be found.
    NotFound,
    /// A `.proto` file does not parse, or refers to names that do not exist.
    Invalid,
    /// The files are valid protobuf, but break a rule of meshless (event RPCs) or of `protoc`.
    Rule,
    /// Reading or writing a file failed.
    Io,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// What kind of problem this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub(crate) fn from_protox(error: protox::Error) -> Self {
        let kind = if error.is_file_not_found() {
            ErrorKind::NotFound
        } else if error.is_io() {
            ErrorKind::Io
        } else {
            ErrorKind::Invalid
        };
        // protox's Debug form is `file:line:col: message`; its Display lacks the place.
        let mut message = format!("{error:?}");
        if kind == ErrorKind::NotFound {
            message.push_str(
                "\n  help: add the folder that holds it to the include paths \
                 (`compile_protos(&protos, &includes)`); `meshless/v1/meshless.proto` and \
                 `google/protobuf/*.proto` are always available",
            );
        }
        Self::new(kind, message)
    }

    pub(crate) fn io(context: impl fmt::Display, error: std::io::Error) -> Self {
        Self::new(ErrorKind::Io, format!("{context}: {error}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Shown by `build.rs` scripts that return `Result<_, Box<dyn Error>>`: keep it readable.
        writeln!(f, "meshless-build failed:")?;
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<Error> for std::io::Error {
    fn from(error: Error) -> Self {
        std::io::Error::other(error.message)
    }
}
