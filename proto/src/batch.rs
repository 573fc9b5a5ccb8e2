//! What is inside an entry's body, shared by the broker (compaction rewrites batches) and the
//! client (consumers split them): decompression of the body with the codec the metadata
//! names, and a batch body cut into its messages or written back.
//!
//! LZ4 is the raw LZ4 block format (no frame header), as Pulsar's `CompressionCodecLZ4`
//! writes it; ZSTD is a standard zstd frame; ZLIB is deflate with the zlib header and trailer
//! (`CompressionCodecZLib`); SNAPPY is the raw snappy block format, not the framed one
//! (`CompressionCodecSnappy`). Decompression trusts no size it reads: the declared
//! `uncompressed_size` is checked against [`MAX_UNCOMPRESSED_SIZE`] and against what the
//! compressed body could restore at the codec's best ratio before anything is allocated (and a
//! zstd frame's own content size against it), and the result must have exactly that length. A batch's message count is
//! bounded by its body's length before anything is allocated for it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message as _;

use crate::pulsar as pb;

/// The largest uncompressed body accepted: a broker lets a client send 5 MB by default; this
/// leaves ample room without letting a small hostile frame claim gigabytes.
pub const MAX_UNCOMPRESSED_SIZE: usize = 128 * 1024 * 1024;

/// The smallest a message inside a batch can be: its size field.
const MIN_BATCHED_MESSAGE_SIZE: usize = 4;

/// One message of a batch: its own metadata and payload.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchedMessage {
    pub metadata: pb::SingleMessageMetadata,
    pub payload: Bytes,
}

/// Restores the body of an entry whose metadata says it is compressed; returns `body`
/// unchanged when it is not.
pub fn decompress(metadata: &pb::MessageMetadata, body: Bytes) -> Result<Bytes, String> {
    let Some(codec) = metadata.compression.filter(|&c| c != pb::CompressionType::None as i32) else {
        return Ok(body);
    };
    let size = metadata.uncompressed_size.ok_or("compressed without an uncompressed_size")? as usize;
    if size > MAX_UNCOMPRESSED_SIZE {
        return Err(format!("uncompressed_size {size} is over the limit of {MAX_UNCOMPRESSED_SIZE}"));
    }
    let codec = pb::CompressionType::try_from(codec).map_err(|_| format!("unknown codec {codec}"))?;
    // Every codec restores at most so many bytes per byte of input: a size beyond that is a
    // lie, refused before the output is allocated.
    if let Some(ratio) = max_ratio(codec) {
        if size > body.len().saturating_mul(ratio) {
            return Err(format!(
                "uncompressed_size {size} is more than {} bytes of {} can hold",
                body.len(),
                codec.as_str_name()
            ));
        }
    }
    let restored = match codec {
        pb::CompressionType::Lz4 => {
            lz4_flex::block::decompress(&body, size).map_err(|error| format!("LZ4: {error}"))?
        }
        pb::CompressionType::Zstd => {
            // A frame that states its content size must state the metadata's.
            match zstd_safe::get_frame_content_size(&body) {
                Ok(Some(declared)) if declared != size as u64 => {
                    return Err(format!("ZSTD frame holds {declared} bytes, the metadata says {size}"))
                }
                Ok(_) => {}
                Err(_) => return Err("ZSTD: not a zstd frame".to_owned()),
            }
            let mut out = vec![0u8; size];
            let written = zstd_safe::decompress(&mut out[..], &body)
                .map_err(|code| format!("ZSTD: {}", zstd_safe::get_error_name(code)))?;
            out.truncate(written);
            out
        }
        pb::CompressionType::Zlib => {
            use std::io::Read;
            // One byte more than declared is read, so a body that inflates beyond its
            // declared size is caught below without inflating all of it.
            let mut out = Vec::with_capacity(size);
            flate2::read::ZlibDecoder::new(&body[..])
                .take(size as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|error| format!("ZLIB: {error}"))?;
            out
        }
        pb::CompressionType::Snappy => {
            // The block format starts with the uncompressed length: checked before allocating.
            let declared = snap::raw::decompress_len(&body).map_err(|error| format!("SNAPPY: {error}"))?;
            if declared != size {
                return Err(format!("SNAPPY block holds {declared} bytes, the metadata says {size}"));
            }
            snap::raw::Decoder::new().decompress_vec(&body).map_err(|error| format!("SNAPPY: {error}"))?
        }
        // Filtered out above; a body that is not compressed is what it is.
        pb::CompressionType::None => return Ok(body),
    };
    if restored.len() != size {
        return Err(format!("decompressed to {} bytes, the metadata says {size}", restored.len()));
    }
    Ok(Bytes::from(restored))
}

/// The most bytes `codec` restores from one byte of input, where the format bounds it: an LZ4
/// sequence of n >= 3 bytes copies at most 255 * n bytes; a snappy copy element of 2 to 5
/// bytes at most 64; deflate reaches 1032:1 at best (258 bytes in two bits); a zstd block of
/// 4 bytes (header and one RLE byte) at most 128 KiB.
fn max_ratio(codec: pb::CompressionType) -> Option<usize> {
    match codec {
        pb::CompressionType::None => None,
        pb::CompressionType::Lz4 => Some(255),
        pb::CompressionType::Snappy => Some(32),
        pb::CompressionType::Zlib => Some(1032),
        pb::CompressionType::Zstd => Some(32 * 1024),
    }
}

/// Cuts an (uncompressed) batch body into its `count` messages.
pub fn split_batch(mut body: Bytes, count: usize) -> Result<Vec<BatchedMessage>, String> {
    if count > body.len() / MIN_BATCHED_MESSAGE_SIZE {
        return Err(format!("batch claims {count} messages but its body has only {} bytes", body.len()));
    }
    let mut messages = Vec::with_capacity(count);
    for index in 0..count {
        if body.remaining() < 4 {
            return Err(format!("batch body ends before message {index} of {count}"));
        }
        let metadata_size = body.get_u32() as usize;
        if metadata_size > body.remaining() {
            return Err(format!(
                "metadata of message {index} claims {metadata_size} bytes, {} remain",
                body.remaining()
            ));
        }
        let metadata = pb::SingleMessageMetadata::decode(body.split_to(metadata_size))
            .map_err(|error| format!("metadata of message {index}: {error}"))?;
        let payload_size = usize::try_from(metadata.payload_size)
            .map_err(|_| format!("message {index} claims a payload of {} bytes", metadata.payload_size))?;
        if payload_size > body.remaining() {
            return Err(format!("payload of message {index} claims {payload_size} bytes, {} remain", body.remaining()));
        }
        let payload = body.split_to(payload_size);
        messages.push(BatchedMessage { metadata, payload });
    }
    Ok(messages)
}

/// Encodes messages as a batch body, as a batching producer writes it.
pub fn encode_batch(messages: &[BatchedMessage]) -> Bytes {
    let mut body = BytesMut::new();
    for message in messages {
        let metadata =
            pb::SingleMessageMetadata { payload_size: message.payload.len() as i32, ..message.metadata.clone() };
        body.put_u32(metadata.encoded_len() as u32);
        metadata.encode_raw(&mut body);
        body.put_slice(&message.payload);
    }
    body.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(key: &str, payload: &'static [u8]) -> BatchedMessage {
        BatchedMessage {
            metadata: pb::SingleMessageMetadata { partition_key: Some(key.to_owned()), ..Default::default() },
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn batches_round_trip() {
        let messages = vec![message("a", b"one"), message("b", b""), message("c", b"three")];
        let body = encode_batch(&messages);
        let split = split_batch(body, 3).expect("split");
        assert_eq!(split.len(), 3);
        assert_eq!(split[0].payload, Bytes::from_static(b"one"));
        assert_eq!(split[2].metadata.partition_key.as_deref(), Some("c"));
    }

    #[test]
    fn lying_batches_are_errors_not_allocations() {
        let body = encode_batch(&[message("a", b"one")]);
        assert!(split_batch(body.clone(), 1_000_000).unwrap_err().contains("claims"));
        assert!(split_batch(body.slice(..body.len() - 1), 1).is_err());
    }

    #[test]
    fn every_codec_is_restored_and_sizes_are_checked() {
        let plain: Vec<u8> = b"magnetar ".iter().copied().cycle().take(4_000).collect();
        let metadata = |codec: pb::CompressionType, size: usize| pb::MessageMetadata {
            compression: Some(codec as i32),
            uncompressed_size: Some(size as u32),
            ..Default::default()
        };
        let lz4 = lz4_flex::block::compress(&plain);
        assert_eq!(decompress(&metadata(pb::CompressionType::Lz4, plain.len()), lz4.clone().into()).unwrap(), plain);
        let snappy = snap::raw::Encoder::new().compress_vec(&plain).unwrap();
        assert_eq!(decompress(&metadata(pb::CompressionType::Snappy, plain.len()), snappy.into()).unwrap(), plain);
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut zlib, &plain).unwrap();
        let zlib = zlib.finish().unwrap();
        assert_eq!(decompress(&metadata(pb::CompressionType::Zlib, plain.len()), zlib.into()).unwrap(), plain);
        assert!(decompress(&metadata(pb::CompressionType::Lz4, 3), lz4.into()).is_err());
        let huge = metadata(pb::CompressionType::Zstd, MAX_UNCOMPRESSED_SIZE + 1);
        assert!(decompress(&huge, Bytes::from_static(b"x")).unwrap_err().contains("over the limit"));
    }
}
