//! Payload compression as Pulsar clients write it: the body after `MessageMetadata` (a single
//! payload, or a whole batch body) is compressed with the codec named in the metadata's
//! `compression` field, and `uncompressed_size` holds the original length. The broker never
//! looks inside; consumers decompress before splitting a batch.
//!
//! LZ4 is the raw LZ4 block format (no frame header), as Pulsar's `CompressionCodecLZ4`
//! writes it; ZSTD is a standard zstd frame; ZLIB is deflate with the zlib header and
//! trailer (Java's `Deflater` at its default level, `CompressionCodecZLib`); SNAPPY is the raw
//! snappy block format, not the framed one (`CompressionCodecSnappy`, Xerial's
//! `Snappy.compress`). Decompression trusts no size it reads: the
//! declared `uncompressed_size` is checked against [`MAX_UNCOMPRESSED_SIZE`] before anything
//! is allocated, and the result must have exactly that length.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use magnetar_proto::pulsar as pb;

use crate::error::ClientError;

/// The largest uncompressed body this client accepts: the most a broker lets a client send
/// uncompressed is 5 MB by default; this leaves ample room without letting a small hostile
/// frame claim gigabytes.
pub use magnetar_proto::batch::MAX_UNCOMPRESSED_SIZE;

/// zstd's level in Pulsar's codec (`CompressionCodecZstd.ZSTD_COMPRESSION_LEVEL`).
const ZSTD_LEVEL: i32 = 3;

/// How a producer compresses its payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CompressionType {
    #[default]
    None,
    Lz4,
    Zstd,
    Zlib,
    Snappy,
}

impl CompressionType {
    pub fn as_str(self) -> &'static str {
        match self {
            CompressionType::None => "NONE",
            CompressionType::Lz4 => "LZ4",
            CompressionType::Zstd => "ZSTD",
            CompressionType::Zlib => "ZLIB",
            CompressionType::Snappy => "SNAPPY",
        }
    }

    /// The metadata field's value; `None` for no compression (the field is left unset).
    pub(crate) fn to_wire(self) -> Option<i32> {
        match self {
            CompressionType::None => None,
            CompressionType::Lz4 => Some(pb::CompressionType::Lz4 as i32),
            CompressionType::Zstd => Some(pb::CompressionType::Zstd as i32),
            CompressionType::Zlib => Some(pb::CompressionType::Zlib as i32),
            CompressionType::Snappy => Some(pb::CompressionType::Snappy as i32),
        }
    }

    /// Compresses `body`.
    pub(crate) fn compress(self, body: &[u8]) -> Result<Bytes, ClientError> {
        match self {
            CompressionType::None => Ok(Bytes::copy_from_slice(body)),
            CompressionType::Lz4 => Ok(Bytes::from(lz4_flex::block::compress(body))),
            CompressionType::Zstd => {
                let mut out = vec![0u8; zstd_safe::compress_bound(body.len())];
                let size = zstd_safe::compress(&mut out[..], body, ZSTD_LEVEL).map_err(|code| {
                    let source = std::io::Error::other(zstd_safe::get_error_name(code));
                    ClientError::Compression { codec: "ZSTD", source }
                })?;
                out.truncate(size);
                Ok(Bytes::from(out))
            }
            CompressionType::Zlib => {
                use std::io::Write;
                let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                let written = encoder.write_all(body).and_then(|()| encoder.finish());
                written.map(Bytes::from).map_err(|source| ClientError::Compression { codec: "ZLIB", source })
            }
            CompressionType::Snappy => snap::raw::Encoder::new()
                .compress_vec(body)
                .map(Bytes::from)
                .map_err(|error| ClientError::Compression { codec: "SNAPPY", source: std::io::Error::other(error) }),
        }
    }
}

impl fmt::Display for CompressionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CompressionType {
    type Err = ClientError;

    fn from_str(text: &str) -> Result<Self, ClientError> {
        match text.to_ascii_lowercase().as_str() {
            "none" => Ok(CompressionType::None),
            "lz4" => Ok(CompressionType::Lz4),
            "zstd" => Ok(CompressionType::Zstd),
            "zlib" => Ok(CompressionType::Zlib),
            "snappy" => Ok(CompressionType::Snappy),
            _ => Err(ClientError::InvalidConfig {
                setting: "compression",
                reason: "expected NONE, LZ4, ZSTD, ZLIB or SNAPPY",
            }),
        }
    }
}

/// Restores the body of an entry whose metadata says it is compressed; returns `body`
/// unchanged when it is not (the broker's compactor reads bodies the same way).
pub(crate) use magnetar_proto::batch::decompress;

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(codec: CompressionType, size: usize) -> pb::MessageMetadata {
        pb::MessageMetadata { compression: codec.to_wire(), uncompressed_size: Some(size as u32), ..Default::default() }
    }

    #[test]
    fn every_codec_round_trips_and_shrinks_repetitive_bodies() {
        let body: Vec<u8> = b"magnetar ".iter().copied().cycle().take(10_000).collect();
        for codec in [CompressionType::Lz4, CompressionType::Zstd, CompressionType::Zlib, CompressionType::Snappy] {
            let compressed = codec.compress(&body).expect("compress");
            assert!(compressed.len() < body.len() / 10, "{codec} gave {} bytes", compressed.len());
            let restored = decompress(&metadata(codec, body.len()), compressed).expect("decompress");
            assert_eq!(restored, body, "{codec}");
        }
    }

    #[test]
    fn uncompressed_body_passes_through() {
        let body = Bytes::from_static(b"plain");
        assert_eq!(decompress(&metadata(CompressionType::None, 5), body.clone()), Ok(body));
    }

    #[test]
    fn wrong_uncompressed_size_or_garbage_is_an_error() {
        let compressed = CompressionType::Lz4.compress(b"hello hello hello").expect("compress");
        assert!(decompress(&metadata(CompressionType::Lz4, 3), compressed).is_err());
        let garbage = Bytes::from_static(b"\xff\xff\xff\xff\x00");
        assert!(decompress(&metadata(CompressionType::Zstd, 100), garbage.clone()).is_err());
        assert!(decompress(&metadata(CompressionType::Lz4, 100), garbage).is_err());
    }

    #[test]
    fn huge_declared_size_is_refused_before_allocating() {
        let error = decompress(&metadata(CompressionType::Lz4, u32::MAX as usize), Bytes::from_static(b"x"))
            .expect_err("too large");
        assert!(error.contains("over the limit"), "{error}");
    }

    #[test]
    fn codec_names_parse() {
        assert_eq!("lz4".parse::<CompressionType>().ok(), Some(CompressionType::Lz4));
        assert_eq!("ZSTD".parse::<CompressionType>().ok(), Some(CompressionType::Zstd));
        assert_eq!("zlib".parse::<CompressionType>().ok(), Some(CompressionType::Zlib));
        assert_eq!("SNAPPY".parse::<CompressionType>().ok(), Some(CompressionType::Snappy));
        assert!("gzip".parse::<CompressionType>().is_err());
    }

    #[test]
    fn zlib_has_the_zlib_header_and_snappy_is_the_raw_block_format() {
        let body = b"hello hello hello hello";
        let zlib = CompressionType::Zlib.compress(body).expect("zlib");
        // CMF 0x78 (deflate, 32 KiB window) and a header checksum divisible by 31.
        assert_eq!(zlib[0], 0x78);
        assert_eq!((u16::from(zlib[0]) << 8 | u16::from(zlib[1])) % 31, 0);
        let snappy = CompressionType::Snappy.compress(body).expect("snappy");
        // The raw format starts with the length as a varint; the framed one with 0xff "sNaPpY".
        assert_eq!(snappy[0] as usize, body.len());
        let restored = decompress(&metadata(CompressionType::Snappy, body.len()), snappy).expect("snappy");
        assert_eq!(&restored[..], body);
    }

    #[test]
    fn zlib_and_snappy_bodies_that_lie_about_their_size_are_errors() {
        let body = vec![b'x'; 5000];
        for codec in [CompressionType::Zlib, CompressionType::Snappy] {
            let compressed = codec.compress(&body).expect("compress");
            assert!(decompress(&metadata(codec, 100), compressed.clone()).is_err(), "{codec}: too small");
            assert!(decompress(&metadata(codec, 6000), compressed).is_err(), "{codec}: too large");
            let garbage = Bytes::from_static(b"\x05\xff\xff\xff\xff\xff");
            assert!(decompress(&metadata(codec, 5), garbage).is_err(), "{codec}: garbage");
        }
    }
}
