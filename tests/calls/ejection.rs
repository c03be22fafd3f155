//! Ejection of failing instances never leaves calls with nothing to go to.

use meshless::{Channel, Code};

use crate::support::{self, request, served_by, Echo, EchoClient, EchoRequest, Running};

fn failing(code: Code) -> EchoRequest {
    EchoRequest {
        fail_with_code: code as i32,
        ..request("fail")
    }
}

#[tokio::test]
async fn the_only_ready_instance_is_not_ejected_while_the_other_cannot_connect() {
    let echo = Running::echo(Echo::named("e")).await;
    let channel = Channel::connect(&format!(
        "ipv4:{},{}",
        support::dead_port().await,
        echo.addr
    ))
    .await
    .unwrap();
    support::eventually("the live instance is ready", || {
        channel.ready_instances() == 1
    })
    .await;
    let client = EchoClient::new(channel.clone());
    for _ in 0..5 {
        let status = client
            .unary(failing(Code::ResourceExhausted))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    }
    assert_eq!(channel.ready_instances(), 1);
    let reply = client.unary(request("hi")).await.expect("still served");
    assert_eq!(served_by(reply.get_ref()), "e");
    echo.stop().await.unwrap();
}
