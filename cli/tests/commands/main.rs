//! The `meshless` binary against real servers: Orders instances on 127.0.0.1:0 in this
//! process, found through the embedded DNS server, each command run as a child process with a
//! timeout.

mod support;

mod call;
mod errors;
mod status;
mod tail;
