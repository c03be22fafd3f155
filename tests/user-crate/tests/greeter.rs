//! The README's guide, run: serve the handler on 127.0.0.1:0 and call it with the client.

use meshless::{Code, Server};
use meshless_user_crate::greeter::{GreeterClient, GreeterService, HelloRequest};
use meshless_user_crate::Greeter;

#[tokio::test]
async fn the_guide_works_end_to_end() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder()
            .add_service(GreeterService::new(Greeter))
            .serve_with_listener(listener, async {
                let _ = stopped.await;
            }),
    );

    let client = GreeterClient::connect(format!("ipv4:{addr}"))
        .await
        .unwrap();
    let reply = client
        .say_hello(HelloRequest { name: "Ada".into() })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "Hello, Ada!");
    let status = client.say_hello(HelloRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[test]
fn the_readme_shows_this_crates_proto() {
    let readme = include_str!("../../../README.md");
    let proto = include_str!("../proto/greeter/v1/greeter.proto");
    assert!(
        readme.contains(proto.trim()),
        "README's proto differs from proto/greeter/v1/greeter.proto"
    );
}
