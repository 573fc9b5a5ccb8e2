//! Fuzzed inputs for the wire formats: the frame codec (sizes, checksum, BaseCommand), message
//! metadata, batch bodies and their decompression. Seeds are real frames built with this
//! crate's own encoders (CONNECT, LOOKUP, PRODUCER, SEND with single, batched and compressed
//! payloads, chunks, SUBSCRIBE, FLOW, ACK, MESSAGE, ...), mutated as a fuzzer would, plus
//! random bytes. Every input must give frames or a typed error with a message, never a
//! panic, a stall or an allocation out of proportion to the input.
//!
//! `MAGNETAR_FUZZ_CASES=1000000 cargo test --release -p magnetar-proto --test fuzz` is the long
//! run; without it each property runs the CI default below.

#[path = "fuzz_support/mod.rs"]
mod fuzz_support;

use bytes::{BufMut, Bytes, BytesMut};
use fuzz_support::alloc::largest_allocation;
use fuzz_support::{config, inputs, interesting_u32, mutated};
use magnetar_proto::batch::{self, BatchedMessage, MAX_UNCOMPRESSED_SIZE};
use magnetar_proto::command;
use magnetar_proto::frame::{encode_parts, READ_AHEAD};
use magnetar_proto::pulsar::{self as pb, BaseCommand};
use magnetar_proto::{Frame, FrameCodec, FrameError, Payload};
use proptest::prelude::*;
use prost::Message as _;
use tokio_util::codec::{Decoder, Encoder};

/// CI cases per property (the parsing targets are cheap: together well under a second each
/// thousand in a debug build).
const CI_CASES: u32 = 2000;

const TOPIC: &str = "persistent://public/default/fuzz";

fn metadata(sequence_id: u64) -> pb::MessageMetadata {
    pb::MessageMetadata {
        producer_name: "fuzz-producer".to_owned(),
        sequence_id,
        publish_time: 1_700_000_000_000,
        properties: vec![pb::KeyValue { key: "k".to_owned(), value: "v".to_owned() }],
        partition_key: Some("key-1".to_owned()),
        ..Default::default()
    }
}

fn batched(count: usize) -> Vec<BatchedMessage> {
    (0..count)
        .map(|index| BatchedMessage {
            metadata: pb::SingleMessageMetadata {
                partition_key: Some(format!("key-{index}")),
                properties: vec![pb::KeyValue { key: "i".to_owned(), value: index.to_string() }],
                event_time: Some(1_700_000_000_000 + index as u64),
                sequence_id: Some(index as u64),
                ..Default::default()
            },
            payload: Bytes::from(format!("message {index} ").repeat(index + 1)),
        })
        .collect()
}

/// `plain` compressed with `codec`, as a producer does.
fn compress(codec: pb::CompressionType, plain: &[u8]) -> Vec<u8> {
    match codec {
        pb::CompressionType::None => plain.to_vec(),
        pb::CompressionType::Lz4 => lz4_flex::block::compress(plain),
        pb::CompressionType::Zstd => {
            let mut out = vec![0u8; zstd_safe::compress_bound(plain.len())];
            let written = zstd_safe::compress(&mut out[..], plain, 3).expect("zstd compresses");
            out.truncate(written);
            out
        }
        pb::CompressionType::Zlib => {
            use std::io::Write;
            let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(plain).expect("zlib compresses");
            encoder.finish().expect("zlib compresses")
        }
        pb::CompressionType::Snappy => snap::raw::Encoder::new().compress_vec(plain).expect("snappy compresses"),
    }
}

const CODECS: [pb::CompressionType; 5] = [
    pb::CompressionType::None,
    pb::CompressionType::Lz4,
    pb::CompressionType::Zlib,
    pb::CompressionType::Zstd,
    pb::CompressionType::Snappy,
];

/// Payloads as producers write them: a single message, a batch, a compressed batch of every
/// codec, one chunk of a chunked message, a message without a checksum (old clients).
fn payload_seeds() -> Vec<Payload> {
    let mut payloads = vec![Payload::new(metadata(1), b"hello magnetar")];
    for codec in CODECS {
        let body = batch::encode_batch(&batched(4));
        let compressed = compress(codec, &body);
        let metadata = pb::MessageMetadata {
            num_messages_in_batch: Some(4),
            compression: (codec != pb::CompressionType::None).then_some(codec as i32),
            uncompressed_size: (codec != pb::CompressionType::None).then_some(body.len() as u32),
            ..metadata(2)
        };
        payloads.push(Payload::new(metadata, &compressed));
    }
    let chunk = pb::MessageMetadata {
        uuid: Some("fuzz-producer-7".to_owned()),
        num_chunks_from_msg: Some(3),
        total_chunk_msg_size: Some(300),
        chunk_id: Some(1),
        ..metadata(3)
    };
    payloads.push(Payload::new(chunk, &[7u8; 100]));
    let tombstone = pb::MessageMetadata { null_value: Some(true), ordering_key: Some(b"ok".to_vec()), ..metadata(4) };
    payloads.push(Payload::new(tombstone, b""));
    payloads
}

/// The same without the magic number and checksum, as a client that sends none writes it.
fn unchecked(payload: &Payload) -> Vec<u8> {
    payload.as_bytes()[6..].to_vec()
}

fn encode(command: &BaseCommand, payload: Option<&[u8]>) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_parts(command, payload, usize::MAX, &mut buf).expect("encodes");
    buf.to_vec()
}

/// Real frames, one seed each, and a few streams of several.
fn frame_seeds() -> Vec<Vec<u8>> {
    use pb::command_subscribe::{InitialPosition, SubType};
    let payloads = payload_seeds();
    let mut ack_set_message = command::message(1, 5, 6, 2);
    if let Some(message) = ack_set_message.message.as_mut() {
        message.ack_set = vec![0b1010, -1];
    }
    let mut frames = vec![
        encode(&command::connect("fuzz-client", Some("token".to_owned()), Some(b"eyJhbGciOi".to_vec())), None),
        encode(&command::connected("magnetar", 19, 5 * 1024 * 1024, None), None),
        encode(&command::ping(), None),
        encode(&command::pong(), None),
        encode(&command::lookup(TOPIC, 1, false), None),
        encode(&command::partitioned_metadata(TOPIC, 2), None),
        encode(&command::producer(TOPIC, 1, 3, Some("fuzz-producer".to_owned())), None),
        encode(&command::producer_success(3, "fuzz-producer", -1), None),
        encode(&command::subscribe(TOPIC, "sub", SubType::KeyShared, 1, 4, InitialPosition::Earliest), None),
        encode(&command::flow(1, 1000), None),
        encode(
            &command::ack(
                1,
                pb::command_ack::AckType::Individual,
                vec![command::message_id(5, 6), command::message_id(5, 7)],
            ),
            None,
        ),
        encode(&command::send_receipt(1, 1, 1, 5, 6), None),
        encode(&command::redeliver_unacknowledged_messages(1, vec![command::message_id(5, 6)]), None),
        encode(&command::seek(1, 5, Some(command::message_id(5, 0)), None), None),
        encode(&command::get_last_message_id(1, 6), None),
        encode(&command::close_consumer(1, 7), None),
        encode(&command::close_producer(1, 8), None),
        encode(&command::error(9, pb::ServerError::TopicNotFound, "no such topic"), None),
    ];
    for (sequence, payload) in payloads.iter().enumerate() {
        let count = payload.num_messages() as i32;
        frames.push(encode(&command::send(1, sequence as u64, count), Some(payload.as_bytes())));
        frames.push(encode(&command::message(1, 5, sequence as u64, 0), Some(payload.as_bytes())));
    }
    frames.push(encode(&command::send(1, 99, 1), Some(&unchecked(&payloads[0]))));
    frames.push(encode(&ack_set_message, Some(payloads[2].as_bytes())));
    // Streams: a handshake and a publish, a consumer's traffic.
    let stream = |parts: &[usize]| parts.iter().flat_map(|&i| frames[i].clone()).collect::<Vec<u8>>();
    let streams = [stream(&[0, 4, 6, 18, 2]), stream(&[8, 9, 19, 21, 10]), stream(&[20, 22, 3])];
    frames.extend(streams);
    frames
}

/// What decoding a stream yields, one line per frame or error, up to the first fatal error.
fn outcomes(codec: &mut FrameCodec, chunks: &[&[u8]]) -> Result<Vec<String>, TestCaseError> {
    let mut out = Vec::new();
    let mut buf = BytesMut::new();
    let last = chunks.len().saturating_sub(1);
    for (index, chunk) in chunks.iter().enumerate() {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            let result = if index == last { codec.decode_eof(&mut buf) } else { codec.decode(&mut buf) };
            match result {
                Ok(Some(frame)) => {
                    prop_assert!(buf.len() < before, "a frame was decoded without consuming bytes");
                    check_frame(&frame)?;
                    out.push(format!("{frame:?}"));
                }
                Ok(None) => break,
                Err(error) => {
                    let text = error.to_string();
                    prop_assert!(!text.is_empty(), "an error without a message: {error:?}");
                    out.push(text);
                    if error.is_fatal() {
                        return Ok(out);
                    }
                    prop_assert!(buf.len() < before, "a non-fatal error left the stream where it was: {error}");
                }
            }
        }
    }
    Ok(out)
}

/// A decoded frame is what it says: it encodes again, and that decodes to the same encoding;
/// its payload is the bytes after the command, its body a suffix of them.
fn check_frame(frame: &Frame) -> Result<(), TestCaseError> {
    prop_assert!(frame.command_type().is_some(), "a frame with an unknown type was let through");
    let mut first = BytesMut::new();
    FrameCodec::new(usize::MAX).encode(frame.clone(), &mut first).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let again = FrameCodec::new(usize::MAX)
        .decode(&mut first.clone())
        .map_err(|e| TestCaseError::fail(format!("a decoded frame does not decode again: {e}")))?
        .ok_or_else(|| TestCaseError::fail("a re-encoded frame is incomplete"))?;
    let mut second = BytesMut::new();
    FrameCodec::new(usize::MAX).encode(again, &mut second).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(first, second);
    if let Some(payload) = &frame.payload {
        check_payload(payload)?;
    }
    Ok(())
}

fn check_payload(payload: &Payload) -> Result<(), TestCaseError> {
    let bytes = payload.as_bytes();
    let body = payload.body();
    prop_assert!(bytes.ends_with(&body), "the body is not the end of the payload");
    prop_assert!(payload.num_messages() >= 1);
    Ok(())
}

/// What the consumer side does with a payload: decompress, then split a batch. Returns an
/// error text or the messages found; either way the sizes must add up.
fn consume(payload: &Payload) -> Result<Result<usize, String>, TestCaseError> {
    let metadata = payload.metadata();
    let body = match batch::decompress(metadata, payload.body()) {
        Ok(body) => body,
        Err(reason) => {
            prop_assert!(!reason.is_empty());
            return Ok(Err(reason));
        }
    };
    if let Some(size) = metadata.uncompressed_size.filter(|_| metadata.compression.is_some_and(|c| c != 0)) {
        prop_assert_eq!(body.len(), size as usize, "decompressed to another size than declared");
    }
    let Some(count) = metadata.num_messages_in_batch else { return Ok(Ok(1)) };
    let Ok(count) = usize::try_from(count) else { return Ok(Err(format!("negative count {count}"))) };
    match batch::split_batch(body.clone(), count) {
        Ok(messages) => {
            prop_assert_eq!(messages.len(), count);
            let total: usize = messages.iter().map(|m| m.payload.len()).sum();
            prop_assert!(total <= body.len());
            Ok(Ok(messages.len()))
        }
        Err(reason) => {
            prop_assert!(!reason.is_empty());
            Ok(Err(reason))
        }
    }
}

/// The uncompressed size a fuzzed metadata declares.
#[derive(Debug, Clone)]
enum Declared {
    True,
    Nudged(i32),
    Any(u32),
}

/// The most any codec restores per input byte (zstd's 128 KiB per 4-byte RLE block).
const WORST_RATIO: usize = 32 * 1024;

/// Allocation allowed for parsing `len` bytes: proportional to them (copies, decoded fields,
/// growth by doubling), plus the codec's read-ahead, never what a length field claims.
fn allowance(len: usize) -> usize {
    64 * len + 2 * READ_AHEAD + 64 * 1024
}

fn seeds_of_payloads() -> Vec<Vec<u8>> {
    let payloads = payload_seeds();
    let mut seeds: Vec<Vec<u8>> = payloads.iter().map(|p| p.as_bytes().to_vec()).collect();
    seeds.extend(payloads.iter().map(unchecked));
    seeds
}

/// Sets the payload's checksum to match its (mutated) content, so that mutations reach the
/// metadata and body instead of stopping at the checksum.
fn repair_checksum(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.len() >= 6 && bytes[..2] == [0x0e, 0x01] {
        let checksum = crc32c::crc32c(&bytes[6..]);
        bytes[2..6].copy_from_slice(&checksum.to_be_bytes());
    }
    bytes
}

/// The frame with every size field made true again around a mutated command or payload: the
/// mutation then lands inside the structure rather than in its framing.
fn reframe(frame: &[u8]) -> Option<Vec<u8>> {
    let command_len = u32::from_be_bytes(frame.get(4..8)?.try_into().ok()?) as usize;
    let command = frame.get(8..8 + command_len)?;
    let payload = repair_checksum(frame[8 + command_len..].to_vec());
    let mut out = Vec::with_capacity(frame.len());
    out.put_u32((4 + command.len() + payload.len()) as u32);
    out.put_u32(command.len() as u32);
    out.put_slice(command);
    out.put_slice(&payload);
    Some(out)
}

proptest! {
    #![proptest_config(config(CI_CASES, 1))]

    /// Mutated real frames and random bytes, decoded whole with the default limit and with a
    /// small one.
    #[test]
    fn fuzz_frame_stream(input in inputs(frame_seeds(), 4096), repair in any::<bool>()) {
        let input = if repair { reframe(&input).unwrap_or(input) } else { input };
        for max in [FrameCodec::default().max_frame_size(), 256] {
            let (result, largest) = largest_allocation(|| outcomes(&mut FrameCodec::new(max), &[&input]));
            result?;
            prop_assert!(largest <= allowance(input.len()), "{largest} bytes allocated for {} input bytes", input.len());
        }
    }

    /// The same stream arriving in pieces decodes to the same frames and errors as in one
    /// piece: the decoder keeps no state but its buffer.
    #[test]
    fn fuzz_frame_stream_in_pieces(
        input in inputs(frame_seeds(), 1024),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let whole = outcomes(&mut FrameCodec::default(), &[&input])?;
        let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(input.len() + 1)).collect();
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut start = 0;
        for cut in cuts {
            pieces.push(&input[start..cut]);
            start = cut;
        }
        pieces.push(&input[start..]);
        let (pieced, largest) = largest_allocation(|| outcomes(&mut FrameCodec::default(), &pieces));
        prop_assert_eq!(whole, pieced?);
        prop_assert!(largest <= allowance(input.len()), "{largest} bytes allocated for {} input bytes", input.len());
    }

    /// Payloads (metadata and body) as the broker parses stored entries and a consumer parses
    /// MESSAGE payloads, then decompressed and split as a consumer does.
    #[test]
    fn fuzz_payload_and_batch(input in mutated(seeds_of_payloads()), repair in any::<bool>()) {
        let input = if repair { repair_checksum(input) } else { input };
        let len = input.len();
        let (result, largest) = largest_allocation(|| -> Result<(), TestCaseError> {
            match Payload::parse(Bytes::from(input.clone())) {
                Ok(payload) => {
                    prop_assert_eq!(&payload.as_bytes()[..], &input[..]);
                    check_payload(&payload)?;
                    let _outcome = consume(&payload)?;
                }
                Err(error) => prop_assert!(!error.to_string().is_empty()),
            }
            Ok(())
        });
        result?;
        prop_assert!(largest <= allowance(len) + WORST_RATIO * len, "{largest} bytes allocated for {len} input bytes");
    }

    /// Batch bodies with any message count.
    #[test]
    fn fuzz_split_batch(
        input in inputs(vec![batch::encode_batch(&batched(1)).to_vec(), batch::encode_batch(&batched(5)).to_vec()], 512),
        count in prop_oneof![0usize..8, interesting_u32().prop_map(|c| c as usize), Just(usize::MAX)],
    ) {
        let len = input.len();
        let (result, largest) = largest_allocation(|| batch::split_batch(Bytes::from(input), count));
        match result {
            Ok(messages) => {
                prop_assert_eq!(messages.len(), count);
                let again = batch::split_batch(batch::encode_batch(&messages), count);
                prop_assert!(again.is_ok(), "an accepted batch does not split again: {:?}", again);
            }
            Err(reason) => prop_assert!(!reason.is_empty()),
        }
        prop_assert!(largest <= allowance(len), "{largest} bytes allocated for {len} input bytes");
    }

    /// Compressed bodies of every codec, mutated, with their true size, a nudged one or any.
    #[test]
    fn fuzz_decompress(
        codec in prop::sample::select(CODECS[1..].to_vec()),
        plain in prop_oneof![
            Just(batch::encode_batch(&batched(6)).to_vec()),
            (0usize..70_000).prop_map(|n| vec![0u8; n]),
            prop::collection::vec(any::<u8>(), 0..512),
        ],
        mutations in prop::collection::vec(fuzz_support::mutation(), 0..4),
        size in prop_oneof![
            2 => Just(Declared::True),
            1 => (-16i32..16).prop_map(Declared::Nudged),
            1 => interesting_u32().prop_map(Declared::Any),
        ],
    ) {
        let compressed = compress(codec, &plain);
        let body = fuzz_support::apply(&compressed, &mutations);
        let declared = match size {
            Declared::True => plain.len() as u32,
            Declared::Nudged(delta) => (plain.len() as u32).wrapping_add_signed(delta),
            Declared::Any(any) => any,
        };
        let metadata = pb::MessageMetadata {
            compression: Some(codec as i32),
            uncompressed_size: Some(declared),
            ..Default::default()
        };
        let len = body.len();
        let (result, largest) = largest_allocation(|| batch::decompress(&metadata, Bytes::from(body)));
        match result {
            Ok(restored) => {
                prop_assert_eq!(restored.len(), declared as usize);
                if mutations.is_empty() {
                    prop_assert_eq!(&restored[..], &plain[..]);
                }
            }
            Err(reason) => {
                prop_assert!(!reason.is_empty());
                prop_assert!(
                    !(mutations.is_empty() && matches!(size, Declared::True)),
                    "{} refused its own output of {} bytes: {}", codec.as_str_name(), plain.len(), reason
                );
            }
        }
        prop_assert!(largest <= allowance(len) + 2 * WORST_RATIO * len, "{largest} bytes allocated for {len} input bytes");
    }

    /// Message metadata itself, as bytes anywhere a metadata size points.
    #[test]
    fn fuzz_message_metadata(input in inputs(payload_seeds().iter().map(|p| p.metadata().encode_to_vec()).collect(), 256)) {
        let len = input.len();
        let (result, largest) = largest_allocation(|| pb::MessageMetadata::decode(&input[..]));
        if let Ok(metadata) = result {
            let again = pb::MessageMetadata::decode(&metadata.encode_to_vec()[..]);
            prop_assert!(again.is_ok(), "decoded metadata does not decode again");
        }
        prop_assert!(largest <= allowance(len), "{largest} bytes allocated for {len} input bytes");
    }
}

/// The seeds themselves decode to what was encoded: the properties start from real frames.
#[test]
fn fuzz_seeds_are_valid_frames() {
    let seeds = frame_seeds();
    let mut frames = 0;
    for seed in &seeds {
        let mut buf = BytesMut::from(&seed[..]);
        let mut codec = FrameCodec::default();
        while !buf.is_empty() {
            let frame = codec.decode(&mut buf).expect("a seed decodes").expect("a seed is whole");
            if let Some(payload) = &frame.payload {
                consume(payload).expect("checks hold").expect("a seed's payload is consumed");
            }
            frames += 1;
        }
    }
    assert!(frames > seeds.len(), "the streams hold several frames each");
}

/// Found by `fuzz_frame_stream`: a frame header claiming a frame just under the limit (5 MiB
/// by default), with nothing after it, made the codec reserve the whole frame at once.
#[test]
fn fuzz_regression_a_frame_header_alone_reserves_at_most_the_read_ahead() {
    let max = FrameCodec::default().max_frame_size();
    let header = ((max - 4) as u32).to_be_bytes();
    let mut buf = BytesMut::from(&[header[0], header[1], header[2], header[3], 0, 0, 0, 10][..]);
    let (result, largest) = largest_allocation(|| FrameCodec::default().decode(&mut buf));
    assert!(matches!(result, Ok(None)), "incomplete, not an error: {result:?}");
    assert!(largest <= 2 * READ_AHEAD, "{largest} bytes reserved for an 8-byte input");
    let error = FrameCodec::default().decode_eof(&mut buf).expect_err("truncated at the end");
    assert!(matches!(error, FrameError::Truncated { buffered: 8 }), "{error}");
}

/// Found by `fuzz_decompress`: a 4-byte LZ4 (or ZLIB, SNAPPY) body declaring 100 MB made the
/// decoder allocate 100 MB before failing; now the size is refused against what the body can
/// hold, naming both.
#[test]
fn fuzz_regression_a_small_body_claiming_a_large_size_is_refused_before_allocating() {
    for codec in [pb::CompressionType::Lz4, pb::CompressionType::Zlib, pb::CompressionType::Snappy] {
        let metadata = pb::MessageMetadata {
            compression: Some(codec as i32),
            uncompressed_size: Some(100_000_000),
            ..Default::default()
        };
        let (result, largest) =
            largest_allocation(|| batch::decompress(&metadata, Bytes::from_static(&[0x1f, 0, 1, 0])));
        let reason = result.expect_err("a lie");
        assert!(reason.contains("100000000") && reason.contains(codec.as_str_name()), "{reason}");
        assert!(largest < 64 * 1024, "{} allocated {largest} bytes", codec.as_str_name());
    }
}

/// Found by `fuzz_decompress`: a zstd frame whose header states another content size than the
/// metadata allocated the metadata's size first; now the two are compared before.
#[test]
fn fuzz_regression_a_zstd_frame_stating_another_size_is_refused_before_allocating() {
    let frame = compress(pb::CompressionType::Zstd, &[9u8; 1000]);
    let metadata = pb::MessageMetadata {
        compression: Some(pb::CompressionType::Zstd as i32),
        uncompressed_size: Some((MAX_UNCOMPRESSED_SIZE.min(frame.len() * WORST_RATIO)) as u32),
        ..Default::default()
    };
    let (result, largest) = largest_allocation(|| batch::decompress(&metadata, Bytes::from(frame)));
    let reason = result.expect_err("sizes differ");
    assert!(reason.contains("ZSTD frame holds 1000 bytes"), "{reason}");
    assert!(largest < 64 * 1024, "allocated {largest} bytes");
}

/// Real data at each codec's best compression (long runs of one byte) is still accepted: the
/// ratio bounds refuse only lies.
#[test]
fn fuzz_ratio_bounds_accept_the_most_compressible_data() {
    for codec in CODECS {
        for len in [0, 1, 100, 65_536, 4 * 1024 * 1024] {
            let plain = vec![0u8; len];
            let metadata = pb::MessageMetadata {
                compression: Some(codec as i32),
                uncompressed_size: Some(len as u32),
                ..Default::default()
            };
            let restored = batch::decompress(&metadata, Bytes::from(compress(codec, &plain)))
                .unwrap_or_else(|reason| panic!("{} of {len} zeros: {reason}", codec.as_str_name()));
            assert_eq!(restored.len(), len);
        }
    }
}
