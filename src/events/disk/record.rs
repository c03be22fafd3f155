//! One record on disk: `[body length: u32][CRC-32C of the body: u32][body]`, little-endian,
//! where the body is `[sequence: u64][publish time: u64][the event, encoded with its
//! metadata]`. A record that the data ends inside is cut (what a write interrupted part way
//! leaves); one whose length or checksum does not hold is corrupt.
//!
//! The length's top bit says that the next record belongs to the same batch
//! (`publish_*_batch`); the checksum then covers it too (the body's, continued over a byte 1).
//! A batch's records are written at once, and recovery keeps a batch only once its last record
//! (the bit clear) is whole, so that a write interrupted inside a batch keeps none of it.
//! Records written one at a time have the bit clear.

use bytes::Bytes;

use super::crc;

/// Length and checksum.
pub(super) const HEADER: usize = 8;
/// Sequence and publish time.
pub(super) const SEQUENCE: usize = 16;
/// No body is longer: a length past it is garbage, not a record. Appends refuse bodies past it.
pub(super) const MAX_BODY: usize = 1024 * 1024 * 1024;

/// The largest event (encoded, with its metadata) a record holds.
pub(crate) const MAX_EVENT: usize = MAX_BODY - SEQUENCE;

/// In the length field: the next record is of the same batch.
const MORE: u32 = 1 << 31;

/// The checksum of a record whose body checksums to `body`: a record marked "more follow"
/// has the mark folded in, so that a flipped mark fails the checksum like a flipped byte of
/// the body (records without it keep the checksum they always had).
fn with_flag(body: u32, more: bool) -> u32 {
    if more {
        crc::update(body, &[1])
    } else {
        body
    }
}

/// Appends the record of event `sequence` to `out`.
pub(super) fn encode(sequence: u64, published_at: u64, event: &[u8], out: &mut Vec<u8>) {
    encode_in_batch(sequence, published_at, event, false, out);
}

/// Appends the record of event `sequence` to `out`; `more`: the next record is of the same
/// batch.
pub(super) fn encode_in_batch(
    sequence: u64,
    published_at: u64,
    event: &[u8],
    more: bool,
    out: &mut Vec<u8>,
) {
    let mut prefix = [0u8; SEQUENCE];
    prefix[..8].copy_from_slice(&sequence.to_le_bytes());
    prefix[8..].copy_from_slice(&published_at.to_le_bytes());
    let length = u32::try_from(SEQUENCE + event.len()).unwrap_or(u32::MAX);
    let checksum = with_flag(crc::update(crc::update(0, &prefix), event), more);
    let length = if more { length | MORE } else { length };
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&checksum.to_le_bytes());
    out.extend_from_slice(&prefix);
    out.extend_from_slice(event);
}

/// What lies at an offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Scanned {
    /// A whole record; the next one starts at `end`. `more`: the next record is of the same
    /// batch.
    Record {
        sequence: u64,
        published_at: u64,
        event: Bytes,
        end: usize,
        more: bool,
    },
    /// The end of the data.
    End,
    /// The data ends inside a record whose header (as far as there is one) holds.
    Cut,
    /// Not a valid record.
    Corrupt,
}

/// Reads the record at `at` of `data`.
pub(super) fn scan(data: &Bytes, at: usize) -> Scanned {
    let rest = &data[at.min(data.len())..];
    if rest.is_empty() {
        return Scanned::End;
    }
    let Some(length) = rest.get(0..4) else {
        return Scanned::Cut;
    };
    let length = u32::from_le_bytes(length.try_into().unwrap_or_default());
    let more = length & MORE != 0;
    let length = (length & !MORE) as usize;
    if !(SEQUENCE..=MAX_BODY).contains(&length) {
        return Scanned::Corrupt;
    }
    if rest.len() < HEADER + length {
        return Scanned::Cut;
    }
    let checksum = u32::from_le_bytes(rest[4..8].try_into().unwrap_or_default());
    let body = &rest[HEADER..HEADER + length];
    if with_flag(crc::update(0, body), more) != checksum {
        return Scanned::Corrupt;
    }
    let sequence = u64::from_le_bytes(body[..8].try_into().unwrap_or_default());
    let published_at = u64::from_le_bytes(body[8..SEQUENCE].try_into().unwrap_or_default());
    let start = at + HEADER + SEQUENCE;
    Scanned::Record {
        sequence,
        published_at,
        event: data.slice(start..at + HEADER + length),
        end: at + HEADER + length,
        more,
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn the_records_of_a_batch_say_that_more_follow_but_the_last() {
        let mut out = Vec::new();
        encode_in_batch(1, 10, b"a", true, &mut out);
        encode_in_batch(2, 20, b"b", false, &mut out);
        let data = Bytes::from(out);
        let Scanned::Record { more, end, .. } = scan(&data, 0) else {
            panic!("a record");
        };
        assert!(more);
        let Scanned::Record {
            sequence,
            more,
            event,
            ..
        } = scan(&data, end)
        else {
            panic!("a record");
        };
        assert_eq!((sequence, more, &event[..]), (2, false, &b"b"[..]));
    }

    #[test]
    fn a_flipped_batch_mark_is_a_corrupt_record() {
        for more in [true, false] {
            let mut out = Vec::new();
            encode_in_batch(1, 10, b"event", more, &mut out);
            out[3] ^= 0x80;
            assert_eq!(scan(&Bytes::from(out), 0), Scanned::Corrupt, "more: {more}");
        }
    }

    fn two_records() -> Vec<u8> {
        let mut out = Vec::new();
        encode(7, 70, b"first", &mut out);
        encode(8, 80, b"second event", &mut out);
        out
    }

    #[test]
    fn records_read_back_in_order() {
        let data = Bytes::from(two_records());
        let Scanned::Record {
            sequence,
            published_at,
            event,
            end,
            ..
        } = scan(&data, 0)
        else {
            panic!("a record");
        };
        assert_eq!((sequence, published_at, &event[..]), (7, 70, &b"first"[..]));
        let Scanned::Record {
            sequence,
            event,
            end,
            ..
        } = scan(&data, end)
        else {
            panic!("a record");
        };
        assert_eq!((sequence, &event[..]), (8, &b"second event"[..]));
        assert_eq!(scan(&data, end), Scanned::End);
    }

    #[test]
    fn a_cut_record_is_cut_and_a_flipped_one_corrupt() {
        let whole = two_records();
        let first_end = HEADER + SEQUENCE + 5;
        for cut in first_end + 1..whole.len() {
            let data = Bytes::from(whole[..cut].to_vec());
            assert_eq!(scan(&data, first_end), Scanned::Cut, "cut at {cut}");
        }
        for flip in first_end..whole.len() {
            let mut bad = whole.clone();
            bad[flip] ^= 0x40;
            let data = Bytes::from(bad);
            let scanned = scan(&data, first_end);
            assert!(
                matches!(scanned, Scanned::Corrupt | Scanned::Cut),
                "flipped byte {flip}: {scanned:?}"
            );
            assert_ne!(scanned, Scanned::End);
        }
        let zeros = Bytes::from(vec![0u8; 40]);
        assert_eq!(
            scan(&zeros, 0),
            Scanned::Corrupt,
            "zero bytes are no record"
        );
    }
}
