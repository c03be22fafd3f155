//! Filters: which events a subscriber gets. A `Filter` from `Subscribe` is checked once, when
//! the subscription starts, against the event message's descriptor, into conditions on field
//! numbers; each event is then matched on its encoding, reading only the fields on the
//! conditions' paths (nothing is decoded into a struct, nothing allocated per event).

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use crate::keys::{scalar_at, KeyKind, Scalar};
use crate::v1::{self, filter_value, FieldFilter, FilterValue};
pub use builder::Filter;
pub(crate) use schema::EventSchema;
use schema::Index;

mod builder;
mod schema;
#[cfg(test)]
mod test;

/// The most conditions one filter may have.
pub(crate) const MAX_CONDITIONS: usize = 16;
/// The most values one condition may compare with.
pub(crate) const MAX_VALUES: usize = 1024;
/// The longest path, in bytes.
const MAX_PATH: usize = 256;

/// A filter checked against the event message: every condition must hold.
#[derive(Debug)]
pub(crate) struct EventFilter {
    conditions: Vec<Condition>,
    /// Its conditions in a canonical form, sorted: two filters that take the same events by
    /// the same conditions (in any order, values in any order) have the same. A group's members
    /// must ask for the same filter.
    pub(crate) canonical: Vec<Vec<u8>>,
}

#[derive(Debug)]
struct Condition {
    fields: Vec<u32>,
    kind: KeyKind,
    values: Values,
    not: bool,
}

/// A condition's values, in the form its field reads as.
#[derive(Debug)]
enum Values {
    /// Sorted.
    Int(Vec<i64>),
    /// Sorted.
    Uint(Vec<u64>),
    Bool {
        when_true: bool,
        when_false: bool,
    },
    Bytes(HashSet<Box<[u8]>>),
}

impl EventFilter {
    /// Whether the event (its encoding) matches.
    pub(crate) fn matches(&self, event: &[u8]) -> bool {
        self.conditions
            .iter()
            .all(|condition| condition.holds(event))
    }
}

impl Condition {
    /// The condition as bytes: its path, whether it is negated, and its values, sorted.
    fn canonical(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        for field in &self.fields {
            bytes.extend_from_slice(&field.to_be_bytes());
        }
        bytes.push(u8::from(self.not));
        match &self.values {
            Values::Int(values) => values.iter().for_each(|v| bytes.extend(v.to_be_bytes())),
            Values::Uint(values) => values.iter().for_each(|v| bytes.extend(v.to_be_bytes())),
            Values::Bool {
                when_true,
                when_false,
            } => bytes.extend([u8::from(*when_true), u8::from(*when_false)]),
            Values::Bytes(values) => {
                let mut sorted: Vec<&Box<[u8]>> = values.iter().collect();
                sorted.sort_unstable();
                for value in sorted {
                    bytes.extend((value.len() as u64).to_be_bytes());
                    bytes.extend_from_slice(value);
                }
            }
        }
        bytes
    }

    fn holds(&self, event: &[u8]) -> bool {
        let found = match (&self.values, scalar_at(event, &self.fields, self.kind)) {
            (Values::Int(values), Scalar::Int(value)) => values.binary_search(&value).is_ok(),
            (Values::Uint(values), Scalar::Uint(value)) => values.binary_search(&value).is_ok(),
            (
                Values::Bool {
                    when_true,
                    when_false,
                },
                Scalar::Bool(value),
            ) => {
                if value {
                    *when_true
                } else {
                    *when_false
                }
            }
            (Values::Bytes(values), Scalar::Bytes(value)) => values.contains(value),
            _ => false,
        };
        found != self.not
    }
}

/// Where an event RPC's filters are checked: its event message's schema, read on first use.
#[derive(Debug, Default)]
pub(crate) struct Filters {
    schema: Option<EventSchema>,
    index: OnceLock<Option<Index>>,
}

impl Filters {
    pub(crate) fn new(schema: Option<EventSchema>) -> Self {
        Self {
            schema,
            index: OnceLock::new(),
        }
    }

    /// Checks `filter` against the event message: `None` for a filter without conditions
    /// (every event), or why it does not fit.
    pub(crate) fn compile(&self, filter: &v1::Filter) -> Result<Option<EventFilter>, String> {
        if filter.all_of.is_empty() {
            return Ok(None);
        }
        if filter.all_of.len() > MAX_CONDITIONS {
            return Err(format!(
                "the filter has {} conditions; at most {MAX_CONDITIONS} are allowed",
                filter.all_of.len()
            ));
        }
        let Some(schema) = self.schema else {
            return Err("this publisher does not know its event message's fields".to_owned());
        };
        let Some(index) = self
            .index
            .get_or_init(|| Index::read(schema.descriptors))
            .as_ref()
        else {
            return Err("this publisher's descriptors of its event message are unreadable".into());
        };
        let conditions: Vec<Condition> = filter
            .all_of
            .iter()
            .map(|condition| {
                compile_condition(index, schema.message, condition).map_err(|why| {
                    format!("filter on `{}`: {why}", crate::text::shown(&condition.path))
                })
            })
            .collect::<Result<_, _>>()?;
        let mut canonical: Vec<Vec<u8>> = conditions.iter().map(Condition::canonical).collect();
        canonical.sort_unstable();
        canonical.dedup();
        Ok(Some(EventFilter {
            conditions,
            canonical,
        }))
    }
}

/// An observer's filters, by gRPC path, checked against their event messages when it starts:
/// those with conditions, as `Subscribe.filter` carries them, or why one does not fit (or is
/// given for an event RPC not among `observed`).
pub(crate) fn checked(
    given: HashMap<&'static str, (EventSchema, Filter)>,
    observed: &[&'static str],
) -> Result<HashMap<&'static str, v1::Filter>, crate::Error> {
    let mut filters = HashMap::new();
    for (rpc, (schema, filter)) in given {
        if !observed.contains(&rpc) {
            return Err(crate::Error::invalid_input(format!(
                "a filter is given for {rpc}, which this observer has no handler for"
            )));
        }
        let filter = filter.to_proto();
        Filters::new(Some(schema)).compile(&filter).map_err(|why| {
            crate::Error::invalid_input(format!(
                "the filter of {rpc} does not fit its events: {why}"
            ))
        })?;
        if !filter.all_of.is_empty() {
            filters.insert(rpc, filter);
        }
    }
    Ok(filters)
}

fn compile_condition(
    index: &Index,
    message: &str,
    condition: &FieldFilter,
) -> Result<Condition, String> {
    if condition.path.len() > MAX_PATH {
        return Err(format!(
            "the path is {} bytes long; at most {MAX_PATH} are allowed",
            condition.path.len()
        ));
    }
    let resolved = index.resolve(message, &condition.path)?;
    if condition.any_of.is_empty() {
        return Err("`any_of` is empty: give the value (or values) to compare with".to_owned());
    }
    if condition.any_of.len() > MAX_VALUES {
        return Err(format!(
            "{} values; at most {MAX_VALUES} are allowed",
            condition.any_of.len()
        ));
    }
    let kind = resolved.kind;
    let values = match kind {
        KeyKind::String | KeyKind::Bytes => Values::Bytes(
            condition
                .any_of
                .iter()
                .map(|value| bytes_value(kind, value))
                .collect::<Result<_, _>>()?,
        ),
        KeyKind::Bool => {
            let (mut when_true, mut when_false) = (false, false);
            for value in &condition.any_of {
                match value.value {
                    Some(filter_value::Value::Boolean(true)) => when_true = true,
                    Some(filter_value::Value::Boolean(false)) => when_false = true,
                    _ => return Err(wrong_type(kind, value)),
                }
            }
            Values::Bool {
                when_true,
                when_false,
            }
        }
        KeyKind::Uint32 | KeyKind::Uint64 | KeyKind::Fixed32 | KeyKind::Fixed64 => {
            let max = match kind {
                KeyKind::Uint32 | KeyKind::Fixed32 => u64::from(u32::MAX),
                _ => u64::MAX,
            };
            let mut values = condition
                .any_of
                .iter()
                .map(|value| {
                    let number = match value.value {
                        Some(filter_value::Value::Uint(number)) => Some(number),
                        Some(filter_value::Value::Int(number)) => u64::try_from(number).ok(),
                        _ => return Err(wrong_type(kind, value)),
                    };
                    number
                        .filter(|number| *number <= max)
                        .ok_or_else(|| out_of_range(kind, value))
                })
                .collect::<Result<Vec<_>, _>>()?;
            values.sort_unstable();
            values.dedup();
            Values::Uint(values)
        }
        _ => {
            let (min, max) = match kind {
                KeyKind::Int64 | KeyKind::Sint64 | KeyKind::Sfixed64 => (i64::MIN, i64::MAX),
                _ => (i64::from(i32::MIN), i64::from(i32::MAX)),
            };
            let mut values = condition
                .any_of
                .iter()
                .map(|value| {
                    let number = match &value.value {
                        Some(filter_value::Value::Int(number)) => Some(*number),
                        Some(filter_value::Value::Uint(number)) => i64::try_from(*number).ok(),
                        Some(filter_value::Value::Text(name)) if kind == KeyKind::Enum => {
                            return enum_number(&resolved.enum_values, name)
                        }
                        _ => return Err(wrong_type(kind, value)),
                    };
                    number
                        .filter(|number| (min..=max).contains(number))
                        .ok_or_else(|| out_of_range(kind, value))
                })
                .collect::<Result<Vec<_>, _>>()?;
            values.sort_unstable();
            values.dedup();
            Values::Int(values)
        }
    };
    Ok(Condition {
        fields: resolved.fields,
        kind,
        values,
        not: condition.negate,
    })
}

fn bytes_value(kind: KeyKind, value: &FilterValue) -> Result<Box<[u8]>, String> {
    match (&value.value, kind) {
        (Some(filter_value::Value::Text(text)), KeyKind::String) => Ok(text.as_bytes().into()),
        (Some(filter_value::Value::Bytes(bytes)), KeyKind::Bytes) => Ok(bytes.as_slice().into()),
        _ => Err(wrong_type(kind, value)),
    }
}

fn enum_number(values: &[(String, i32)], name: &str) -> Result<i64, String> {
    values
        .iter()
        .find(|(known, _)| known == name)
        .map(|(_, number)| i64::from(*number))
        .ok_or_else(|| {
            let names: Vec<&str> = values
                .iter()
                .take(16)
                .map(|(name, _)| name.as_str())
                .collect();
            format!(
                "the enum has no value named `{}` (its values: {})",
                crate::text::shown(name),
                names.join(", ")
            )
        })
}

/// What a filter value should be, for a field of `kind`.
fn expected(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::String => "a string field, compared with `text` values",
        KeyKind::Bytes => "a bytes field, compared with `bytes` values",
        KeyKind::Bool => "a bool field, compared with `boolean` values",
        KeyKind::Enum => {
            "an enum field, compared with its values' names (`text`) or numbers (`int`)"
        }
        _ => "an integer field, compared with `int` or `uint` values",
    }
}

fn shown_value(value: &FilterValue) -> String {
    match &value.value {
        None => "a value with nothing set".to_owned(),
        Some(filter_value::Value::Text(text)) => format!("text `{}`", crate::text::shown(text)),
        Some(filter_value::Value::Bytes(bytes)) => format!("{} bytes", bytes.len()),
        Some(filter_value::Value::Int(number)) => format!("int {number}"),
        Some(filter_value::Value::Uint(number)) => format!("uint {number}"),
        Some(filter_value::Value::Boolean(value)) => format!("boolean {value}"),
    }
}

fn wrong_type(kind: KeyKind, value: &FilterValue) -> String {
    format!(
        "{} does not fit: it is {}",
        shown_value(value),
        expected(kind)
    )
}

fn out_of_range(kind: KeyKind, value: &FilterValue) -> String {
    format!(
        "{} is out of range for a field of type {}",
        shown_value(value),
        format!("{kind:?}").to_lowercase()
    )
}
