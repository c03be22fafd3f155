//! Keys of events and calls: taken from an encoded message by a field path, hashed the same way
//! in every process, and ranked by rendezvous hashing.
//!
//! A key is read from the protobuf encoding rather than from the generated struct, so that the
//! generator needs only field numbers (no Rust field names, oneofs included), and a key costs
//! a walk over the message's bytes, not another encoding. Its text is canonical, whatever the
//! field's width: a string or bytes field's bytes, an integer or enum in decimal digits, `true`
//! or `false`; an unset field reads as its default.
//!
//! The hash is FNV-1a finished by a 64-bit mixer: fixed, so that every client process picks the
//! same instance for a key, whatever it was built with (std's hashers may change between Rust
//! releases).

use prost::encoding::{decode_key, decode_varint, WireType};

/// Where a key is in a message: field numbers from the top-level message down, and the type of
/// the last field. Made by the code generator from `key: "order.order_id"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPath {
    /// The field numbers, outermost first; every field but the last is a message.
    pub fields: &'static [u32],
    /// The type of the last field.
    pub kind: KeyKind,
}

/// The protobuf type of a key field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum KeyKind {
    String,
    Bytes,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Bool,
    Enum,
}

impl KeyPath {
    /// The key of `message` (its protobuf encoding, without the gRPC frame). Bytes that do not
    /// parse give the key of what parsed before them; this never panics.
    pub fn key_of(&self, message: &[u8]) -> Vec<u8> {
        match find(message, self.fields) {
            Some(Found::Varint(value)) => self.kind.varint_text(value),
            Some(Found::Fixed32(value)) => match self.kind {
                KeyKind::Sfixed32 => (value as i32).to_string().into_bytes(),
                _ => value.to_string().into_bytes(),
            },
            Some(Found::Fixed64(value)) => match self.kind {
                KeyKind::Sfixed64 => (value as i64).to_string().into_bytes(),
                _ => value.to_string().into_bytes(),
            },
            Some(Found::Delimited(bytes)) => bytes.to_vec(),
            None => self.kind.default_text(),
        }
    }
}

impl KeyKind {
    fn varint_text(self, value: u64) -> Vec<u8> {
        let text = match self {
            KeyKind::Bool => return if value != 0 { "true" } else { "false" }.into(),
            // int32 and enum values are sign-extended to 64 bits on the wire.
            KeyKind::Int32 | KeyKind::Enum => (value as i32).to_string(),
            KeyKind::Int64 => (value as i64).to_string(),
            KeyKind::Uint32 => (value as u32).to_string(),
            KeyKind::Sint32 => {
                let value = value as u32;
                (((value >> 1) as i32) ^ -((value & 1) as i32)).to_string()
            }
            KeyKind::Sint64 => (((value >> 1) as i64) ^ -((value & 1) as i64)).to_string(),
            _ => value.to_string(),
        };
        text.into_bytes()
    }

    fn default_text(self) -> Vec<u8> {
        match self {
            KeyKind::String | KeyKind::Bytes => Vec::new(),
            KeyKind::Bool => b"false".to_vec(),
            _ => b"0".to_vec(),
        }
    }
}

/// A scalar field's value, read as its type says, for comparing with a filter's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scalar<'a> {
    /// A signed integer or an enum's number.
    Int(i64),
    Uint(u64),
    Bool(bool),
    /// A string's or a bytes field's bytes.
    Bytes(&'a [u8]),
}

/// The value of the field at `fields` (a path of field numbers) in `message`, read as `kind`;
/// an unset field (or one the wire has as another type) reads as its default.
pub(crate) fn scalar_at<'a>(message: &'a [u8], fields: &[u32], kind: KeyKind) -> Scalar<'a> {
    use KeyKind as K;
    match (kind, find(message, fields)) {
        (K::String | K::Bytes, Some(Found::Delimited(bytes))) => Scalar::Bytes(bytes),
        (K::String | K::Bytes, _) => Scalar::Bytes(&[]),
        (K::Bool, Some(Found::Varint(value))) => Scalar::Bool(value != 0),
        (K::Bool, _) => Scalar::Bool(false),
        (K::Int32 | K::Enum, Some(Found::Varint(value))) => Scalar::Int(i64::from(value as i32)),
        (K::Int64, Some(Found::Varint(value))) => Scalar::Int(value as i64),
        (K::Sint32, Some(Found::Varint(value))) => {
            let value = value as u32;
            Scalar::Int(i64::from(((value >> 1) as i32) ^ -((value & 1) as i32)))
        }
        (K::Sint64, Some(Found::Varint(value))) => {
            Scalar::Int(((value >> 1) as i64) ^ -((value & 1) as i64))
        }
        (K::Sfixed32, Some(Found::Fixed32(value))) => Scalar::Int(i64::from(value as i32)),
        (K::Sfixed64, Some(Found::Fixed64(value))) => Scalar::Int(value as i64),
        (K::Int32 | K::Enum | K::Int64 | K::Sint32 | K::Sint64 | K::Sfixed32 | K::Sfixed64, _) => {
            Scalar::Int(0)
        }
        (K::Uint32, Some(Found::Varint(value))) => Scalar::Uint(u64::from(value as u32)),
        (K::Uint64, Some(Found::Varint(value))) => Scalar::Uint(value),
        (K::Fixed32, Some(Found::Fixed32(value))) => Scalar::Uint(u64::from(value)),
        (K::Fixed64, Some(Found::Fixed64(value))) => Scalar::Uint(value),
        (K::Uint32 | K::Uint64 | K::Fixed32 | K::Fixed64, _) => Scalar::Uint(0),
    }
}

/// A field's value as the wire has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64(u64),
    Delimited(&'a [u8]),
}

/// The last occurrence of the field at `path` in `message`, as protobuf reads a scalar field
/// that occurs more than once; an embedded message that occurs more than once merges, so every
/// occurrence is searched and the last value found wins.
fn find<'a>(message: &'a [u8], path: &[u32]) -> Option<Found<'a>> {
    let (&number, rest) = path.split_first()?;
    let mut found = None;
    let mut buf = message;
    while !buf.is_empty() {
        let Ok((tag, wire_type)) = decode_key(&mut buf) else {
            break;
        };
        let value = match wire_type {
            WireType::Varint => match decode_varint(&mut buf) {
                Ok(value) => Found::Varint(value),
                Err(_) => break,
            },
            WireType::ThirtyTwoBit => {
                let Some((bytes, after)) = buf.split_first_chunk::<4>() else {
                    break;
                };
                buf = after;
                Found::Fixed32(u32::from_le_bytes(*bytes))
            }
            WireType::SixtyFourBit => {
                let Some((bytes, after)) = buf.split_first_chunk::<8>() else {
                    break;
                };
                buf = after;
                Found::Fixed64(u64::from_le_bytes(*bytes))
            }
            WireType::LengthDelimited => {
                let Ok(len) = decode_varint(&mut buf) else {
                    break;
                };
                let Some(len) = usize::try_from(len).ok().filter(|len| *len <= buf.len()) else {
                    break;
                };
                let (bytes, after) = buf.split_at(len);
                buf = after;
                Found::Delimited(bytes)
            }
            // Groups (proto2) are never on a key's path; they end the walk.
            WireType::StartGroup | WireType::EndGroup => break,
        };
        if tag != number {
            continue;
        }
        if rest.is_empty() {
            found = Some(value);
        } else if let Found::Delimited(inner) = value {
            if let Some(value) = find(inner, rest) {
                found = Some(value);
            }
        }
    }
    found
}

/// The hash of a key: the same in every process and on every platform.
pub(crate) fn hash(key: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    mix(hash)
}

/// The rendezvous score of a key (by its hash) at a node (by the hash of its name): the node
/// with the highest score owns the key. Removing a node moves only the keys it owned, each to
/// the node that scored next; adding one takes over only the keys it now scores highest for.
pub(crate) fn score(key: u64, node: u64) -> u64 {
    mix(key ^ node.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// MurmurHash3's 64-bit finalizer: every input bit flips about half the output bits.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

#[cfg(test)]
mod test {
    use prost::Message;

    use super::*;

    #[derive(Clone, PartialEq, Message)]
    struct Inner {
        #[prost(string, tag = "1")]
        id: String,
        #[prost(sint64, tag = "2")]
        signed: i64,
        #[prost(int32, tag = "3")]
        small: i32,
        #[prost(sfixed32, tag = "4")]
        fixed: i32,
        #[prost(bool, tag = "5")]
        flag: bool,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Outer {
        #[prost(message, optional, tag = "7")]
        inner: Option<Inner>,
        #[prost(uint64, tag = "8")]
        number: u64,
        #[prost(bytes = "vec", tag = "9")]
        raw: Vec<u8>,
    }

    fn key(message: &Outer, fields: &'static [u32], kind: KeyKind) -> String {
        let bytes = message.encode_to_vec();
        String::from_utf8(KeyPath { fields, kind }.key_of(&bytes)).unwrap()
    }

    #[test]
    fn keys_are_read_through_nested_messages_in_canonical_text() {
        let message = Outer {
            inner: Some(Inner {
                id: "order-17".into(),
                signed: -42,
                small: -7,
                fixed: -3,
                flag: true,
            }),
            number: 18_000_000_000,
            raw: b"ab".to_vec(),
        };
        assert_eq!(key(&message, &[7, 1], KeyKind::String), "order-17");
        assert_eq!(key(&message, &[7, 2], KeyKind::Sint64), "-42");
        assert_eq!(key(&message, &[7, 3], KeyKind::Int32), "-7");
        assert_eq!(key(&message, &[7, 4], KeyKind::Sfixed32), "-3");
        assert_eq!(key(&message, &[7, 5], KeyKind::Bool), "true");
        assert_eq!(key(&message, &[8], KeyKind::Uint64), "18000000000");
        assert_eq!(key(&message, &[9], KeyKind::Bytes), "ab");
    }

    #[test]
    fn unset_fields_read_as_their_defaults() {
        let message = Outer::default();
        assert_eq!(key(&message, &[7, 1], KeyKind::String), "");
        assert_eq!(key(&message, &[7, 2], KeyKind::Sint64), "0");
        assert_eq!(key(&message, &[7, 5], KeyKind::Bool), "false");
        assert_eq!(key(&message, &[8], KeyKind::Uint64), "0");
    }

    #[test]
    fn the_last_occurrence_wins_and_embedded_messages_merge() {
        let first = Outer {
            inner: Some(Inner {
                id: "first".into(),
                small: 5,
                ..Inner::default()
            }),
            ..Outer::default()
        };
        let second = Outer {
            inner: Some(Inner {
                id: "second".into(),
                ..Inner::default()
            }),
            ..Outer::default()
        };
        let mut bytes = first.encode_to_vec();
        bytes.extend(second.encode_to_vec());
        let id = KeyPath {
            fields: &[7, 1],
            kind: KeyKind::String,
        };
        let small = KeyPath {
            fields: &[7, 3],
            kind: KeyKind::Int32,
        };
        assert_eq!(id.key_of(&bytes), b"second");
        // Only in the first occurrence: merging keeps it.
        assert_eq!(small.key_of(&bytes), b"5");
    }

    #[test]
    fn garbage_never_panics() {
        let path = KeyPath {
            fields: &[7, 1],
            kind: KeyKind::String,
        };
        let mut rng = fastrand::Rng::with_seed(7);
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let _ = path.key_of(&bytes);
        }
    }

    #[test]
    fn the_hash_is_fixed_across_builds() {
        // Clients built apart must agree: these values may never change.
        assert_eq!(hash(b""), mix(0xcbf2_9ce4_8422_2325));
        assert_eq!(hash(b"order-1"), hash(b"order-1"));
        assert_ne!(hash(b"order-1"), hash(b"order-2"));
        assert_eq!(hash(b"a"), 0x82a2_a958_a9be_ce5b);
    }

    #[test]
    fn removing_one_of_three_nodes_moves_only_its_keys() {
        let nodes: Vec<u64> = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
            .iter()
            .map(|n| hash(n.as_bytes()))
            .collect();
        let owner =
            |key: u64, nodes: &[u64]| *nodes.iter().max_by_key(|node| score(key, **node)).unwrap();
        let keys: Vec<u64> = (0..3000)
            .map(|k| hash(format!("key-{k}").as_bytes()))
            .collect();
        let mut moved = 0;
        let mut owned_by_removed = 0;
        for key in &keys {
            let before = owner(*key, &nodes);
            let after = owner(*key, &nodes[..2]);
            if before == nodes[2] {
                owned_by_removed += 1;
            }
            if before != after {
                moved += 1;
                assert_eq!(before, nodes[2], "only the removed node's keys move");
            }
        }
        assert_eq!(moved, owned_by_removed);
        assert!(
            (800..1200).contains(&moved),
            "about a third of 3000 keys move: {moved}"
        );
    }
}
