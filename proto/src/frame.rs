//! Pulsar frames.
//!
//! A simple command is `[total size][command size][BaseCommand]`; a payload command (SEND,
//! MESSAGE) follows the command with `[magic 0x0e01][CRC32C][metadata size][MessageMetadata]
//! [payload]`, the checksum covering everything after itself. All sizes are big-endian u32.
//!
//! The codec never trusts a length before checking it: a total size over the limit is refused
//! before anything is buffered, inner sizes must fit inside the frame, and a frame still
//! arriving gets at most [`READ_AHEAD`] bytes reserved ahead of what came. Errors say whether
//! the stream is still in step ([`FrameError::is_fatal`]): after a bad checksum or an unknown
//! command the frame was consumed whole and the next one can be read; after an oversized or
//! truncated frame the connection must be closed.
//!
//! The bytes from the magic number to the end are kept as one [`Payload`]: the broker stores
//! exactly those bytes as a ledger entry and sends them back unchanged to consumers, so message
//! bodies (compression, batches, chunks, encryption) pass through as the producer wrote them.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use tokio_util::codec::{Decoder, Encoder};

use crate::pulsar::{base_command, BaseCommand, MessageMetadata};

/// The magic number in front of a checksummed payload.
pub const MAGIC_CRC32C: u16 = 0x0e01;

/// Most bytes the decoder reserves ahead of what it has buffered for a frame still arriving;
/// the buffer grows further as the frame's bytes actually come in.
pub const READ_AHEAD: usize = 64 * 1024;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub command: BaseCommand,
    pub payload: Option<Payload>,
}

impl Frame {
    /// A frame with no payload.
    pub fn simple(command: BaseCommand) -> Self {
        Frame { command, payload: None }
    }

    /// The command's type, or `None` if it is not one Magnetar knows.
    pub fn command_type(&self) -> Option<base_command::Type> {
        base_command::Type::try_from(self.command.command_type).ok()
    }
}

/// Message metadata and body, as the bytes that go on the wire after the command.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    /// Starting at the magic number (or at the metadata size for old clients that send no
    /// checksum).
    data: Bytes,
    metadata: MessageMetadata,
    /// Where the body starts in `data`.
    body_offset: usize,
}

impl Payload {
    /// Builds a checksummed payload from metadata and body, as a producer does.
    pub fn new(metadata: MessageMetadata, body: &[u8]) -> Self {
        let metadata_len = metadata.encoded_len();
        let mut buf = BytesMut::with_capacity(10 + metadata_len + body.len());
        buf.put_u16(MAGIC_CRC32C);
        buf.put_u32(0); // checksum, filled below
        buf.put_u32(metadata_len as u32);
        // Encoding into a buffer with enough capacity cannot fail.
        metadata.encode_raw(&mut buf);
        buf.put_slice(body);
        let checksum = crc32c::crc32c(&buf[6..]);
        buf[2..6].copy_from_slice(&checksum.to_be_bytes());
        let body_offset = 10 + metadata_len;
        Payload { data: buf.freeze(), metadata, body_offset }
    }

    /// Parses stored or received payload bytes, checking the checksum when there is one.
    pub fn parse(data: Bytes) -> Result<Self, FrameError> {
        let mut cursor = &data[..];
        let mut header = 0;
        if cursor.len() >= 2 && u16::from_be_bytes([cursor[0], cursor[1]]) == MAGIC_CRC32C {
            if cursor.len() < 6 {
                return Err(FrameError::Malformed { reason: "payload ends inside its checksum" });
            }
            let expected = u32::from_be_bytes([cursor[2], cursor[3], cursor[4], cursor[5]]);
            let actual = crc32c::crc32c(&cursor[6..]);
            if expected != actual {
                return Err(FrameError::Checksum { expected, actual, command: None });
            }
            cursor = &cursor[6..];
            header = 6;
        }
        if cursor.len() < 4 {
            return Err(FrameError::Malformed { reason: "payload ends inside its metadata size" });
        }
        let metadata_len = cursor.get_u32() as usize;
        if metadata_len > cursor.len() {
            return Err(FrameError::Malformed { reason: "metadata size exceeds the payload" });
        }
        let metadata = MessageMetadata::decode(&cursor[..metadata_len])
            .map_err(|source| FrameError::Decode { what: "MessageMetadata", source })?;
        let body_offset = header + 4 + metadata_len;
        Ok(Payload { data, metadata, body_offset })
    }

    pub fn metadata(&self) -> &MessageMetadata {
        &self.metadata
    }

    /// The message body (for a batch, the batch of single messages; maybe compressed).
    pub fn body(&self) -> Bytes {
        self.data.slice(self.body_offset..)
    }

    /// The whole payload as it goes on the wire and into a ledger entry.
    pub fn as_bytes(&self) -> &Bytes {
        &self.data
    }

    pub fn into_bytes(self) -> Bytes {
        self.data
    }

    /// Messages in this payload: the batch size, or 1.
    pub fn num_messages(&self) -> u32 {
        self.metadata.num_messages_in_batch.unwrap_or(1).max(1) as u32
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("frame of {size} bytes is too small to hold a command")]
    TooSmall { size: usize },
    #[error("connection closed inside a frame ({buffered} bytes of it received)")]
    Truncated { buffered: usize },
    #[error("malformed frame: {reason}")]
    Malformed { reason: &'static str },
    #[error("payload checksum mismatch: frame says {expected:#010x}, content has {actual:#010x}")]
    Checksum {
        expected: u32,
        actual: u32,
        /// The command the bad payload came with, so that a SEND can be answered.
        command: Option<Box<BaseCommand>>,
    },
    #[error("cannot decode {what}: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    #[error("unknown command type {command_type}")]
    UnknownCommand { command_type: i32 },
    #[error("frame i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// True when the byte stream is out of step and the connection must be closed.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            FrameError::TooLarge { .. }
                | FrameError::TooSmall { .. }
                | FrameError::Truncated { .. }
                | FrameError::Io(_)
        )
    }
}

/// Encoder and decoder of Pulsar frames with a maximum frame size.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_frame_size: usize,
}

impl FrameCodec {
    pub fn new(max_frame_size: usize) -> Self {
        FrameCodec { max_frame_size }
    }

    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(crate::DEFAULT_MAX_MESSAGE_SIZE + crate::FRAME_OVERHEAD)
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let total = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if total > self.max_frame_size {
            return Err(FrameError::TooLarge { size: total, max: self.max_frame_size });
        }
        if total < 4 {
            // Too short to hold a command size: the stream cannot be trusted after it.
            return Err(FrameError::TooSmall { size: total });
        }
        if src.len() < 4 + total {
            // Room for the rest, but never more than READ_AHEAD at once: a peer's four bytes
            // must not make the codec reserve a whole maximal frame before any of it arrives.
            src.reserve((4 + total - src.len()).min(READ_AHEAD));
            return Ok(None);
        }
        // The whole frame is here: consume it, so that any error below leaves the stream in step.
        src.advance(4);
        let mut frame = src.split_to(total).freeze();
        let command_len = frame.get_u32() as usize;
        if command_len > frame.len() {
            return Err(FrameError::Malformed { reason: "command size exceeds the frame" });
        }
        let command_bytes = frame.split_to(command_len);
        let command =
            BaseCommand::decode(command_bytes).map_err(|source| FrameError::Decode { what: "BaseCommand", source })?;
        if base_command::Type::try_from(command.command_type).is_err() {
            return Err(FrameError::UnknownCommand { command_type: command.command_type });
        }
        let payload = if frame.is_empty() {
            None
        } else {
            match Payload::parse(frame) {
                Ok(payload) => Some(payload),
                Err(FrameError::Checksum { expected, actual, .. }) => {
                    return Err(FrameError::Checksum { expected, actual, command: Some(Box::new(command)) })
                }
                Err(other) => return Err(other),
            }
        };
        Ok(Some(Frame { command, payload }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated { buffered: src.len() }),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_parts(&frame.command, frame.payload.as_ref().map(|p| &p.data[..]), self.max_frame_size, dst)
    }
}

/// Writes one frame from a command and optional raw payload bytes (as stored in a ledger entry).
pub fn encode_parts(
    command: &BaseCommand,
    payload: Option<&[u8]>,
    max_frame_size: usize,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    encode_head(command, payload.map_or(0, <[u8]>::len), max_frame_size, dst)?;
    if let Some(payload) = payload {
        dst.put_slice(payload);
    }
    Ok(())
}

/// Writes the start of a frame (sizes and command) whose `payload_len` payload bytes the
/// caller sends right after it (a vectored write of a stored entry, uncopied).
pub fn encode_head(
    command: &BaseCommand,
    payload_len: usize,
    max_frame_size: usize,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    let command_len = command.encoded_len();
    let total = 4 + command_len + payload_len;
    if total > max_frame_size {
        return Err(FrameError::TooLarge { size: total, max: max_frame_size });
    }
    dst.reserve(4 + total - payload_len);
    dst.put_u32(total as u32);
    dst.put_u32(command_len as u32);
    command.encode_raw(dst);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command;
    use proptest::prelude::*;

    fn encode(frame: Frame) -> BytesMut {
        let mut buf = BytesMut::new();
        FrameCodec::default().encode(frame, &mut buf).expect("encode");
        buf
    }

    fn metadata(producer: String, sequence_id: u64, batch: i32) -> MessageMetadata {
        MessageMetadata {
            producer_name: producer,
            sequence_id,
            publish_time: 1_700_000_000_000,
            num_messages_in_batch: Some(batch),
            ..Default::default()
        }
    }

    proptest! {
        #[test]
        fn simple_frames_round_trip(request_id in any::<u64>(), topic in "[a-z/:-]{1,60}") {
            let frame = Frame::simple(command::lookup(&topic, request_id, false));
            let mut buf = encode(frame.clone());
            let decoded = FrameCodec::default().decode(&mut buf).expect("decode").expect("whole frame");
            prop_assert_eq!(decoded, frame);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn payload_frames_round_trip(
            producer in "[a-z]{1,20}",
            sequence_id in any::<u64>(),
            batch in 1i32..1000,
            body in proptest::collection::vec(any::<u8>(), 0..4096),
        ) {
            let payload = Payload::new(metadata(producer, sequence_id, batch), &body);
            let frame = Frame { command: command::send(7, sequence_id, batch), payload: Some(payload) };
            let mut buf = encode(frame.clone());
            let decoded = FrameCodec::default().decode(&mut buf).expect("decode").expect("whole frame");
            prop_assert_eq!(&decoded, &frame);
            prop_assert_eq!(decoded.payload.expect("payload").body(), Bytes::from(body));
        }

        #[test]
        fn split_input_decodes_once_complete(body in proptest::collection::vec(any::<u8>(), 0..512), cut in 0usize..600) {
            let frame = Frame { command: command::send(1, 2, 1), payload: Some(Payload::new(metadata("p".into(), 2, 1), &body)) };
            let whole = encode(frame.clone());
            let cut = cut.min(whole.len() - 1);
            let mut codec = FrameCodec::default();
            let mut buf = BytesMut::from(&whole[..cut]);
            prop_assert!(codec.decode(&mut buf).expect("partial is not an error").is_none());
            buf.extend_from_slice(&whole[cut..]);
            prop_assert_eq!(codec.decode(&mut buf).expect("decode"), Some(frame));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut codec = FrameCodec::new(1024);
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..8 {
                match codec.decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(error) if error.is_fatal() => break,
                    Err(_) => continue,
                }
            }
            let _ = codec.decode_eof(&mut buf);
        }
    }

    #[test]
    fn bad_checksum_is_reported_with_its_command_and_frame_consumed() {
        let frame = Frame {
            command: command::send(3, 9, 1),
            payload: Some(Payload::new(metadata("p".into(), 9, 1), b"hello")),
        };
        let mut buf = encode(frame.clone());
        let last = buf.len() - 1;
        buf[last] ^= 0xff;
        buf.extend_from_slice(&encode(Frame::simple(command::ping())));
        let mut codec = FrameCodec::default();
        match codec.decode(&mut buf) {
            Err(FrameError::Checksum { command: Some(command), .. }) => {
                assert_eq!(command.send.expect("send").sequence_id, 9)
            }
            other => panic!("expected a checksum error, got {other:?}"),
        }
        let next = codec.decode(&mut buf).expect("next frame").expect("ping");
        assert_eq!(next.command_type(), Some(base_command::Type::Ping));
    }

    #[test]
    fn oversized_frame_is_refused_before_buffering() {
        let mut buf = BytesMut::new();
        buf.put_u32(64 * 1024 * 1024);
        buf.put_u32(4);
        let error = FrameCodec::default().decode(&mut buf).expect_err("too large");
        assert!(matches!(error, FrameError::TooLarge { size, .. } if size == 64 * 1024 * 1024));
        assert!(error.is_fatal());
    }

    #[test]
    fn truncated_frame_at_eof_is_an_error() {
        let whole = encode(Frame::simple(command::ping()));
        let mut buf = BytesMut::from(&whole[..whole.len() - 1]);
        let error = FrameCodec::default().decode_eof(&mut buf).expect_err("truncated");
        assert!(matches!(error, FrameError::Truncated { .. }));
    }

    #[test]
    fn unknown_command_is_typed_and_skippable() {
        let mut command = command::ping();
        command.command_type = 999;
        let mut buf = encode(Frame::simple(command));
        buf.extend_from_slice(&encode(Frame::simple(command::ping())));
        let mut codec = FrameCodec::default();
        let error = codec.decode(&mut buf).expect_err("unknown");
        assert!(matches!(error, FrameError::UnknownCommand { command_type: 999 }));
        assert!(!error.is_fatal());
        assert!(codec.decode(&mut buf).expect("next").is_some());
    }

    #[test]
    fn command_size_larger_than_frame_is_malformed() {
        let mut buf = BytesMut::new();
        buf.put_u32(8);
        buf.put_u32(100);
        buf.put_u32(0);
        let error = FrameCodec::default().decode(&mut buf).expect_err("malformed");
        assert!(matches!(error, FrameError::Malformed { .. }));
        assert!(buf.is_empty());
    }

    #[test]
    fn garbage_command_bytes_are_a_decode_error() {
        let mut buf = BytesMut::new();
        buf.put_u32(4 + 3);
        buf.put_u32(3);
        buf.put_slice(&[0xff, 0xff, 0xff]);
        let error = FrameCodec::default().decode(&mut buf).expect_err("garbage");
        assert!(matches!(error, FrameError::Decode { .. }));
    }
}
