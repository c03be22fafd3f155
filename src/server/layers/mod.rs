//! The tower layers every call to a [`Server`](crate::Server) passes through, one job each,
//! outermost first:
//!
//! 1. [`observe`]: a `meshless.serve` span and the server call metrics, so that every call is
//!    counted, those refused by the layers below included.
//! 2. [`status`]: a request message over the size limit becomes `RESOURCE_EXHAUSTED`, as gRPC
//!    specifies (tonic says `OUT_OF_RANGE`).
//! 3. [`deadline`]: the caller's deadline, recorded for the handler.
//! 4. [`drain`]: while a server that publishes events shuts down, new calls are refused and
//!    those in flight are counted down.
//! 5. [`user`]: the layers added with [`Server::layer`](crate::Server::layer).
//! 6. [`messages`]: request messages passed on whole, so that a length prefix alone reserves
//!    no memory.

pub(super) mod deadline;
pub(super) mod drain;
pub(super) mod messages;
pub(super) mod observe;
pub(super) mod status;
pub(super) mod user;
