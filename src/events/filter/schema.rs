//! The event message's fields by name, from the descriptors the code generator embeds: what
//! turns a filter's path (`order.region`) into field numbers and a type, once per subscription.

use std::collections::HashMap;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};

use crate::keys::KeyKind;

/// Where an event RPC's event message is described: the descriptor set of its service's
/// package, and the message's full name (`.package.Message`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct EventSchema {
    pub(crate) descriptors: &'static [u8],
    pub(crate) message: &'static str,
}

/// The messages and enums of a descriptor set, by full name (`.package.Outer.Inner`).
#[derive(Debug, Default)]
pub(crate) struct Index {
    messages: HashMap<String, DescriptorProto>,
    enums: HashMap<String, EnumDescriptorProto>,
}

/// A path resolved: field numbers, the last field's type, and for an enum its value names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub(crate) fields: Vec<u32>,
    pub(crate) kind: KeyKind,
    /// For an enum field: its values' names and numbers.
    pub(crate) enum_values: Vec<(String, i32)>,
}

impl Index {
    /// Reads a descriptor set; `None` when it does not decode (it always does when it comes
    /// from the code generator).
    pub(crate) fn read(descriptors: &[u8]) -> Option<Self> {
        let set = FileDescriptorSet::decode(descriptors).ok()?;
        let mut index = Self::default();
        for file in set.file {
            let scope = match file.package() {
                "" => String::new(),
                package => format!(".{package}"),
            };
            for message in file.message_type {
                index.add_message(&scope, message);
            }
            for enumeration in file.enum_type {
                index
                    .enums
                    .insert(format!("{scope}.{}", enumeration.name()), enumeration);
            }
        }
        Some(index)
    }

    fn add_message(&mut self, scope: &str, mut message: DescriptorProto) {
        let name = format!("{scope}.{}", message.name());
        for nested in std::mem::take(&mut message.nested_type) {
            self.add_message(&name, nested);
        }
        for enumeration in std::mem::take(&mut message.enum_type) {
            self.enums
                .insert(format!("{name}.{}", enumeration.name()), enumeration);
        }
        self.messages.insert(name, message);
    }

    /// Resolves `path` (field names joined by `.`) in `message`, or says why it does not fit:
    /// each name must be a field, every field but the last a message, the last a scalar that
    /// a filter can compare (string, bytes, integer, bool, enum), none repeated.
    pub(crate) fn resolve(&self, message: &str, path: &str) -> Result<Resolved, String> {
        if path.is_empty() {
            return Err("the path is empty".to_owned());
        }
        let mut current = message.to_owned();
        let mut fields = Vec::new();
        let names: Vec<&str> = path.split('.').collect();
        for (at, name) in names.iter().enumerate() {
            let last = at + 1 == names.len();
            let descriptor = self
                .messages
                .get(&current)
                .ok_or_else(|| format!("the message `{current}` is not described"))?;
            let field = descriptor
                .field
                .iter()
                .find(|field| field.name() == *name)
                .ok_or_else(|| {
                    format!(
                        "`{}` has no field `{}`",
                        current.trim_start_matches('.'),
                        crate::text::shown(name)
                    )
                })?;
            if field.label() == Label::Repeated {
                return Err(format!(
                    "`{name}` is a repeated field: a filter compares one value"
                ));
            }
            fields.push(u32::try_from(field.number()).unwrap_or(0));
            if !last {
                if field.r#type() != Type::Message {
                    return Err(format!(
                        "`{name}` is not a message field, so `{}` cannot go on past it",
                        crate::text::shown(path)
                    ));
                }
                current = field.type_name().to_owned();
                continue;
            }
            let kind = match field.r#type() {
                Type::String => KeyKind::String,
                Type::Bytes => KeyKind::Bytes,
                Type::Int32 => KeyKind::Int32,
                Type::Int64 => KeyKind::Int64,
                Type::Uint32 => KeyKind::Uint32,
                Type::Uint64 => KeyKind::Uint64,
                Type::Sint32 => KeyKind::Sint32,
                Type::Sint64 => KeyKind::Sint64,
                Type::Fixed32 => KeyKind::Fixed32,
                Type::Fixed64 => KeyKind::Fixed64,
                Type::Sfixed32 => KeyKind::Sfixed32,
                Type::Sfixed64 => KeyKind::Sfixed64,
                Type::Bool => KeyKind::Bool,
                Type::Enum => KeyKind::Enum,
                Type::Message | Type::Group => {
                    return Err(format!(
                        "`{name}` is a message field: a filter compares a string, bytes, \
                         integer, bool or enum field"
                    ))
                }
                Type::Double | Type::Float => {
                    return Err(format!(
                        "`{name}` is a floating-point field: a filter compares a string, bytes, \
                         integer, bool or enum field (equality of floats is not meaningful)"
                    ))
                }
            };
            let enum_values = match kind {
                KeyKind::Enum => self
                    .enums
                    .get(field.type_name())
                    .map(|enumeration| {
                        enumeration
                            .value
                            .iter()
                            .map(|value| (value.name().to_owned(), value.number()))
                            .collect()
                    })
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            return Ok(Resolved {
                fields,
                kind,
                enum_values,
            });
        }
        Err("the path is empty".to_owned())
    }
}
