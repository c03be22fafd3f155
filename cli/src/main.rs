//! `meshless`: the command line of meshless. With neither a mesh's proxy nor a broker to ask,
//! it asks the instances themselves.
//!
//! - `meshless status <target>`: every instance's admin view in one report (instances, event
//!   RPCs, consumer groups with their lag per producer, ejected instances), `--json`,
//!   `--watch`.
//! - `meshless tail <target> <package.Service/Event>`: every instance's events as JSON lines,
//!   alone or as a consumer group member.
//! - `meshless call <target> <package.Service/Method> '<json>'`: one unary call, JSON in and
//!   out.
//!
//! Targets are meshless's (`dns:`, `dns+srv:`, `ipv4:`, `ipv6:`, `http://`), resolved as a
//! client resolves them. Services are described by gRPC reflection or a descriptor set.
//! Errors are one line on stderr, `error: ...`, and exit code 1 (2 for bad arguments).
//!
//! Modules: [`args`] (parsing by hand), [`resolve`] (targets to instances), [`status`],
//! [`tail`], [`call`], [`descriptors`] (reflection, descriptor sets), [`codec`] (messages as
//! their bytes), [`error`], [`terminal`] (server text made safe to print).

mod args;
mod call;
mod codec;
mod descriptors;
mod error;
mod resolve;
mod status;
mod tail;
mod terminal;

use args::Command;
use error::Error;

fn main() {
    let code = match args::parse(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            print!("{}", args::USAGE);
            0
        }
        Ok(Command::Version) => {
            println!("meshless {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Ok(command) => match run(command) {
            Ok(()) => 0,
            Err(error) => report(&error),
        },
        Err(error) => report(&error),
    };
    std::process::exit(code);
}

fn report(error: &Error) -> i32 {
    // Errors quote what servers said (status messages): escaped for the terminal.
    eprintln!("error: {}", terminal::printable(&error.to_string()));
    if error.is_usage() {
        eprintln!("(meshless --help lists the commands and their flags)");
    }
    error.exit_code()
}

fn run(command: Command) -> Result<(), Error> {
    // One thread: the command waits on the network, and a small binary starts fast.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| Error::new(format!("cannot start the runtime: {error}")))?;
    let outcome = runtime.block_on(async {
        match command {
            Command::Status(args) => status::run(args).await,
            Command::Tail(args) => tail::run(args).await,
            Command::Call(args) => call::run(args).await,
            Command::Help | Command::Version => Ok(()),
        }
    });
    // Background tasks (DNS lookups, connections) end with the runtime, without waiting.
    runtime.shutdown_background();
    outcome
}
