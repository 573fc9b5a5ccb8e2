//! Journal records and their encoding.
//!
//! On disk a record is `[body length u32][crc32c of body u32][body]`, big-endian, and the body
//! is `[kind u8][sequence u64][ledger u64]` followed by the kind's fields. A length of zero
//! marks the end of written data: journal files are preallocated with zeros. Every record has
//! the bookie-wide sequence number it was submitted with, so replay can skip what a checkpoint
//! already covers.

use bytes::{Buf, BufMut, Bytes};

/// Bytes before a record's body.
pub const HEADER_LEN: usize = 8;
/// Largest body accepted on replay: an entry of the largest size plus its fields.
pub const MAX_BODY_LEN: usize = crate::MAX_ENTRY_SIZE + 64 + MAX_KEY_LEN;
/// Largest master key accepted.
pub const MAX_KEY_LEN: usize = 1024;

const KIND_ADD: u8 = 1;
const KIND_KEY: u8 = 2;
const KIND_FENCE: u8 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// An entry; `last_add_confirmed` is what its writer knew when it sent it.
    Add { ledger_id: u64, entry_id: u64, last_add_confirmed: i64, payload: Bytes },
    /// The master key a ledger's first add set.
    Key { ledger_id: u64, master_key: Bytes },
    /// The ledger was fenced.
    Fence { ledger_id: u64 },
}

impl Record {
    pub fn ledger_id(&self) -> u64 {
        match self {
            Record::Add { ledger_id, .. } | Record::Key { ledger_id, .. } | Record::Fence { ledger_id } => *ledger_id,
        }
    }

    fn body_len(&self) -> usize {
        17 + match self {
            Record::Add { payload, .. } => 16 + payload.len(),
            Record::Key { master_key, .. } => master_key.len(),
            Record::Fence { .. } => 0,
        }
    }

    /// Encoded size including the header.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body_len()
    }

    /// Appends the encoded record to `out`.
    pub fn encode(&self, sequence: u64, out: &mut Vec<u8>) {
        let start = out.len();
        out.put_u32(self.body_len() as u32);
        out.put_u32(0);
        let body_start = out.len();
        match self {
            Record::Add { ledger_id, entry_id, last_add_confirmed, payload } => {
                out.put_u8(KIND_ADD);
                out.put_u64(sequence);
                out.put_u64(*ledger_id);
                out.put_u64(*entry_id);
                out.put_i64(*last_add_confirmed);
                out.put_slice(payload);
            }
            Record::Key { ledger_id, master_key } => {
                out.put_u8(KIND_KEY);
                out.put_u64(sequence);
                out.put_u64(*ledger_id);
                out.put_slice(master_key);
            }
            Record::Fence { ledger_id } => {
                out.put_u8(KIND_FENCE);
                out.put_u64(sequence);
                out.put_u64(*ledger_id);
            }
        }
        let crc = crc32c::crc32c(&out[body_start..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
    }
}

/// What reading one record at a position found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole, valid record of `len` bytes in total.
    Record { sequence: u64, record: Record, len: usize },
    /// Zeros: the end of written data.
    End,
    /// A torn or corrupt record: what is wrong with it.
    Invalid(&'static str),
}

/// Reads a header: (body length, crc). `None` if fewer than 8 bytes.
pub fn header(buf: &[u8]) -> Option<(usize, u32)> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    let mut cursor = buf;
    Some((cursor.get_u32() as usize, cursor.get_u32()))
}

/// Decodes a body whose header said `crc`.
pub fn decode_body(body: &[u8], crc: u32) -> Decoded {
    if crc32c::crc32c(body) != crc {
        return Decoded::Invalid("checksum mismatch");
    }
    if body.len() < 17 {
        return Decoded::Invalid("body too short");
    }
    let mut cursor = body;
    let kind = cursor.get_u8();
    let sequence = cursor.get_u64();
    let ledger_id = cursor.get_u64();
    let record = match kind {
        KIND_ADD => {
            if cursor.len() < 16 {
                return Decoded::Invalid("add record too short");
            }
            let entry_id = cursor.get_u64();
            let last_add_confirmed = cursor.get_i64();
            Record::Add { ledger_id, entry_id, last_add_confirmed, payload: Bytes::copy_from_slice(cursor) }
        }
        KIND_KEY if cursor.len() <= MAX_KEY_LEN => {
            Record::Key { ledger_id, master_key: Bytes::copy_from_slice(cursor) }
        }
        KIND_FENCE if cursor.is_empty() => Record::Fence { ledger_id },
        _ => return Decoded::Invalid("unknown record kind"),
    };
    Decoded::Record { sequence, record, len: HEADER_LEN + body.len() }
}

/// Decodes the record at the start of `buf` (which holds at least the whole record if it is
/// valid).
pub fn decode(buf: &[u8]) -> Decoded {
    let Some((len, crc)) = header(buf) else { return Decoded::Invalid("truncated header") };
    if len == 0 && crc == 0 {
        return Decoded::End;
    }
    if len == 0 || len > MAX_BODY_LEN {
        return Decoded::Invalid("impossible length");
    }
    if buf.len() < HEADER_LEN + len {
        return Decoded::Invalid("record runs past the end of the file");
    }
    decode_body(&buf[HEADER_LEN..HEADER_LEN + len], crc)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn record() -> impl Strategy<Value = Record> {
        prop_oneof![
            (any::<u64>(), any::<u64>(), any::<i64>(), proptest::collection::vec(any::<u8>(), 0..2048)).prop_map(
                |(ledger_id, entry_id, last_add_confirmed, payload)| Record::Add {
                    ledger_id,
                    entry_id,
                    last_add_confirmed,
                    payload: payload.into()
                }
            ),
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(ledger_id, key)| Record::Key { ledger_id, master_key: key.into() }),
            any::<u64>().prop_map(|ledger_id| Record::Fence { ledger_id }),
        ]
    }

    proptest! {
        #[test]
        fn records_round_trip(record in record(), sequence in any::<u64>()) {
            let mut buf = Vec::new();
            record.encode(sequence, &mut buf);
            prop_assert_eq!(buf.len(), record.encoded_len());
            prop_assert_eq!(decode(&buf), Decoded::Record { sequence, record, len: buf.len() });
        }

        #[test]
        fn any_flipped_byte_is_detected(record in record(), position in any::<prop::sample::Index>()) {
            let mut buf = Vec::new();
            record.encode(1, &mut buf);
            let at = position.index(buf.len());
            buf[at] ^= 0x5a;
            let valid = matches!(decode(&buf), Decoded::Record { .. });
            prop_assert!(!valid, "a flipped byte went unnoticed");
        }
    }

    #[test]
    fn zeros_are_the_end() {
        assert_eq!(decode(&[0u8; 32]), Decoded::End);
    }
}
