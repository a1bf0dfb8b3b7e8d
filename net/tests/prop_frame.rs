//! Property tests of the native frame decoder against its encoder (the reference model).
//!
//! The decoder faces bytes from the network, so it must never panic and never return a frame
//! other than one the encoder produced.

use bytes::BytesMut;
use proptest::prelude::*;
use sluice_net::native::frame::{
    Decoded, ErrorCode, FLAG_VERSION_REJECTED, Header, HeaderBody, MAGIC, PREFIX_BYTES,
    PROTOCOL_VERSION, Prefix, decode, encode,
};

fn header_strategy() -> impl Strategy<Value = Header> {
    let body = prop_oneof![
        Just(HeaderBody::Echo),
        Just(HeaderBody::EchoReply),
        (any::<u16>(), ".{0,64}").prop_map(|(code, message)| HeaderBody::Error { code, message }),
    ];
    (any::<u64>(), body).prop_map(|(request_id, body)| Header { request_id, body })
}

/// Decodes until the buffer is empty or stuck; must never panic.
fn decode_everything(bytes: &[u8]) {
    let mut buffer = BytesMut::from(bytes);
    // Bounded: every successful decode consumes at least PREFIX_BYTES.
    for _ in 0..=bytes.len() / PREFIX_BYTES {
        match decode(&mut buffer) {
            Ok(Decoded::Frame(_)) => {}
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
        let prefix = Prefix {
            version: PROTOCOL_VERSION,
            flags: if rejection { FLAG_VERSION_REJECTED } else { 0 },
            header_bytes: header.len() as u32,
            payload_bytes: payload.len() as u32,
            crc32c: crc32c::crc32c_append(crc32c::crc32c(&header), &payload),
        };
        let mut frame = prefix.to_bytes().to_vec();
        frame.extend_from_slice(&header);
        frame.extend_from_slice(&payload);
        let mut buffer = BytesMut::from(&frame[..]);
        if let Ok(Decoded::Frame(decoded)) = decode(&mut buffer) {
            // Whatever rkyv accepted re-encodes into a frame that decodes the same way.
            let mut again = encode(&decoded.header, &decoded.payload).expect("within limits");
            prop_assert_eq!(decode(&mut again), Ok(Decoded::Frame(decoded)));
        }
    }

    // Goal: valid frames round-trip however the bytes arrive. Method: encode an arbitrary
    // header and payload, feed the bytes in two parts split at an arbitrary point.
    #[test]
    fn frames_round_trip_in_pieces(
        header in header_strategy(),
        payload in proptest::collection::vec(any::<u8>(), 0..2048),
        split in any::<prop::sample::Index>(),
    ) {
        let frame = encode(&header, &payload).expect("within limits");
        let cut = split.index(frame.len());
        let mut buffer = BytesMut::from(&frame[..cut]);
        let first = decode(&mut buffer).expect("a prefix of a valid frame is not an error");
        let needs_more = matches!(first, Decoded::NeedMore { .. });
        prop_assert!(needs_more, "{:?}", first);
        buffer.extend_from_slice(&frame[cut..]);
        match decode(&mut buffer).expect("valid frame") {
            Decoded::Frame(decoded) => {
                prop_assert_eq!(decoded.header, header);
                prop_assert_eq!(&decoded.payload[..], &payload[..]);
            }
            other => prop_assert!(false, "expected a frame, got {:?}", other),
        }
        prop_assert!(buffer.is_empty());
    }

    // Goal: no single corrupted byte yields a frame. Method: replace one byte of a valid
    // frame with a different value; the decoder must refuse or ask for more bytes.
    #[test]
    fn corrupted_byte_never_decodes(
        header in header_strategy(),
        payload in proptest::collection::vec(any::<u8>(), 0..256),
        position in any::<prop::sample::Index>(),
        delta in 1u8..=255,
    ) {
        let mut frame = encode(&header, &payload).expect("within limits");
        let position = position.index(frame.len());
        frame[position] = frame[position].wrapping_add(delta);
        let result = decode(&mut frame);
        prop_assert!(!matches!(result, Ok(Decoded::Frame(_))), "{:?}", result);
    }
}

// Goal: error codes in headers survive unknown values (a newer server's code).
// Method: round-trip an error header with a code this build does not know.
#[test]
fn unknown_error_codes_stay_readable() {
    let header = Header {
        request_id: 1,
        body: HeaderBody::Error {
            code: 999,
            message: "x".into(),
        },
    };
    let mut frame = encode(&header, b"").expect("encode");
    let Ok(Decoded::Frame(decoded)) = decode(&mut frame) else {
        panic!("valid frame")
    };
    assert_eq!(decoded.header, header);
    assert_eq!(ErrorCode::from_u16(999), None);
}
