//! Filters checked against a message and matched on encodings. `meshless.v1.Subscribe` stands
//! in for an event message: it has a nested message, strings, integers of both signs, an enum
//! and repeated fields.

use prost::Message;

use super::*;
use crate::v1::{Cursor, StartPosition, Subscribe};

fn filters() -> Filters {
    Filters::new(Some(EventSchema {
        descriptors: crate::v1::FILE_DESCRIPTOR_SET,
        message: ".meshless.v1.Subscribe",
    }))
}

fn value(value: filter_value::Value) -> FilterValue {
    FilterValue { value: Some(value) }
}

fn text(text: &str) -> FilterValue {
    value(filter_value::Value::Text(text.to_owned()))
}

fn condition(path: &str, any_of: Vec<FilterValue>) -> FieldFilter {
    FieldFilter {
        path: path.to_owned(),
        any_of,
        negate: false,
    }
}

fn compile(conditions: Vec<FieldFilter>) -> Result<EventFilter, String> {
    filters()
        .compile(&v1::Filter { all_of: conditions })
        .map(|filter| filter.expect("a filter with conditions"))
}

fn event(group: &str, sequence: u64, start: StartPosition) -> Vec<u8> {
    Subscribe {
        group: group.to_owned(),
        after: Some(Cursor { epoch: 7, sequence }),
        start: start as i32,
        ..Subscribe::default()
    }
    .encode_to_vec()
}

#[test]
fn equality_and_membership_on_strings_nested_integers_and_enums() {
    let eu = compile(vec![condition("group", vec![text("eu"), text("us")])]).unwrap();
    assert!(eu.matches(&event("eu", 1, StartPosition::Live)));
    assert!(eu.matches(&event("us", 1, StartPosition::Live)));
    assert!(!eu.matches(&event("asia", 1, StartPosition::Live)));
    // An unset string is empty.
    assert!(!eu.matches(&event("", 1, StartPosition::Live)));

    let nested = compile(vec![condition(
        "after.sequence",
        vec![
            value(filter_value::Value::Uint(5)),
            value(filter_value::Value::Int(9)),
        ],
    )])
    .unwrap();
    assert!(nested.matches(&event("eu", 5, StartPosition::Live)));
    assert!(nested.matches(&event("eu", 9, StartPosition::Live)));
    assert!(!nested.matches(&event("eu", 6, StartPosition::Live)));
    // A field under an unset message has its default value.
    let zero = compile(vec![condition(
        "after.sequence",
        vec![value(filter_value::Value::Uint(0))],
    )])
    .unwrap();
    assert!(zero.matches(&Subscribe::default().encode_to_vec()));

    let by_name = compile(vec![condition("start", vec![text("START_POSITION_LIVE")])]).unwrap();
    let by_number = compile(vec![condition(
        "start",
        vec![value(filter_value::Value::Int(StartPosition::Live as i64))],
    )])
    .unwrap();
    for filter in [&by_name, &by_number] {
        assert!(filter.matches(&event("eu", 1, StartPosition::Live)));
        assert!(!filter.matches(&event("eu", 1, StartPosition::Oldest)));
    }
}

#[test]
fn every_condition_must_hold_and_not_inverts_one() {
    let mut not_live = condition("start", vec![text("START_POSITION_LIVE")]);
    not_live.negate = true;
    let filter = compile(vec![condition("group", vec![text("eu")]), not_live]).unwrap();
    assert!(filter.matches(&event("eu", 1, StartPosition::Oldest)));
    assert!(!filter.matches(&event("eu", 1, StartPosition::Live)));
    assert!(!filter.matches(&event("us", 1, StartPosition::Oldest)));
}

#[test]
fn a_filter_without_conditions_is_none() {
    assert!(filters().compile(&v1::Filter::default()).unwrap().is_none());
}

#[test]
fn paths_and_values_that_do_not_fit_are_refused_saying_why() {
    let refused = |conditions: Vec<FieldFilter>| compile(conditions).unwrap_err();
    let uint = |number| value(filter_value::Value::Uint(number));
    for (conditions, why) in [
        (
            vec![condition("region", vec![text("eu")])],
            "has no field `region`",
        ),
        (
            vec![condition("group.name", vec![text("eu")])],
            "is not a message field",
        ),
        (
            vec![condition("after", vec![text("eu")])],
            "is a message field",
        ),
        (
            vec![condition("filter.all_of", vec![text("eu")])],
            "is a repeated field",
        ),
        (
            vec![condition("group", vec![uint(1)])],
            "it is a string field",
        ),
        (
            vec![condition("heartbeat_interval_ms", vec![text("1")])],
            "an integer field",
        ),
        (
            vec![condition("heartbeat_interval_ms", vec![uint(1 << 32)])],
            "out of range",
        ),
        (
            vec![condition("start", vec![text("SOON")])],
            "no value named `SOON`",
        ),
        (vec![condition("group", vec![])], "`any_of` is empty"),
        (vec![condition("", vec![text("eu")])], "the path is empty"),
        (
            vec![condition("group", vec![FilterValue::default()])],
            "nothing set",
        ),
    ] {
        let error = refused(conditions);
        assert!(error.contains(why), "{error:?} should say {why:?}");
    }
    let many = vec![condition("group", vec![text("eu")]); MAX_CONDITIONS + 1];
    assert!(refused(many).contains("at most 16"));
    let unknown = Filters::new(None).compile(&v1::Filter {
        all_of: vec![condition("group", vec![text("eu")])],
    });
    assert!(unknown.unwrap_err().contains("does not know"));
}

#[test]
fn filters_with_the_same_conditions_in_another_order_are_the_same() {
    let eu_or_us = condition("group", vec![text("eu"), text("us")]);
    let us_or_eu = condition("group", vec![text("us"), text("eu"), text("us")]);
    let live = condition("start", vec![text("START_POSITION_LIVE")]);
    let live_by_number = condition(
        "start",
        vec![value(filter_value::Value::Uint(StartPosition::Live as u64))],
    );
    let one = compile(vec![eu_or_us.clone(), live.clone()]).unwrap();
    let other = compile(vec![live_by_number, us_or_eu]).unwrap();
    assert_eq!(one.canonical, other.canonical);
    let mut negated = eu_or_us.clone();
    negated.negate = true;
    for different in [vec![eu_or_us], vec![negated, live]] {
        assert_ne!(one.canonical, compile(different).unwrap().canonical);
    }
}
