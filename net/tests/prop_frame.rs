//! Property tests of the native frame decoder against its encoder (the reference model).
//!
//! The decoder faces bytes from the network, so it must never panic and never return a frame
//! other than one the encoder produced.

use bytes::BytesMut;
use proptest::prelude::*;
use sluice_net::native::frame::{
    Decoded, FLAG_VERSION_REJECTED, MAGIC, PREFIX_BYTES, PROTOCOL_VERSION, Prefix, decode, encode,
    frame_crc,
};
use sluice_net::native::messages::{OffsetQuery, Request};

fn request_strategy() -> impl Strategy<Value = Request> {
    prop_oneof![
        proptest::option::of(proptest::collection::vec(".{0,16}", 0..4))
            .prop_map(|topics| Request::Metadata { topics }),
        (".{0,32}", any::<i32>(), any::<i8>()).prop_map(|(topic, partition, acks)| {
            Request::Produce {
                topic,
                partition,
                acks,
                sequence: None,
            }
        }),
        (
            ".{0,32}",
            any::<i32>(),
            any::<i64>(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(|(topic, partition, offset, max_bytes, max_wait_ms)| {
                Request::Fetch {
                    topic,
                    partition,
                    offset,
                    max_bytes,
                    max_wait_ms,
                }
            }),
        (".{0,32}", any::<i32>(), any::<i64>()).prop_map(|(topic, partition, ms)| {
            Request::ListOffset {
                topic,
                partition,
                query: OffsetQuery::Timestamp { ms },
            }
        }),
    ]
}

/// Decodes until the buffer is empty or stuck; must never panic.
fn decode_everything(bytes: &[u8]) {
    let mut buffer = BytesMut::from(bytes);
    // Bounded: every successful decode consumes at least PREFIX_BYTES.
    for _ in 0..=bytes.len() / PREFIX_BYTES {
        match decode(&mut buffer) {
            Ok(Decoded::<Request>::Frame(_)) => {}
            Ok(Decoded::NeedMore { frame_bytes_min }) => {
                assert!(frame_bytes_min > buffer.len(), "asks for more than it has");
                return;
            }
            Err(_) => return,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    // Goal: random bytes never panic the decoder. Method: arbitrary byte strings, and the
    // same behind a valid magic so the later checks are reached too.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_everything(&bytes);
        let mut with_magic = MAGIC.to_vec();
        with_magic.extend_from_slice(&bytes);
        decode_everything(&with_magic);
    }

    // Goal: random header bytes with a correct prefix and CRC reach rkyv validation and are
    // refused or decoded, never a panic or undefined behaviour. Method: build a prefix
    // around arbitrary header and payload bytes, with either flag value.
    #[test]
    fn random_headers_are_validated(
        header in proptest::collection::vec(any::<u8>(), 0..128),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        rejection in any::<bool>(),
    ) {
        let mut prefix = Prefix {
            version: PROTOCOL_VERSION,
            flags: if rejection { FLAG_VERSION_REJECTED } else { 0 },
            header_bytes: header.len() as u32,
            payload_bytes: payload.len() as u32,
            crc32c: 0,
        };
        prefix.crc32c = frame_crc(&prefix, &header, &[&payload]);
        let mut frame = prefix.to_bytes().to_vec();
        frame.extend_from_slice(&header);
        frame.extend_from_slice(&payload);
        let mut buffer = BytesMut::from(&frame[..]);
        if let Ok(Decoded::Frame(decoded)) = decode::<Request>(&mut buffer) {
            // Whatever rkyv accepted re-encodes into a frame that decodes the same way.
            let mut again = encode(&decoded.header, &decoded.payload).expect("within limits");
            prop_assert_eq!(decode(&mut again), Ok(Decoded::Frame(decoded)));
        }
    }

    // Goal: valid frames round-trip however the bytes arrive. Method: encode an arbitrary
    // header and payload, feed the bytes in two parts split at an arbitrary point.
    #[test]
    fn frames_round_trip_in_pieces(
        header in request_strategy(),
        payload in proptest::collection::vec(any::<u8>(), 0..2048),
        split in any::<prop::sample::Index>(),
    ) {
        let frame = encode(&header, &payload).expect("within limits");
        let cut = split.index(frame.len());
        let mut buffer = BytesMut::from(&frame[..cut]);
        let first = decode::<Request>(&mut buffer).expect("a prefix of a valid frame is fine");
        let needs_more = matches!(first, Decoded::NeedMore { .. });
        prop_assert!(needs_more, "{:?}", first);
        buffer.extend_from_slice(&frame[cut..]);
        match decode::<Request>(&mut buffer).expect("valid frame") {
            Decoded::Frame(decoded) => {
                prop_assert_eq!(decoded.header, header);
                prop_assert_eq!(&decoded.payload[..], &payload[..]);
            }
            other => prop_assert!(false, "expected a frame, got {:?}", other),
        }
        prop_assert!(buffer.is_empty());
    }

    // Goal: no single corrupted byte of a prefix or header yields a frame, and a corrupted
    // payload byte (record batches, checked by their own CRCs) reaches the receiver as sent.
    // Method: replace one byte of a valid frame with a different value; before the payload
    // the decoder must refuse or ask for more bytes, in it return that payload.
    #[test]
    fn corrupted_byte_never_decodes(
        header in request_strategy(),
        payload in proptest::collection::vec(any::<u8>(), 0..256),
        position in any::<prop::sample::Index>(),
        delta in 1u8..=255,
    ) {
        let mut frame = encode(&header, &payload).expect("within limits");
        let payload_start = frame.len() - payload.len();
        let position = position.index(frame.len());
        frame[position] = frame[position].wrapping_add(delta);
        let sent = frame.clone();
        let result = decode::<Request>(&mut frame);
        if position < payload_start {
            prop_assert!(!matches!(result, Ok(Decoded::Frame(_))), "{:?}", result);
        } else {
            let Ok(Decoded::Frame(decoded)) = result else {
                return Err(TestCaseError::fail(format!("payload byte {position}: {result:?}")));
            };
            prop_assert_eq!(decoded.header, header);
            prop_assert_eq!(&decoded.payload[..], &sent[payload_start..]);
        }
    }
}
