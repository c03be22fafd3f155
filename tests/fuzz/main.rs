//! Property-based fuzzing (proptest, run by `cargo test`): the event wire decoding and the
//! target parser never panic and round-trip what they should, and a running producer answers
//! any `Subscribe` whatsoever with a stream or a clear status.

#[path = "../support/mod.rs"]
mod support;

use meshless::events::{Envelope, EVENT_METADATA_FIELD};
use meshless::v1::{
    filter_value, Cursor, EventMetadata, FieldFilter, Filter, FilterValue, Subscribe,
};
use meshless::{Code, Target};
use proptest::prelude::*;
use prost::Message;
use support::{EchoClient, EchoPublisher, EchoedEvent, Running};

fn metadata() -> impl Strategy<Value = EventMetadata> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<i64>(),
        any::<u64>(),
        any::<u32>(),
        any::<bool>(),
        any::<u64>(),
        // Trace context, well formed or not: the observer takes what the propagator accepts.
        "(00-[0-9a-f]{32}-[0-9a-f]{16}-0[01])?|.{0,60}",
        ".{0,40}",
        proptest::collection::vec(any::<u8>(), 0..24),
    )
        .prop_map(
            |(
                epoch,
                sequence,
                published_at_unix_micros,
                missed,
                delivery_count,
                heartbeat,
                previous_epoch,
                traceparent,
                tracestate,
                key,
            )| {
                EventMetadata {
                    epoch,
                    sequence,
                    published_at_unix_micros,
                    missed,
                    delivery_count,
                    heartbeat,
                    previous_epoch,
                    traceparent,
                    tracestate,
                    key,
                }
            },
        )
}

/// An event as a publisher sends it: the message, then its metadata field.
fn wire(event: &EchoedEvent, metadata: &EventMetadata) -> Vec<u8> {
    let mut bytes = event.encode_to_vec();
    prost::encoding::message::encode(EVENT_METADATA_FIELD, metadata, &mut bytes);
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_bytes_decode_to_an_event_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::<EchoedEvent>::decode(bytes.as_slice());
        let _ = EventMetadata::decode(bytes.as_slice());
        let _ = Subscribe::decode(bytes.as_slice());
    }

    #[test]
    fn events_and_their_metadata_round_trip(message in ".{0,64}", metadata in metadata()) {
        let event = EchoedEvent { message };
        let bytes = wire(&event, &metadata);
        let (decoded, decoded_metadata) = Envelope::<EchoedEvent>::decode(bytes.as_slice())
            .unwrap()
            .into_parts()
            .unwrap();
        prop_assert_eq!(decoded, event.clone());
        prop_assert_eq!(decoded_metadata, metadata);
        // A plain client sees the declared message and skips the metadata.
        prop_assert_eq!(EchoedEvent::decode(bytes.as_slice()).unwrap(), event);
    }

    #[test]
    fn truncated_events_never_panic(message in ".{0,64}", metadata in metadata(), cut in any::<prop::sample::Index>()) {
        let bytes = wire(&EchoedEvent { message }, &metadata);
        let cut = cut.index(bytes.len() + 1);
        let _ = Envelope::<EchoedEvent>::decode(&bytes[..cut]);
    }

    #[test]
    fn any_text_parses_to_a_target_or_an_error(text in "\\PC{0,80}") {
        if let Ok(target) = text.parse::<Target>() {
            // What parses prints as a target that parses to the same.
            prop_assert_eq!(target.to_string().parse::<Target>().unwrap(), target);
        }
    }

    #[test]
    fn target_like_text_never_panics(
        scheme in prop::sample::select(vec!["dns:", "dns://", "dns+srv:", "dns+srv://", "ipv4:", "ipv6:", "http://", "https://", ""]),
        rest in "[a-z0-9.:/\\[\\],_%-]{0,60}",
    ) {
        let text = format!("{scheme}{rest}");
        if let Ok(target) = text.parse::<Target>() {
            prop_assert_eq!(target.to_string().parse::<Target>().unwrap(), target);
        }
    }
}

fn subscribe() -> impl Strategy<Value = Subscribe> {
    (
        proptest::option::of((any::<u64>(), any::<u64>())),
        prop_oneof![Just(String::new()), "[a-z]{1,8}", ".{0,300}"],
        prop_oneof![Just(String::new()), "[a-z]{1,8}", ".{0,300}"],
        any::<i32>(),
        prop_oneof![Just(0u32), any::<u32>()],
        any::<u32>(),
        any::<u32>(),
        any::<i64>(),
        proptest::option::of(filter()),
    )
        .prop_map(
            |(
                after,
                group,
                member,
                start,
                heartbeat_interval_ms,
                lease_ms,
                max_unacknowledged,
                start_time_unix_micros,
                filter,
            )| {
                Subscribe {
                    after: after.map(|(epoch, sequence)| Cursor { epoch, sequence }),
                    group,
                    member,
                    start,
                    heartbeat_interval_ms,
                    lease_ms,
                    max_unacknowledged,
                    start_time_unix_micros,
                    filter,
                }
            },
        )
}

/// Filters on the event's one field, on fields it does not have, with values of every type.
fn filter() -> impl Strategy<Value = Filter> {
    let value = prop_oneof![
        Just(None),
        ".{0,20}".prop_map(|text| Some(filter_value::Value::Text(text))),
        proptest::collection::vec(any::<u8>(), 0..8)
            .prop_map(|bytes| Some(filter_value::Value::Bytes(bytes))),
        any::<i64>().prop_map(|number| Some(filter_value::Value::Int(number))),
        any::<u64>().prop_map(|number| Some(filter_value::Value::Uint(number))),
        any::<bool>().prop_map(|boolean| Some(filter_value::Value::Boolean(boolean))),
    ]
    .prop_map(|value| FilterValue { value });
    let condition = (
        prop_oneof![
            Just("message".to_owned()),
            Just("message.deeper".to_owned()),
            ".{0,300}"
        ],
        proptest::collection::vec(value, 0..4),
        any::<bool>(),
    )
        .prop_map(|(path, any_of, negate)| FieldFilter {
            path,
            any_of,
            negate,
        });
    proptest::collection::vec(condition, 0..20).prop_map(|all_of| Filter { all_of })
}

#[test]
fn a_producer_answers_any_subscription_clearly() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let publisher = EchoPublisher::new();
    let (server, client) = runtime.block_on(async {
        let server = Running::publishing(publisher.clone()).await;
        let client = EchoClient::connect(server.target())
            .await
            .unwrap()
            .into_tonic();
        (server, client)
    });
    for i in 0..3 {
        publisher
            .publish_echoed(EchoedEvent {
                message: i.to_string(),
            })
            .expect("a small event");
    }
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(300));
    runner
        .run(&subscribe(), |request| {
            let result = runtime.block_on(async {
                match client.clone().echoed(request.clone()).await {
                    Ok(response) => {
                        // A stream: its first message (if any comes at once) decodes.
                        let mut stream = response.into_inner();
                        let first = tokio::time::timeout(
                            std::time::Duration::from_millis(20),
                            stream.message(),
                        )
                        .await;
                        match first {
                            Ok(Err(status)) => Err(status),
                            _ => Ok(()),
                        }
                    }
                    Err(status) => Err(status),
                }
            });
            if let Err(status) = result {
                prop_assert!(
                    matches!(
                        status.code(),
                        Code::InvalidArgument
                            | Code::ResourceExhausted
                            | Code::Unavailable
                            | Code::FailedPrecondition
                    ),
                    "{:?} for {:?}",
                    status,
                    request
                );
                prop_assert!(!status.message().is_empty());
                prop_assert!(status.message().len() < 1024, "short status messages");
            }
            Ok(())
        })
        .unwrap();
    runtime.block_on(async {
        drop(client);
        server.stop().await.unwrap();
    });
}
