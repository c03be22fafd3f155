use super::*;

fn parse_args(line: &str) -> Result<Command, Error> {
    parse(line.split_whitespace().map(str::to_owned))
}

#[test]
fn status_with_flags_anywhere() {
    let command =
        parse_args("status --json dns+srv:///users.service.consul --timeout 1s").expect("parses");
    assert_eq!(
        command,
        Command::Status(StatusArgs {
            target: "dns+srv:///users.service.consul".into(),
            json: true,
            watch: false,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            headers: Headers::default(),
        })
    );
    let Command::Status(watch) =
        parse_args("status ipv4:127.0.0.1:1 --watch --interval=500ms").expect("parses")
    else {
        panic!("not status");
    };
    assert!(watch.watch);
    assert_eq!(watch.interval, Duration::from_millis(500));
}

#[test]
fn tail_and_call() {
    let Command::Tail(tail) = parse_args(
        "tail ipv4:127.0.0.1:1 testing.orders.v1.Orders/OrderLogged --from live --group billing --count 3",
    )
    .expect("parses") else {
        panic!("not tail");
    };
    assert_eq!(tail.method.path(), "/testing.orders.v1.Orders/OrderLogged");
    assert_eq!(tail.from, From::Live);
    assert_eq!(tail.group.as_deref(), Some("billing"));
    assert_eq!(tail.count, Some(3));

    let command = parse(
        [
            "call",
            "ipv4:127.0.0.1:1",
            "/testing.orders.v1.Orders/Change",
            r#"{"order": {"id": "a"}}"#,
        ]
        .map(String::from),
    )
    .expect("parses");
    let Command::Call(call) = command else {
        panic!("not call")
    };
    assert_eq!(call.method.service, "testing.orders.v1.Orders");
    assert_eq!(call.method.method, "Change");
    assert_eq!(call.json, r#"{"order": {"id": "a"}}"#);
    assert_eq!(call.timeout, Duration::from_secs(10));
    // grpcurl's dotted form.
    let dotted = MethodName::parse("testing.orders.v1.Orders.Change").expect("parses");
    assert_eq!(dotted.path(), "/testing.orders.v1.Orders/Change");
}

#[test]
fn clear_errors() {
    let message = |line: &str| parse_args(line).expect_err(line).to_string();
    assert_eq!(
        message("status ipv4:127.0.0.1:1 --jsn"),
        "unknown flag `--jsn` for `meshless status`: it takes --json, --watch, --interval, --timeout, --header"
    );
    assert_eq!(
        message("tail ipv4:127.0.0.1:1"),
        "`meshless tail` needs <target> <package.Service/Event>: missing <package.Service/Event>"
    );
    assert_eq!(message("tail x y --count"), "--count needs a value");
    assert_eq!(
        message("tail x a.B/C --count 0"),
        "--count takes a positive number, not `0`"
    );
    assert_eq!(
        message("tail x a.B/C --from newest"),
        "--from takes oldest or live, not `newest`"
    );
    assert_eq!(
        message("status x --timeout soon"),
        "--timeout takes a duration such as 500ms, 2s or 1m, not `soon`"
    );
    assert_eq!(
        message("status x y"),
        "`meshless status` takes <target>: unexpected `y`"
    );
    assert_eq!(
        message("status x --interval 1s"),
        "--interval goes with --watch"
    );
    assert!(message("watch x").starts_with("unknown command `watch`"));
    assert!(message("call x Method {}").contains("not a method"));
    assert_eq!(parse_args("status x --help").expect("help"), Command::Help);
    assert_eq!(parse_args("").expect("help"), Command::Help);
}

#[test]
fn headers_repeat() {
    let Command::Call(call) = parse(
        [
            "call",
            "x",
            "a.B/C",
            "{}",
            "--header",
            "authorization: Bearer t",
            "--header=x-team:billing",
        ]
        .map(String::from),
    )
    .expect("parses") else {
        panic!("not call")
    };
    let headers: Vec<(String, String)> = call
        .headers
        .0
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().expect("ASCII").to_owned()))
        .collect();
    assert_eq!(
        headers,
        [
            ("authorization".to_owned(), "Bearer t".to_owned()),
            ("x-team".to_owned(), "billing".to_owned())
        ]
    );
    let error = parse_args("status x --header nocolon").expect_err("no colon");
    assert!(error
        .to_string()
        .starts_with("--header takes 'name: value'"));
}

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
    assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
    assert_eq!(parse_duration("0s"), Err(BadDuration::Unreadable));
    assert_eq!(parse_duration("-1s"), Err(BadDuration::Unreadable));
    assert_eq!(parse_duration("2 days"), Err(BadDuration::Unreadable));
}

#[test]
fn durations_are_at_most_a_year() {
    assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
    assert_eq!(parse_duration("8760.5h"), Err(BadDuration::TooLong));
    assert_eq!(parse_duration("31536001"), Err(BadDuration::TooLong));
    // Past what a `Duration` holds: too long all the same, not a panic.
    let huge = "9".repeat(40);
    assert_eq!(parse_duration(&huge), Err(BadDuration::TooLong));
    assert_eq!(
        parse_duration(&format!("{huge}h")),
        Err(BadDuration::TooLong)
    );
    let message = |line: &str| parse_args(line).expect_err(line).to_string();
    assert_eq!(
        message("call x a.B/C {} --timeout 99999999999999999999h"),
        "--timeout takes at most a year (8760h), not `99999999999999999999h`"
    );
    assert_eq!(
        message("status x --watch --interval 9000h"),
        "--interval takes at most a year (8760h), not `9000h`"
    );
    let Command::Tail(tail) = parse_args("tail x a.B/C --timeout 8760h").expect("a year") else {
        panic!("not tail");
    };
    // The deadlines the commands compute hold it.
    assert!(tokio::time::Instant::now()
        .checked_add(tail.timeout)
        .is_some());
}
