//! Entry points for the fuzz targets (`cim-integrate-fuzz`) into decoders and encoders this crate
//! does not make public: what reads a stored saga record, a dedup block's marks, and the JSON
//! reader and writer of payloads and records. Behind the
//! `fuzzing` feature, hidden from the documentation; not an API.

use crate::saga::SagaRecord;
use bytes::Bytes;

/// A stored saga record as the runner reads it (formats 1 and 2; the outbox events of a format-2
/// record get the record's version, saga and id back); the error says why it cannot be used.
pub fn decode_saga_record(bytes: &[u8]) -> Result<SagaRecord<serde_json::Value>, String> {
    crate::saga::record::decode(bytes)
}

/// `record` as the runner's hand-written encoder writes it, twice with one encoder (the second
/// time from what the first made and kept: step names, owner, events), which should both be
/// `serde_json::to_vec(record)`.
pub fn encode_saga_record(record: &SagaRecord<serde_json::Value>) -> serde_json::Result<(Bytes, Bytes)> {
    let mut encoder = crate::saga::record::Encoder::default();
    let first = encoder.encode(record)?;
    Ok((first, encoder.encode(record)?))
}

/// Sequences per dedup block: a mark's offset is below this.
pub const DEDUP_BLOCK: u64 = crate::dedup::BLOCK;

/// The marks (offset, stored time in nanoseconds) of a dedup block entry's value; `None` if it is
/// not one.
pub fn decode_dedup_block(value: &[u8]) -> Option<Vec<(u8, i64)>> {
    crate::dedup::decode_block(value)
}

/// Whether a dedup block entry's value holds the mark (`offset`, `nanos`), read in place.
pub fn dedup_block_holds(value: &[u8], offset: u8, nanos: i64) -> bool {
    crate::dedup::block_holds(value, offset, nanos)
}

/// A dedup block entry's value with the mark (`offset`, `nanos`) added in offset order,
/// replacing one at the same offset; a value that is not a block's starts over.
pub fn dedup_block_with_mark(current: Option<&[u8]>, offset: u8, nanos: i64) -> Bytes {
    crate::dedup::with_mark(current, offset, nanos)
}

/// `bytes` read as the runtime reads payloads and records (`json::from_slice`): what
/// `serde_json::from_slice` reads, with one UTF-8 check of the whole.
pub fn json_from_slice<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<T> {
    crate::json::from_slice(bytes)
}

/// `value` written as the runtime writes payloads and records (`json::to_writer`): the bytes of
/// `serde_json::to_vec`.
pub fn json_to_vec<T: serde::Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    crate::json::to_vec(value)
}
