//! The sign-up flow, request-response half: two Users instances registered in an in-process
//! DNS server (standing in for Consul), and a client that finds them through an SRV target.
//!
//! Run with: cargo run --example signup

#[path = "shared/users.rs"]
mod users;

use std::sync::{Arc, Mutex};

use meshless::testing::TestDns;
use meshless::{Code, Server};
use tokio::net::TcpListener;
use users::proto::{GetUserRequest, SignUpRequest, UsersClient, UsersService};
use users::{Store, Users, SERVED_BY};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Consul's DNS interface, in process: `users.service.consul` lists the instances.
    let dns = TestDns::start("service.consul").await?;
    println!("DNS for service.consul on {}", dns.addr());

    // Two Users instances on free ports of this machine, sharing one store.
    let store = Arc::new(Mutex::new(Store::default()));
    let mut addrs = Vec::new();
    let mut stops = Vec::new();
    let mut servers = Vec::new();
    for name in ["users-1", "users-2"] {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        addrs.push(listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop);
        let service = UsersService::new(Users::new(name, store.clone()));
        servers.push(tokio::spawn(
            Server::builder()
                .add_service(service)
                .serve_with_listener(listener, async {
                    let _ = stopped.await;
                }),
        ));
        let addr = *addrs.last().unwrap();
        let node = format!("{name}.node.service.consul");
        dns.add_ip(&node, addr.ip()).await?;
        dns.add_srv("users.service.consul", 1, 1, addr.port(), &node)
            .await?;
        println!("{name} serving on {addr}, registered as users.service.consul");
    }

    // One client for both, straight to the instances: calls are spread over them.
    let target = dns.srv_target("users.service.consul");
    let client = UsersClient::connect(&target).await?;
    println!("client calling {target}");

    let people = [
        ("ada@example.com", "Ada"),
        ("grace@example.com", "Grace"),
        ("alan@example.com", "Alan"),
    ];
    for (email, name) in people {
        let reply = client
            .sign_up(SignUpRequest {
                email: email.into(),
                name: name.into(),
            })
            .await?;
        println!(
            "signed up {name:<6} as id {} (served by {})",
            reply.get_ref().id,
            served_by(&reply)
        );
    }

    let user = client.get_user(GetUserRequest { id: 2 }).await?;
    println!(
        "user 2 is {} <{}> (served by {})",
        user.get_ref().name,
        user.get_ref().email,
        served_by(&user)
    );

    // Errors arrive as gRPC status codes with their messages.
    let again = client
        .sign_up(SignUpRequest {
            email: "ada@example.com".into(),
            name: "Ada".into(),
        })
        .await
        .expect_err("a second sign-up with the same address fails");
    assert_eq!(again.code(), Code::AlreadyExists);
    println!(
        "signing Ada up again: {:?}: {}",
        again.code(),
        again.message()
    );
    let missing = client
        .get_user(GetUserRequest { id: 42 })
        .await
        .expect_err("there is no user 42");
    assert_eq!(missing.code(), Code::NotFound);
    println!("user 42: {:?}: {}", missing.code(), missing.message());

    for stop in stops {
        let _ = stop.send(());
    }
    for server in servers {
        server.await??;
    }
    dns.stop().await;
    println!("done: {} sign-ups, both instances shut down", people.len());
    Ok(())
}

fn served_by<T>(response: &meshless::Response<T>) -> &str {
    response
        .metadata()
        .get(SERVED_BY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
}
