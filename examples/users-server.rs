//! A standalone Users instance, for other programs (any gRPC client) to call and observe.
//!
//! Run with: cargo run --example users-server -- --listen 127.0.0.1:50051 [--data-dir DIR]
//!
//! With `--data-dir`, its sign-up events are kept in files there and survive a crash or a
//! restart of the process (observers resume where they stopped).

#[path = "shared/users.rs"]
mod users;

use std::net::SocketAddr;

use meshless::Server;
use users::proto::{UsersPublisher, UsersService};
use users::Users;

const USAGE: &str = "usage: users-server --listen ADDR:PORT [--name NAME] [--data-dir DIR]";

#[tokio::main]
async fn main() {
    if let Err(error) = run().await {
        eprintln!("users-server: {error}");
        std::process::exit(2);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen: Option<SocketAddr> = None;
    let mut name = String::from("users");
    let mut data_dir: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                let value = args.next().ok_or(USAGE)?;
                listen = Some(
                    value
                        .parse()
                        .map_err(|e| format!("--listen {value}: {e}\n{USAGE}"))?,
                );
            }
            "--name" => name = args.next().ok_or(USAGE)?,
            "--data-dir" => data_dir = Some(args.next().ok_or(USAGE)?),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument `{other}`\n{USAGE}").into()),
        }
    }
    let listen = listen.ok_or(USAGE)?;

    let listener = tokio::net::TcpListener::bind(listen).await?;
    let publisher = match &data_dir {
        Some(dir) => UsersPublisher::open(dir)?,
        None => UsersPublisher::new(),
    };
    println!(
        "{name} serving signup.v1.Users on {}",
        listener.local_addr()?
    );
    Server::builder()
        .reflection(true)
        .add_service(UsersService::with_publisher(
            Users::new(name, Default::default(), publisher.clone()),
            publisher,
        ))
        .serve_with_listener(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    println!("stopped");
    Ok(())
}
