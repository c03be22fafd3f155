//! [`Filter`]: the conditions an observer gives for the events it takes from each producer,
//! sent in `Subscribe.filter` and evaluated by the producers.

use crate::v1::{self, filter_value, FieldFilter, FilterValue};

/// Which events of an event RPC an observer takes: those for which every condition holds.
/// The producers evaluate it, so events filtered out never cross the network.
///
/// A path names fields from the event message down (`user.region`), as the `key` option
/// does; the last field is a string, bytes, integer, bool or enum field, none repeated. An unset
/// field has its default value. Values are compared as the field's type: text for a string,
/// bytes for bytes, an integer (within the field's range) for an integer or an enum's number,
/// `true` or `false` for a bool; an enum value's name (text) works too.
///
/// ```
/// use meshless::events::Filter;
///
/// // Users who signed up in Europe or in the US, other than through the API.
/// let filter = Filter::new()
///     .any_of("user.region", ["eu", "us"])
///     .not_eq("source", "SOURCE_API");
/// # let _ = filter;
/// ```
///
/// The observer's `start` checks the filter against the event message (a path or value that
/// does not fit is an error); a producer checks it again.
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use]
pub struct Filter {
    wire: v1::Filter,
}

impl Filter {
    /// A filter without conditions: every event.
    pub fn new() -> Self {
        Self::default()
    }

    /// The field at `path` equals `value`.
    pub fn eq(self, path: &str, value: impl Into<FilterValue>) -> Self {
        self.condition(path, vec![value.into()], false)
    }

    /// The field at `path` is one of `values`.
    pub fn any_of<V: Into<FilterValue>>(
        self,
        path: &str,
        values: impl IntoIterator<Item = V>,
    ) -> Self {
        self.condition(path, values.into_iter().map(Into::into).collect(), false)
    }

    /// The field at `path` is not `value`.
    pub fn not_eq(self, path: &str, value: impl Into<FilterValue>) -> Self {
        self.condition(path, vec![value.into()], true)
    }

    /// The field at `path` is none of `values`.
    pub fn none_of<V: Into<FilterValue>>(
        self,
        path: &str,
        values: impl IntoIterator<Item = V>,
    ) -> Self {
        self.condition(path, values.into_iter().map(Into::into).collect(), true)
    }

    fn condition(mut self, path: &str, any_of: Vec<FilterValue>, not: bool) -> Self {
        self.wire.all_of.push(FieldFilter {
            path: path.to_owned(),
            any_of,
            negate: not,
        });
        self
    }

    /// The filter as `Subscribe.filter` carries it.
    pub fn to_proto(&self) -> v1::Filter {
        self.wire.clone()
    }
}

impl From<Filter> for v1::Filter {
    fn from(filter: Filter) -> Self {
        filter.wire
    }
}

fn value(value: filter_value::Value) -> FilterValue {
    FilterValue { value: Some(value) }
}

impl From<&str> for FilterValue {
    fn from(text: &str) -> Self {
        value(filter_value::Value::Text(text.to_owned()))
    }
}

impl From<String> for FilterValue {
    fn from(text: String) -> Self {
        value(filter_value::Value::Text(text))
    }
}

impl From<&[u8]> for FilterValue {
    fn from(bytes: &[u8]) -> Self {
        value(filter_value::Value::Bytes(bytes.to_vec()))
    }
}

impl From<Vec<u8>> for FilterValue {
    fn from(bytes: Vec<u8>) -> Self {
        value(filter_value::Value::Bytes(bytes))
    }
}

impl From<bool> for FilterValue {
    fn from(boolean: bool) -> Self {
        value(filter_value::Value::Boolean(boolean))
    }
}

impl From<i64> for FilterValue {
    fn from(number: i64) -> Self {
        value(filter_value::Value::Int(number))
    }
}

impl From<i32> for FilterValue {
    fn from(number: i32) -> Self {
        value(filter_value::Value::Int(number.into()))
    }
}

impl From<u64> for FilterValue {
    fn from(number: u64) -> Self {
        value(filter_value::Value::Uint(number))
    }
}

impl From<u32> for FilterValue {
    fn from(number: u32) -> Self {
        value(filter_value::Value::Uint(number.into()))
    }
}
