//! Authorization with `Server::layer`: a Users instance admits only callers with a known bearer
//! token, on every path it serves (calls, the sign-up event stream, consumer group
//! acknowledgements, health). The layer says who the caller is with a `PeerIdentity`, and a
//! consumer group member belongs to the identity that joined it.
//!
//! Run with: cargo run --example authorization

#[path = "shared/observers.rs"]
mod observers;
#[path = "shared/users.rs"]
mod users;

use std::sync::{Arc, Mutex};

use meshless::events::ObserverOptions;
use meshless::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use meshless::{Channel, PeerIdentity, Request, Server, Status};
use observers::{Log, WelcomeEmail};
use tokio::net::TcpListener;
use users::proto::{SignUpRequest, UsersClient, UsersObserver, UsersPublisher, UsersService};
use users::{Store, Users};

/// The tokens this service knows, and whose they are. A real service verifies a JWT or asks
/// its identity provider here.
const TOKENS: [(&str, &str); 2] = [
    ("signup-web-secret", "signup-web"),
    ("mailer-secret", "welcome-email"),
];

/// The authorization layer: refuses calls without a known bearer token, and says who made the
/// others.
fn bearer_token(mut request: Request<()>) -> Result<Request<()>, Status> {
    let token = request
        .metadata()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let caller = TOKENS
        .iter()
        .find(|(known, _)| Some(*known) == token)
        .map(|(_, caller)| *caller)
        .ok_or_else(|| Status::unauthenticated("a valid bearer token is required"))?;
    request.extensions_mut().insert(PeerIdentity::new(caller));
    Ok(request)
}

fn bearer(token: &str) -> (AsciiMetadataKey, AsciiMetadataValue) {
    let value = format!("Bearer {token}").parse().expect("a token is ASCII");
    (AsciiMetadataKey::from_static("authorization"), value)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let target = format!("ipv4:{}", listener.local_addr()?);
    let publisher = UsersPublisher::new();
    let users = Users::new(
        "users-1",
        Arc::new(Mutex::new(Store::default())),
        publisher.clone(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder()
            .layer(meshless::server::InterceptorLayer::new(bearer_token))
            .add_service(UsersService::with_publisher(users, publisher))
            .serve_with_listener(listener, async {
                let _ = stopped.await;
            }),
    );

    // Without a token: refused, whatever the path.
    let anonymous = UsersClient::connect(&target).await?;
    let refused = anonymous
        .sign_up(SignUpRequest {
            email: "eve@example.com".into(),
            name: "Eve".into(),
        })
        .await
        .expect_err("a call without a token is refused");
    println!(
        "without a token: {:?}: {}",
        refused.code(),
        refused.message()
    );

    // The welcome e-mail service subscribes with its own token, in a consumer group.
    let sent = Log::default();
    let (key, value) = bearer("mailer-secret");
    let mailer = UsersObserver::new()
        .user_signed_up(WelcomeEmail::named("welcome-email-1", &sent))
        .options(
            ObserverOptions::default()
                .consumer_group(WelcomeEmail::GROUP)
                .metadata(key, value),
        )
        .start(&target)
        .await?;

    // The sign-up web front end calls with its token.
    let (key, value) = bearer("signup-web-secret");
    let web = UsersClient::new(
        Channel::builder()
            .metadata(key, value)
            .connect(&target)
            .await?,
    );
    let reply = web
        .sign_up(SignUpRequest {
            email: "ada@example.com".into(),
            name: "Ada".into(),
        })
        .await?;
    println!("with a token: signed up user {}", reply.get_ref().id);

    tokio::time::timeout(std::time::Duration::from_secs(10), sent.until(1)).await?;
    mailer.stop().await;
    let _ = stop.send(());
    server.await??;
    println!("done: {:?}", sent.entries());
    Ok(())
}
