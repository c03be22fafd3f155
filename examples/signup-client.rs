//! Signs one user up through any target, as a client of the Users service.
//!
//! Run with: cargo run --example signup-client -- --target ipv4:127.0.0.1:50051 --email ada@example.com --name Ada

#[path = "shared/users.rs"]
mod users;

use users::proto::{SignUpRequest, UsersClient};

const USAGE: &str = "usage: signup-client --target TARGET --email EMAIL --name NAME";

#[tokio::main]
async fn main() {
    if let Err(error) = run().await {
        eprintln!("signup-client: {error}");
        std::process::exit(2);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (mut target, mut email, mut name) = (None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or(USAGE)?;
        match arg.as_str() {
            "--target" => target = Some(value),
            "--email" => email = Some(value),
            "--name" => name = Some(value),
            _ => return Err(format!("unknown argument `{arg}`\n{USAGE}").into()),
        }
    }
    let (Some(target), Some(email), Some(name)) = (target, email, name) else {
        return Err(USAGE.into());
    };
    let client = UsersClient::connect(&target).await?;
    let reply = client.sign_up(SignUpRequest { email, name }).await?;
    println!("signed up as id {}", reply.get_ref().id);
    Ok(())
}
