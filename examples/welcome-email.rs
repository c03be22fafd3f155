//! A standalone WelcomeEmail service: observes the sign-ups of every Users instance of a
//! target and "sends" a welcome e-mail for each, until interrupted. Run several: they form one
//! consumer group, and each sign-up is handled by one of them.
//!
//! Run with: cargo run --example welcome-email -- --target ipv4:127.0.0.1:50051,127.0.0.1:50052

#[path = "shared/observers.rs"]
mod observers;
#[path = "shared/users.rs"]
mod users;

use meshless::events::ObserverOptions;
use observers::WelcomeEmail;
use users::proto::UsersObserver;

const USAGE: &str = "usage: welcome-email --target TARGET   (dns+srv://..., dns://..., ipv4:...)";

#[tokio::main]
async fn main() {
    if let Err(error) = run().await {
        eprintln!("welcome-email: {error}");
        std::process::exit(2);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let target = match (args.next().as_deref(), args.next()) {
        (Some("--target"), Some(target)) => target,
        _ => return Err(USAGE.into()),
    };
    let observer = UsersObserver::new()
        .user_signed_up(WelcomeEmail::named(
            &format!("welcome-email (pid {})", std::process::id()),
            &Default::default(),
        ))
        .options(ObserverOptions::default().consumer_group(WelcomeEmail::GROUP))
        .start(&target)
        .await?;
    println!("welcome-email observing {target}; Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    observer.stop().await;
    println!("stopped");
    Ok(())
}
