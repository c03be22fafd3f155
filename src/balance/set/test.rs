//! The set's membership, ejections and waits for an instance, with paused time where it waits.

use super::*;

fn set_with_one_connecting_instance(wait_timeout: Duration) -> (Arc<InstanceSet>, Arc<Instance>) {
    let settings = Settings {
        connector: crate::endpoint::Connector::default(),
        wait_timeout,
        reconnect_backoff: Duration::from_millis(100),
        reconnect_backoff_max: Duration::from_secs(1),
        ejection: Ejection::default(),
    };
    let (set, _) = InstanceSet::new("ipv4:127.0.0.1:1".into(), settings, Arc::default());
    // No connection task: the test decides when the instance connects.
    let instance = Arc::new(Instance::new(
        "127.0.0.1:1".into(),
        tonic::transport::Endpoint::from_static("http://127.0.0.1:1"),
        Placement::default(),
    ));
    set.lock_all().push(instance.clone());
    (set, instance)
}

fn connected(set: &InstanceSet, key: &str) -> Arc<Instance> {
    let instance = Arc::new(Instance::new(
        key.into(),
        tonic::transport::Endpoint::from_static("http://127.0.0.1:1"),
        Placement::default(),
    ));
    instance.connected(crate::balance::connection::Connection::Tonic(
        instance.endpoint.connect_lazy(),
    ));
    set.lock_all().push(instance.clone());
    set.rebuild_ready();
    instance
}

fn fail(set: &Arc<InstanceSet>, instance: &Instance, times: u32) {
    for _ in 0..times {
        set.count_outcome(instance, Some(Failure::Status(tonic::Code::Unavailable)));
    }
}

#[tokio::test]
async fn an_ejected_instance_is_picked_when_it_is_all_that_is_left() {
    let (set, _) = set_with_one_connecting_instance(Duration::from_secs(1));
    set.remove("127.0.0.1:1");
    let (a, _b) = (connected(&set, "a:1"), connected(&set, "b:1"));
    fail(&set, &a, super::super::failure::EJECT_AFTER_FAILURES);
    assert!(a.is_ejected());
    assert_eq!(set.ready_count(), 1);
    set.remove("b:1");
    assert_eq!(set.ready_count(), 1, "the ejected instance is back");
    let (picked, _) = set.pick(None, &[], None).await.expect("a is picked");
    assert_eq!(picked.key, "a:1");
}

#[tokio::test]
async fn a_connection_that_cannot_be_made_asks_discovery_to_look_again() {
    let refresh = Arc::new(Notify::new());
    let settings = Settings {
        connector: crate::endpoint::Connector::default(),
        wait_timeout: Duration::from_secs(1),
        reconnect_backoff: Duration::from_millis(100),
        reconnect_backoff_max: Duration::from_secs(1),
        ejection: Ejection::default(),
    };
    let (set, _) = InstanceSet::new("ipv4:127.0.0.1:1".into(), settings, refresh.clone());
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    set.upsert(dead.to_string(), Placement::default())
        .expect("an instance");
    tokio::time::timeout(Duration::from_secs(5), refresh.notified())
        .await
        .expect("discovery was asked to look again");
}

#[tokio::test]
async fn two_instances_failing_at_once_are_never_both_ejected() {
    for _ in 0..300 {
        let (set, _) = set_with_one_connecting_instance(Duration::from_secs(1));
        set.remove("127.0.0.1:1");
        let both = [connected(&set, "a:1"), connected(&set, "b:1")];
        for instance in &both {
            fail(
                &set,
                instance,
                super::super::failure::EJECT_AFTER_FAILURES - 1,
            );
        }
        let start = Arc::new(std::sync::Barrier::new(2));
        let threads: Vec<_> = both
            .iter()
            .map(|instance| {
                let (set, instance, start) = (set.clone(), instance.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    set.count_outcome(&instance, Some(Failure::Broken));
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("a failing thread");
        }
        assert_eq!(both.iter().filter(|i| i.is_ejected()).count(), 1);
        assert_eq!(set.ready_count(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_waits_for_a_connecting_instance_until_its_deadline() {
    let (set, _instance) = set_with_one_connecting_instance(Duration::from_secs(3600));
    let started = Instant::now();
    let error = set
        .pick(Some(started + Duration::from_secs(2)), &[], None)
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::DeadlineExceeded);
    assert!(
        error
            .message()
            .contains("connected in time (1 still connecting"),
        "{}",
        error.message()
    );
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn without_a_deadline_a_call_waits_the_wait_timeout() {
    let (set, _instance) = set_with_one_connecting_instance(Duration::from_secs(10));
    let started = Instant::now();
    set.pick(None, &[], None).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn a_waiting_call_proceeds_as_soon_as_an_instance_connects() {
    let (set, instance) = set_with_one_connecting_instance(Duration::from_secs(10));
    let started = Instant::now();
    let waiting = tokio::spawn({
        let set = set.clone();
        async move {
            set.pick(None, &[], None)
                .await
                .map(|(picked, _)| picked.key.clone())
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    instance.connected(crate::balance::connection::Connection::Tonic(
        instance.endpoint.connect_lazy(),
    ));
    set.rebuild_ready();
    assert_eq!(waiting.await.unwrap().unwrap(), "127.0.0.1:1");
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

#[tokio::test]
async fn failed_instances_are_not_picked_and_fail_fast() {
    let (set, instance) = set_with_one_connecting_instance(Duration::from_secs(3600));
    instance.connected(crate::balance::connection::Connection::Tonic(
        instance.endpoint.connect_lazy(),
    ));
    set.rebuild_ready();
    assert!(set.pick(None, &[], None).await.is_ok());
    set.report_failure(&instance, "connection refused".into());
    let error = set.pick(None, &[], None).await.unwrap_err();
    assert!(
        error
            .message()
            .contains("1 failing to connect; 127.0.0.1:1: connection refused"),
        "{}",
        error.message()
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_racing_a_connection_waits_for_the_ready_snapshot() {
    let (set, instance) = set_with_one_connecting_instance(Duration::from_secs(3600));
    // Connected, and the ready snapshot not rebuilt yet: the call must not fail as if the
    // instance could not connect.
    instance.connected(crate::balance::connection::Connection::Tonic(
        instance.endpoint.connect_lazy(),
    ));
    let waiting = tokio::spawn({
        let set = set.clone();
        async move {
            set.pick(None, &[], None)
                .await
                .map(|(instance, _)| instance.key.to_string())
        }
    });
    tokio::task::yield_now().await;
    set.rebuild_ready();
    assert_eq!(waiting.await.unwrap().unwrap(), "127.0.0.1:1");
}

#[tokio::test]
async fn an_instances_calls_end_once_each_answered_as_succeeded_and_refused_or_given_up_as_failed()
{
    let (_set, instance) = set_with_one_connecting_instance(Duration::from_secs(1));
    drop(instance.start_call());
    instance.start_call().failed();
    instance.start_call().abandoned();
    let open = instance.start_call();
    let calls = instance.calls.read();
    assert_eq!(
        (calls.started, calls.succeeded, calls.failed),
        (4, 1, 2),
        "the call in flight has not ended"
    );
    assert!(calls.last_started.is_some());
    drop(open);
    assert_eq!(instance.calls.read().succeeded, 2);
}
