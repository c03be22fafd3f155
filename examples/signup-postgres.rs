//! The sign-up flow with its data in Postgres. The Users service inserts each user and
//! publishes its `UserSignedUp` event in one transaction: a sign-up that fails (an e-mail
//! address already taken) rolls back, and no observer ever hears of it. WelcomeEmail records
//! each e-mail it sends in its own table, in the same transaction as the event's place in its
//! cursor (`PgCursors`): every user gets exactly one e-mail, across crashes and restarts too.
//! No broker, no process beside the services, no `LISTEN`/`NOTIFY`.
//!
//! Run it against a local Postgres, in two commands:
//!
//! ```text
//! docker run -d --rm --name meshless-pg -p 127.0.0.1:5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:17
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo run --example signup-postgres --features postgres
//! ```
//!
//! Run it again: the stream `users-0` continues its epoch and sequences, and WelcomeEmail
//! resumes after the last event it handled, greeting only the new users.

use std::time::Duration;

use meshless::events::postgres::sqlx::{self, PgPool};
use meshless::events::postgres::PgCursors;
use meshless::events::{Event, HandlerError, ObserverOptions};
use meshless::{Code, Request, Response, Server, Status};
use tokio::net::TcpListener;

mod proto {
    #![allow(dead_code, unreachable_pub, missing_docs)]
    meshless::include_proto!("signup.v1");
}

use proto::{
    GetUserRequest, SignUpReply, SignUpRequest, User, UserSignedUpEvent, UserSignedUpObserver,
    UsersClient, UsersHandler, UsersObserver, UsersPublisher, UsersService,
};

/// The tables of the two services (each would have its own database; here they share one).
const TABLES: &str = "
CREATE TABLE IF NOT EXISTS users (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email text NOT NULL UNIQUE,
    name text NOT NULL
);
CREATE TABLE IF NOT EXISTS welcome_emails (
    user_id bigint PRIMARY KEY,
    email text NOT NULL,
    sent_at timestamptz NOT NULL DEFAULT now()
);";

/// The Users service: a user and its event, in one transaction.
struct Users {
    pool: PgPool,
    publisher: UsersPublisher,
}

fn unavailable(error: sqlx::Error) -> Status {
    Status::unavailable(format!("the database: {error}"))
}

impl UsersHandler for Users {
    async fn sign_up(
        &self,
        request: Request<SignUpRequest>,
    ) -> Result<Response<SignUpReply>, Status> {
        let SignUpRequest { email, name } = request.into_inner();
        if !email.contains('@') {
            return Err(Status::invalid_argument(format!(
                "`{email}` is not an e-mail address"
            )));
        }
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let inserted: Result<i64, sqlx::Error> =
            sqlx::query_scalar("INSERT INTO users (email, name) VALUES ($1, $2) RETURNING id")
                .bind(&email)
                .bind(&name)
                .fetch_one(&mut *tx)
                .await;
        let id = match inserted {
            Ok(id) => u64::try_from(id).unwrap_or(0),
            // Dropping `tx` rolls it back: nothing was published.
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
                return Err(Status::already_exists(format!(
                    "{email} has already signed up"
                )))
            }
            Err(error) => return Err(unavailable(error)),
        };
        let user = User { id, email, name };
        self.publisher
            .publish_user_signed_up_in(&mut tx, UserSignedUpEvent { user: Some(user) })
            .await
            .map_err(unavailable)?;
        // Commits, and has the event served at once.
        self.publisher.commit(tx).await.map_err(unavailable)?;
        Ok(Response::new(SignUpReply { id }))
    }

    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let id = request.get_ref().id;
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT email, name FROM users WHERE id = $1")
                .bind(i64::try_from(id).unwrap_or(-1))
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
        match row {
            Some((email, name)) => Ok(Response::new(User { id, email, name })),
            None => Err(Status::not_found(format!("no user with id {id}"))),
        }
    }
}

/// WelcomeEmail: one e-mail per user, recorded with the event's place in its cursor.
struct WelcomeEmail {
    cursors: PgCursors,
}

impl UserSignedUpObserver for WelcomeEmail {
    async fn user_signed_up(&self, event: Event<UserSignedUpEvent>) -> Result<(), HandlerError> {
        // `None`: this event was handled before (its transaction committed).
        let Some(mut tx) = self.cursors.begin(&event).await? else {
            return Ok(());
        };
        let user = event.message().user.clone().unwrap_or_default();
        // Sending the e-mail would go here; what matters is that it is recorded once.
        sqlx::query("INSERT INTO welcome_emails (user_id, email) VALUES ($1, $2)")
            .bind(i64::try_from(user.id).unwrap_or(-1))
            .bind(&user.email)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        println!(
            "welcome-email: welcomed {} (event {} of epoch {:#x})",
            user.email,
            event.cursor().sequence,
            event.cursor().epoch
        );
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    if let Err(error) = run().await {
        eprintln!("signup-postgres: {error}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").map_err(|_| {
        "set DATABASE_URL to a Postgres database, for example \
         DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres (see the example's doc for \
         a server in one command)"
    })?;
    let pool = PgPool::connect(&url)
        .await
        .map_err(|error| format!("connecting to {url}: {error}"))?;
    sqlx::raw_sql(TABLES).execute(&pool).await?;

    // The stream belongs to the name "users-0", not to this process or machine.
    let publisher = UsersPublisher::open_postgres(&pool, "users-0").await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let target = format!("ipv4:{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder()
            .add_service(UsersService::with_publisher(
                Users {
                    pool: pool.clone(),
                    publisher: publisher.clone(),
                },
                publisher.clone(),
            ))
            .serve_with_listener(listener, async {
                let _ = stopped.await;
            }),
    );
    println!(
        "users-0 serves {target}, its events in Postgres (epoch {:#x})",
        publisher.as_publisher().epoch()
    );

    let cursors = PgCursors::open(&pool, "welcome-email").await?;
    let observer = UsersObserver::new()
        .user_signed_up(WelcomeEmail {
            cursors: cursors.clone(),
        })
        .options(ObserverOptions::default().cursor_store(cursors.clone()))
        .start(&target)
        .await?;

    // New addresses at each run, so that a second run signs new users up.
    let run = format!("{:x}", std::process::id());
    let people = [("ada", "Ada"), ("grace", "Grace"), ("alan", "Alan")];
    let client = UsersClient::connect(&target).await?;
    let mut ids = Vec::new();
    for (who, name) in people {
        let email = format!("{who}+{run}@example.com");
        let reply = client
            .sign_up(SignUpRequest {
                email: email.clone(),
                name: name.to_owned(),
            })
            .await?;
        println!("users: signed up {email} as user {}", reply.get_ref().id);
        ids.push(i64::try_from(reply.get_ref().id)?);
    }
    // Signing up again with a taken address fails, and its transaction, event included, rolls
    // back: nobody is welcomed twice.
    let again = client
        .sign_up(SignUpRequest {
            email: format!("ada+{run}@example.com"),
            name: "Ada".to_owned(),
        })
        .await
        .expect_err("a second sign-up with the same address");
    assert_eq!(again.code(), Code::AlreadyExists);
    println!("users: {}", again.message());

    // Every new user is welcomed exactly once.
    let welcomed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let count: i64 =
                sqlx::query_scalar("SELECT count(*) FROM welcome_emails WHERE user_id = ANY($1)")
                    .bind(&ids)
                    .fetch_one(&pool)
                    .await?;
            if count == ids.len() as i64 {
                return Ok::<_, sqlx::Error>(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    match welcomed {
        Ok(result) => result?,
        Err(_) => return Err("the new users were not all welcomed within 10 s".into()),
    }
    let (users, emails): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM welcome_emails)",
    )
    .fetch_one(&pool)
    .await?;
    println!("in the database: {users} users, {emails} welcome e-mails, one each");

    observer.stop().await;
    cursors.save().await?;
    let _ = stop.send(());
    server.await??;
    publisher.as_publisher().release().await;
    Ok(())
}
