//! How events travel: each as the declared message, with its metadata in one reserved field.
//!
//! [`Envelope`] is the message type of event streams on both ends. A publisher builds it from
//! bytes encoded once per event, whatever the number of subscribers, plus (rarely) a few
//! per-subscriber bytes; encoding it copies those bytes. An observer decodes it into the event
//! and its [`EventMetadata`]. Plain gRPC clients decode the same bytes as the declared message
//! and skip the metadata as an unknown field.
//!
//! Protobuf merges repeated occurrences of a message field, so per-subscriber metadata (how
//! many events were missed) is appended as a second, small occurrence of the metadata field
//! instead of re-encoding the event.

use std::marker::PhantomData;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};
use tonic::codec::{Codec, DecodeBuf, Decoder};

use crate::v1::{EventMetadata, Subscribe};

/// The field number of the metadata in every event message.
pub const EVENT_METADATA_FIELD: u32 = 536_870_000;

/// The response header of an event RPC that names the publisher's epoch (16 hex digits), so
/// that an observer knows which producer it reached before any event arrives.
pub const EPOCH_HEADER: &str = "meshless-epoch";

/// The response header of a plain subscription that starts with no gap to report: the
/// sequence right before its first event (decimal), so that a subscriber that loses the
/// stream before any event arrives can resume exactly.
pub const START_AFTER_HEADER: &str = "meshless-start-after";
/// Response header of an event RPC: `1` when the publisher applies the subscription's filter.
pub const FILTERED_HEADER: &str = "meshless-filtered";

/// The response header numbering a group member's stream, for `Acknowledgement.connection`.
pub const MEMBER_CONNECTION_HEADER: &str = "meshless-member-connection";

/// The value of [`EPOCH_HEADER`].
pub(crate) fn epoch_header_value(epoch: u64) -> String {
    format!("{epoch:016x}")
}

/// The epoch named by an [`EPOCH_HEADER`] value.
pub(crate) fn parse_epoch_header(value: &str) -> Option<u64> {
    u64::from_str_radix(value, 16)
        .ok()
        .filter(|epoch| *epoch != 0)
}

/// An event on the wire: outgoing as pre-encoded bytes, incoming as the decoded message and
/// its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<T> {
    inner: Inner<T>,
}

#[derive(Debug, Clone, PartialEq)]
enum Inner<T> {
    Encoded { shared: Bytes, extra: Option<Bytes> },
    Decoded { event: T, metadata: EventMetadata },
}

impl<T> Envelope<T> {
    /// An envelope that sends `shared` (an encoded event with its metadata field), followed by
    /// `extra` (another occurrence of the metadata field) when present.
    pub(crate) fn encoded(shared: Bytes, extra: Option<Bytes>) -> Self {
        Self {
            inner: Inner::Encoded { shared, extra },
        }
    }

    /// The decoded event and metadata; `None` for an outgoing envelope.
    pub fn into_parts(self) -> Option<(T, EventMetadata)> {
        match self.inner {
            Inner::Decoded { event, metadata } => Some((event, metadata)),
            Inner::Encoded { .. } => None,
        }
    }
}

impl<T: Default> Inner<T> {
    /// An incoming envelope before any field is decoded.
    fn empty() -> Self {
        Inner::Decoded {
            event: T::default(),
            metadata: EventMetadata::default(),
        }
    }
}

impl<T: Default> Default for Envelope<T> {
    fn default() -> Self {
        Self {
            inner: Inner::empty(),
        }
    }
}

/// Now, as event metadata says it: microseconds since the Unix epoch.
pub(crate) fn now_unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// What every subscriber learns of a newly published event.
pub(crate) struct Published {
    pub(crate) epoch: u64,
    pub(crate) sequence: u64,
    pub(crate) published_at: i64,
    /// The publisher's span (W3C trace context), empty without one.
    pub(crate) traceparent: String,
    pub(crate) tracestate: String,
    /// The event's key; empty without one.
    pub(crate) key: Vec<u8>,
}

/// Appends the metadata of a newly published event to the event's encoded message (which
/// should have room for it: about 32 bytes, and the trace context).
pub(crate) fn append_published(bytes: &mut impl BufMut, published: Published) {
    let metadata = EventMetadata {
        epoch: published.epoch,
        sequence: published.sequence,
        published_at_unix_micros: published.published_at,
        traceparent: published.traceparent,
        tracestate: published.tracestate,
        key: published.key,
        ..EventMetadata::default()
    };
    encoding::message::encode(EVENT_METADATA_FIELD, &metadata, bytes);
}

/// The hash of the key in a stored event's metadata, for an event published with a key: what
/// a log read back from disk knows of keys.
pub(crate) fn key_hash_of(stored: &[u8]) -> Option<u64> {
    let (_, metadata) = Envelope::<()>::decode(stored).ok()?.into_parts()?;
    (!metadata.key.is_empty()).then(|| crate::keys::hash(&metadata.key))
}

/// What one subscriber gets with an event beyond its shared metadata: a group's delivery
/// count, a gap report. Sent as a second occurrence of the metadata field, which merges.
pub(crate) fn delivery_field(delivery_count: u32, missed: u64, previous_epoch: u64) -> Bytes {
    encode_metadata_field(&EventMetadata {
        delivery_count,
        missed,
        previous_epoch,
        ..EventMetadata::default()
    })
}

/// A heartbeat: no event, the latest sequence, and a gap report still to be made.
pub(crate) fn heartbeat_field(epoch: u64, latest: u64, missed: u64, previous_epoch: u64) -> Bytes {
    encode_metadata_field(&EventMetadata {
        epoch,
        sequence: latest,
        published_at_unix_micros: now_unix_micros(),
        missed,
        previous_epoch,
        heartbeat: true,
        ..EventMetadata::default()
    })
}

/// The metadata field, encoded: key, length, message.
pub(crate) fn encode_metadata_field(metadata: &EventMetadata) -> Bytes {
    let mut buf = Vec::with_capacity(metadata.encoded_len() + 8);
    encoding::message::encode(EVENT_METADATA_FIELD, metadata, &mut buf);
    buf.into()
}

impl<T: Message + Default> Message for Envelope<T> {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match &self.inner {
            Inner::Encoded { shared, extra } => {
                buf.put_slice(shared);
                if let Some(extra) = extra {
                    buf.put_slice(extra);
                }
            }
            Inner::Decoded { event, metadata } => {
                event.encode_raw(buf);
                encoding::message::encode(EVENT_METADATA_FIELD, metadata, buf);
            }
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if let Inner::Encoded { .. } = self.inner {
            self.inner = Inner::empty();
        }
        let Inner::Decoded { event, metadata } = &mut self.inner else {
            unreachable!("made Decoded above");
        };
        if tag == EVENT_METADATA_FIELD {
            encoding::message::merge(wire_type, metadata, buf, ctx)
        } else {
            event.merge_field(tag, wire_type, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        match &self.inner {
            Inner::Encoded { shared, extra } => shared.len() + extra.as_ref().map_or(0, Bytes::len),
            Inner::Decoded { event, metadata } => {
                event.encoded_len() + encoding::message::encoded_len(EVENT_METADATA_FIELD, metadata)
            }
        }
    }

    fn clear(&mut self) {
        self.inner = Inner::empty();
    }
}

/// The codec of an observer's event stream: `Subscribe` out, [`Envelope`]s in.
///
/// Decodes each envelope from one slice: tonic holds a whole message contiguously, and prost
/// reads a slice field by field far faster than through tonic's buffer wrapper (an event and
/// its metadata are a dozen fields).
pub(crate) struct EventCodec<T>(PhantomData<fn() -> T>);

impl<T> Default for EventCodec<T> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T: Message + Default + Send + 'static> Codec for EventCodec<T> {
    type Encode = Subscribe;
    type Decode = Envelope<T>;
    type Encoder = tonic_prost::ProstEncoder<Subscribe>;
    type Decoder = EnvelopeDecoder<T>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        EnvelopeDecoder(PhantomData)
    }
}

/// See [`EventCodec`].
pub(crate) struct EnvelopeDecoder<T>(PhantomData<fn() -> T>);

impl<T: Message + Default> Decoder for EnvelopeDecoder<T> {
    type Item = Envelope<T>;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Envelope<T>>, tonic::Status> {
        let len = buf.remaining();
        let decoded = if buf.chunk().len() == len {
            let decoded = Envelope::decode(buf.chunk());
            buf.advance(len);
            decoded
        } else {
            Envelope::decode(buf)
        };
        // As tonic's prost codec: a message that does not parse is INTERNAL.
        decoded
            .map(Some)
            .map_err(|error| tonic::Status::internal(error.to_string()))
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::v1::Cursor;

    fn shared(event: &Cursor, metadata: &EventMetadata) -> Bytes {
        let mut bytes = event.encode_to_vec();
        bytes.extend_from_slice(&encode_metadata_field(metadata));
        bytes.into()
    }

    #[test]
    fn published_metadata_carries_the_trace_context_and_key_and_plain_decoders_skip_them() {
        let event = Cursor {
            epoch: 7,
            sequence: 9,
        };
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut bytes = event.encode_to_vec();
        append_published(
            &mut bytes,
            Published {
                epoch: 1,
                sequence: 2,
                published_at: 3,
                traceparent: traceparent.into(),
                tracestate: "vendor=x".into(),
                key: b"order-1".to_vec(),
            },
        );
        assert_eq!(Cursor::decode(bytes.as_slice()).unwrap(), event);
        let (decoded, metadata) = Envelope::<Cursor>::decode(bytes.as_slice())
            .unwrap()
            .into_parts()
            .unwrap();
        assert_eq!(decoded, event);
        assert_eq!(
            (
                metadata.epoch,
                metadata.sequence,
                metadata.published_at_unix_micros
            ),
            (1, 2, 3)
        );
        assert_eq!(metadata.traceparent, traceparent);
        assert_eq!(metadata.tracestate, "vendor=x");
        assert_eq!(metadata.key, b"order-1");
        // What a log read back from disk finds of the key.
        assert_eq!(key_hash_of(&bytes), Some(crate::keys::hash(b"order-1")));

        // Without a span, nothing is added: the metadata is as small as before.
        let mut without = Vec::new();
        append_published(
            &mut without,
            Published {
                epoch: 1,
                sequence: 2,
                published_at: 3,
                traceparent: String::new(),
                tracestate: String::new(),
                key: Vec::new(),
            },
        );
        assert!(without.len() < 40, "{} bytes", without.len());
    }

    #[test]
    fn plain_decoders_see_the_declared_message() {
        // Any message stands in for an event here.
        let event = Cursor {
            epoch: 7,
            sequence: 9,
        };
        let metadata = EventMetadata {
            epoch: 1,
            sequence: 2,
            ..Default::default()
        };
        let bytes = Envelope::<Cursor>::encoded(shared(&event, &metadata), None).encode_to_vec();
        assert_eq!(Cursor::decode(bytes.as_slice()).unwrap(), event);
    }

    #[test]
    fn observers_get_the_event_and_merged_metadata() {
        let event = Cursor {
            epoch: 7,
            sequence: 9,
        };
        let metadata = EventMetadata {
            epoch: 1,
            sequence: 2,
            published_at_unix_micros: 3,
            ..Default::default()
        };
        let extra = encode_metadata_field(&EventMetadata {
            missed: 40,
            ..Default::default()
        });
        let bytes =
            Envelope::<Cursor>::encoded(shared(&event, &metadata), Some(extra)).encode_to_vec();

        let (decoded, metadata) = Envelope::<Cursor>::decode(bytes.as_slice())
            .unwrap()
            .into_parts()
            .unwrap();
        assert_eq!(decoded, event);
        assert_eq!(
            metadata,
            EventMetadata {
                epoch: 1,
                sequence: 2,
                published_at_unix_micros: 3,
                missed: 40,
                ..Default::default()
            }
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &[0xff_u8, 0xff, 0xff][..],
            &[0x82, 0xc7, 0xf7, 0xff, 0x0f, 0x05, 1],
            &[0x0a],
        ] {
            assert!(Envelope::<Cursor>::decode(bytes).is_err());
        }
    }
}
