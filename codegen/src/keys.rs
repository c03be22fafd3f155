//! Key fields: `key: "order.order_id"` in `option (meshless.v1.event)` and
//! `option (meshless.v1.routing)`, resolved to field numbers and checked to end at a scalar.

use prost_reflect::{Cardinality, Kind, MessageDescriptor};

/// A key field, resolved: the field numbers from the message down, and the last field's type
/// as a variant of `meshless::codegen::KeyKind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyField {
    pub(crate) numbers: Vec<u32>,
    pub(crate) kind: &'static str,
}

/// Resolves `path` (field names joined by dots) in `message`, or says what is wrong with it.
pub(crate) fn resolve(message: &MessageDescriptor, path: &str) -> Result<KeyField, String> {
    let mut current = message.clone();
    let mut numbers = Vec::new();
    let names: Vec<&str> = path.split('.').collect();
    for (at, name) in names.iter().enumerate() {
        let Some(field) = current.get_field_by_name(name) else {
            let known: Vec<String> = current.fields().map(|f| f.name().to_owned()).collect();
            return Err(format!(
                "key `{path}`: message `{}` has no field `{name}` (its fields: {})",
                current.full_name(),
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ));
        };
        numbers.push(field.number());
        let last = at + 1 == names.len();
        if field.is_map() || field.cardinality() == Cardinality::Repeated {
            return Err(format!(
                "key `{path}`: field `{name}` of `{}` is repeated; a key is one value",
                current.full_name()
            ));
        }
        match (field.kind(), last) {
            (Kind::Message(inner), false) => current = inner,
            (_, false) => {
                return Err(format!(
                    "key `{path}`: field `{name}` of `{}` is not a message, so `{}` cannot be \
                     inside it",
                    current.full_name(),
                    names[at + 1]
                ))
            }
            (kind, true) => {
                let kind = match kind {
                    Kind::String => "String",
                    Kind::Bytes => "Bytes",
                    Kind::Int32 => "Int32",
                    Kind::Int64 => "Int64",
                    Kind::Uint32 => "Uint32",
                    Kind::Uint64 => "Uint64",
                    Kind::Sint32 => "Sint32",
                    Kind::Sint64 => "Sint64",
                    Kind::Fixed32 => "Fixed32",
                    Kind::Fixed64 => "Fixed64",
                    Kind::Sfixed32 => "Sfixed32",
                    Kind::Sfixed64 => "Sfixed64",
                    Kind::Bool => "Bool",
                    Kind::Enum(_) => "Enum",
                    Kind::Message(inner) => {
                        return Err(format!(
                            "key `{path}`: field `{name}` is a message (`{}`); a key ends at a \
                             string, bytes, integer, bool or enum field",
                            inner.full_name()
                        ))
                    }
                    Kind::Float | Kind::Double => {
                        return Err(format!(
                            "key `{path}`: field `{name}` is a floating-point number, which \
                             makes a poor key (equal values can differ in their last bits); a key \
                             ends at a string, bytes, integer, bool or enum field"
                        ))
                    }
                };
                return Ok(KeyField { numbers, kind });
            }
        }
    }
    Err(format!("key `{path}` names no field"))
}
