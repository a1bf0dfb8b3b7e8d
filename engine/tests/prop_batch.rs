//! Property tests of the RecordBatch v2 codec: builder, validation and record decoding.
//!
//! The reference model is the list of records given to the builder: decoding a built batch must
//! give it back exactly, for every codec. Corruption properties check that the CRC covers what
//! it must, and that arbitrary bytes (raw, or behind a valid header and CRC) never panic the
//! validator, the batch iterator or the record decoder. A cross-check against the
//! `kafka-protocol` crate's independent codec shows that other Kafka implementations read what
//! we write and that we read what they write.

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records as kp;
use proptest::prelude::*;
use sluice_engine::batch::{
    BatchBuilder, BatchError, BatchHeader, Compression, LOG_OVERHEAD_BYTES, Record, RecordDecoder,
    SimpleRecord, build_batch, compute_crc, declared_total_bytes, decode_batch, iter_batches,
    next_offset_after_whole_batches, set_base_offset, validate, validate_produced,
};
use sluice_engine::limits::BATCH_BYTES_MAX;
use sluice_engine::{Offset, TimestampMs};

const CODECS: [Compression; 5] = [
    Compression::None,
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];

fn codec() -> impl Strategy<Value = Compression> {
    prop::sample::select(CODECS.to_vec())
}

fn bytes_up_to(len: usize) -> impl Strategy<Value = Vec<u8>> {
    // Mix incompressible random bytes with runs, so compressors see both kinds of input.
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..=len),
        (any::<u8>(), 0..=len).prop_map(|(byte, n)| vec![byte; n]),
    ]
}

fn record_with(timestamp: impl Strategy<Value = i64>) -> impl Strategy<Value = SimpleRecord> {
    (
        prop::option::of(bytes_up_to(48)),
        prop::option::of(bytes_up_to(600)),
        prop::collection::vec(("[a-z]{0,6}", prop::option::of(bytes_up_to(16))), 0..4),
        timestamp,
    )
        .prop_map(|(key, value, headers, timestamp)| SimpleRecord {
            key,
            value,
            headers,
            timestamp: TimestampMs(timestamp),
        })
}

/// Records with any timestamps at all, including ones whose deltas wrap.
fn records_any_time() -> impl Strategy<Value = Vec<SimpleRecord>> {
    prop::collection::vec(record_with(any::<i64>()), 1..40)
}

/// Records with realistic timestamps and unique header keys, which `kafka-protocol` needs (it
/// keeps headers in a map and adds timestamps without wrapping).
fn records_for_cross_check() -> impl Strategy<Value = Vec<SimpleRecord>> {
    let timestamp = prop_oneof![Just(-1_i64), 0_i64..4_000_000_000_000];
    prop::collection::vec(record_with(timestamp), 1..40).prop_map(|mut records| {
        for record in &mut records {
            let mut seen = std::collections::HashSet::new();
            record.headers.retain(|(key, _)| seen.insert(key.clone()));
        }
        records
    })
}

/// Checks decoded records against the records the batch was built from.
fn assert_matches(decoded: &[Record], expected: &[SimpleRecord], base_offset: i64) {
    assert_eq!(decoded.len(), expected.len(), "record count");
    for (i, (got, want)) in decoded.iter().zip(expected).enumerate() {
        assert_eq!(
            got.offset,
            Offset(base_offset + i as i64),
            "offset of record {i}"
        );
        assert_eq!(got.timestamp, want.timestamp, "timestamp of record {i}");
        assert_eq!(got.key.as_deref(), want.key.as_deref(), "key of record {i}");
        assert_eq!(
            got.value.as_deref(),
            want.value.as_deref(),
            "value of record {i}"
        );
        let headers: Vec<(&[u8], Option<&[u8]>)> = got
            .headers
            .iter()
            .map(|h| (&h.key[..], h.value.as_deref()))
            .collect();
        let want_headers: Vec<(&[u8], Option<&[u8]>)> = want
            .headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_deref()))
            .collect();
        assert_eq!(headers, want_headers, "headers of record {i}");
    }
}

fn to_kafka_protocol(records: &[SimpleRecord]) -> Vec<kp::Record> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut headers = IndexMap::new();
            for (key, value) in &r.headers {
                headers.insert(
                    StrBytes::from_string(key.clone()),
                    value.clone().map(Bytes::from),
                );
            }
            kp::Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: kp::TimestampType::Creation,
                offset: i as i64,
                // kafka-protocol splits batches where offset - sequence changes; with
                // sequence = offset - 1 the batch is one and its base sequence is -1.
                sequence: i as i32 - 1,
                timestamp: r.timestamp.0,
                key: r.key.clone().map(Bytes::from),
                value: r.value.clone().map(Bytes::from),
                headers,
            }
        })
        .collect()
}

fn kafka_protocol_codec(codec: Compression) -> kp::Compression {
    match codec {
        Compression::None => kp::Compression::None,
        Compression::Gzip => kp::Compression::Gzip,
        Compression::Snappy => kp::Compression::Snappy,
        Compression::Lz4 => kp::Compression::Lz4,
        Compression::Zstd => kp::Compression::Zstd,
    }
}

fn kafka_protocol_encode(records: &[SimpleRecord], codec: Compression) -> Bytes {
    let mut buf = BytesMut::new();
    let options = kp::RecordEncodeOptions {
        version: 2,
        compression: kafka_protocol_codec(codec),
    };
    kp::RecordBatchEncoder::encode(&mut buf, &to_kafka_protocol(records), &options)
        .expect("kafka-protocol encodes");
    buf.freeze()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    // Goal: build -> validate -> decode gives back the records, for every codec.
    // Method: random keys, values, headers and timestamps (any i64, so deltas wrap); compare
    // the decoded records field by field and the header fields with the model.
    #[test]
    fn round_trip(records in records_any_time(), codec in codec()) {
        let batch = build_batch(&records, codec).expect("build");
        let header = validate_produced(&batch, BATCH_BYTES_MAX).expect("valid");
        prop_assert_eq!(header.attributes.compression(), Ok(codec));
        prop_assert_eq!(header.record_count as usize, records.len());
        prop_assert_eq!(header.base_timestamp, records[0].timestamp);
        let max = records.iter().map(|r| r.timestamp).max().expect("non-empty");
        prop_assert_eq!(header.max_timestamp, max);
        let decoded = decode_batch(&batch, BATCH_BYTES_MAX)
            .expect("decoder")
            .collect_records()
            .expect("records decode");
        assert_matches(&decoded, &records, 0);
    }

    // Goal: the CRC covers every byte from the attributes to the end, so flipping any one of
    // them makes validate fail; the base offset and leader epoch are deliberately not covered.
    // Method: build a batch, xor one byte at a random position with a non-zero mask.
    #[test]
    fn crc_covers_attributes_to_end(
        records in prop::collection::vec(record_with(0_i64..1_000_000), 1..8),
        codec in codec(),
        position in any::<prop::sample::Index>(),
        mask in 1_u8..=255,
    ) {
        let batch = build_batch(&records, codec).expect("build");
        let mut corrupted = batch.to_vec();
        let at = position.index(corrupted.len());
        corrupted[at] ^= mask;
        let result = validate(&corrupted, BATCH_BYTES_MAX);
        if at < 8 || (12..16).contains(&at) {
            prop_assert!(result.is_ok(), "byte {} is outside the CRC and must not matter", at);
        } else {
            prop_assert!(result.is_err(), "flipping byte {} went unnoticed", at);
        }
    }

    // Goal: arbitrary bytes never panic validate, iter_batches or the record decoder.
    // Method: feed random byte strings, sometimes with a plausible length and magic.
    #[test]
    fn random_bytes_never_panic(
        mut bytes in prop::collection::vec(any::<u8>(), 0..512),
        plausible in any::<bool>(),
    ) {
        if plausible && bytes.len() >= 17 {
            let length = (bytes.len() - 12) as i32;
            bytes[8..12].copy_from_slice(&length.to_be_bytes());
            bytes[16] = 2;
        }
        let _ = validate(&bytes, BATCH_BYTES_MAX);
        for item in iter_batches(&bytes, BATCH_BYTES_MAX) {
            let _ = item;
        }
        if let Ok(decoder) = decode_batch(&Bytes::from(bytes), BATCH_BYTES_MAX) {
            for record in decoder {
                let _ = record;
            }
        }
    }

    // Goal: the size a batch declares in its first 12 bytes (what read-ahead frames batches
    // by) agrees with the full header parse: the same total where the parse succeeds, nothing
    // where the parse rejects the length.
    // Method: random headers with a length near, inside and outside the accepted range.
    #[test]
    fn declared_size_agrees_with_header_parse(
        mut bytes in prop::collection::vec(any::<u8>(), 61..128),
        length in prop_oneof![-8_i32..64, 0_i32..i32::MAX, 40_i32..2_000],
        limit in 61_usize..4_096,
    ) {
        bytes[8..12].copy_from_slice(&length.to_be_bytes());
        bytes[16] = 2;
        let prefix: [u8; LOG_OVERHEAD_BYTES] = bytes[..LOG_OVERHEAD_BYTES]
            .try_into()
            .expect("12 bytes");
        let declared = declared_total_bytes(&prefix, limit);
        match BatchHeader::parse(&bytes, limit) {
            Ok(header) => prop_assert_eq!(declared, Some(header.total_bytes())),
            Err(BatchError::InvalidLength { .. }) => prop_assert_eq!(declared, None),
            // Rejected for something after the length: the length itself was accepted.
            Err(_) => prop_assert_eq!(declared, Some(LOG_OVERHEAD_BYTES + length as usize)),
        }
    }

    // Goal: the header scan a consumer uses to send its next fetch early finds where the whole
    // batches of an answer end, exactly as a full decode would. Method: batches with gaps
    // between their offsets (as compaction or transaction markers leave), packed back to back,
    // cut at a random byte. Pass: the next offset of the last batch wholly before the cut,
    // nothing if the cut falls in the first batch.
    #[test]
    fn next_offset_scan_ends_at_the_last_whole_batch(
        batches in prop::collection::vec(
            (prop::collection::vec(record_with(0_i64..1000), 1..4), codec(), 0_i64..5),
            1..5,
        ),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut answer = Vec::new();
        let mut ends = Vec::new();
        let mut base = 100;
        for (records, codec, gap) in &batches {
            let mut batch = build_batch(records, *codec).expect("builds").to_vec();
            set_base_offset(&mut batch, Offset(base));
            base += records.len() as i64 + gap;
            answer.extend_from_slice(&batch);
            ends.push((answer.len(), base - gap));
        }
        let cut = cut.index(answer.len() + 1);
        let whole = ends.iter().rev().find(|&&(end, _)| end <= cut);
        let expected = whole.map(|&(_, next)| Offset(next));
        prop_assert_eq!(next_offset_after_whole_batches(&answer[..cut], BATCH_BYTES_MAX), expected);
    }

    // Goal: arbitrary records behind a valid header and CRC never panic the record decoder,
    // for every codec: the decoder is the last line of defence once a CRC passes.
    // Method: a built batch's records mutated, codec bits, record count and last offset delta
    // replaced at random, CRC recomputed; decode everything.
    #[test]
    fn random_records_behind_valid_crc_never_panic(
        records in prop::collection::vec(record_with(0_i64..1000), 1..6),
        codec in codec(),
        mutations in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        record_count in prop_oneof![0_i32..10, any::<i32>()],
        last_offset_delta in prop_oneof![0_i32..10, any::<i32>()],
        codec_bits in 0_u8..8,
    ) {
        let mut batch = build_batch(&records, codec).expect("build").to_vec();
        for (index, byte) in mutations {
            let at = 61 + index.index(batch.len() - 61);
            batch[at] = byte;
        }
        batch[22] = (batch[22] & !0x07) | codec_bits;
        batch[23..27].copy_from_slice(&last_offset_delta.to_be_bytes());
        batch[57..61].copy_from_slice(&record_count.to_be_bytes());
        let crc = compute_crc(&batch);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        if let Ok(decoder) = decode_batch(&Bytes::from(batch), BATCH_BYTES_MAX) {
            let count = decoder.header().record_count;
            let mut yielded = 0;
            for record in decoder {
                match record {
                    Ok(_) => yielded += 1,
                    Err(_) => break,
                }
            }
            prop_assert!(yielded <= count, "yielded {} of {} records", yielded, count);
        }
    }

    // Goal: batches written by another implementation decode with ours, for every codec.
    // Method: encode with kafka-protocol's RecordBatchEncoder, validate and decode with ours.
    #[test]
    fn decode_what_kafka_protocol_writes(records in records_for_cross_check(), codec in codec()) {
        let batch = kafka_protocol_encode(&records, codec);
        let header = validate_produced(&batch, BATCH_BYTES_MAX).expect("valid");
        prop_assert_eq!(header.total_bytes(), batch.len(), "one batch");
        prop_assert_eq!(header.attributes.compression(), Ok(codec));
        let decoded = decode_batch(&batch, BATCH_BYTES_MAX)
            .expect("decoder")
            .collect_records()
            .expect("records decode");
        assert_matches(&decoded, &records, 0);
    }

    // Goal: batches we write decode with another implementation, for every codec.
    // Method: build with BatchBuilder (base offset 42, no producer identity), decode with
    // kafka-protocol's RecordBatchDecoder and compare.
    #[test]
    fn kafka_protocol_decodes_what_we_write(
        records in records_for_cross_check(),
        codec in codec(),
    ) {
        let mut builder = BatchBuilder::new(BATCH_BYTES_MAX);
        builder.set_base_offset(Offset(42));
        for r in &records {
            let headers: Vec<(&str, Option<&[u8]>)> =
                r.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
            builder
                .push(r.key.as_deref(), r.value.as_deref(), &headers, r.timestamp)
                .expect("push");
        }
        let mut batch = builder.build(codec).expect("build");
        let set = kp::RecordBatchDecoder::decode(&mut batch).expect("kafka-protocol decodes");
        prop_assert_eq!(set.compression, kafka_protocol_codec(codec));
        prop_assert_eq!(set.records.len(), records.len());
        for (i, (got, want)) in set.records.iter().zip(&records).enumerate() {
            prop_assert_eq!(got.offset, 42 + i as i64);
            prop_assert_eq!(got.timestamp, want.timestamp.0);
            prop_assert_eq!(got.key.as_deref(), want.key.as_deref());
            prop_assert_eq!(got.value.as_deref(), want.value.as_deref());
            prop_assert_eq!(got.producer_id, -1);
            let headers: Vec<(&str, Option<&[u8]>)> =
                got.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
            let want_headers: Vec<(&str, Option<&[u8]>)> =
                want.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
            prop_assert_eq!(headers, want_headers);
        }
    }
}

// Goal: a large batch crossing many compression blocks (xerial 32 KiB, lz4 64 KiB) survives
// both cross-checks; the proptest batches are mostly smaller than one block.
// Method: 200 records of 1 KiB, each codec, both directions.
#[test]
fn multi_block_batches_cross_check() {
    let records: Vec<SimpleRecord> = (0..200_u32)
        .map(|i| SimpleRecord {
            key: Some(i.to_be_bytes().to_vec()),
            value: Some((0..1024).map(|j| ((i * 31 + j) % 97) as u8).collect()),
            headers: vec![("n".into(), Some(i.to_string().into_bytes()))],
            timestamp: TimestampMs(1_700_000_000_000 + i64::from(i)),
        })
        .collect();
    for codec in CODECS {
        let ours = build_batch(&records, codec).expect("build");
        let set = kp::RecordBatchDecoder::decode(&mut ours.clone()).expect("kafka-protocol");
        assert_eq!(set.records.len(), records.len(), "{codec:?}");
        for (got, want) in set.records.iter().zip(&records) {
            assert_eq!(got.value.as_deref(), want.value.as_deref(), "{codec:?}");
        }
        let theirs = kafka_protocol_encode(&records, codec);
        let decoded = decode_batch(&theirs, BATCH_BYTES_MAX)
            .expect("valid")
            .collect_records()
            .expect("decode");
        assert_matches(&decoded, &records, 0);
    }
}

// Goal: every input the fuzzer kept (engine/fuzz/corpus/batch_decode, crash inputs included
// once any is found) stays harmless on stable Rust, without cargo-fuzz.
// Method: replay each file through the same steps as the fuzz target: optional CRC fix-up
// (first byte odd), validate, iter_batches, decode every record under a 1 MiB limit.
#[test]
fn fuzz_corpus_replays_without_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/batch_decode");
    let entries = std::fs::read_dir(&dir).expect("fuzz corpus directory");
    let mut replayed = 0;
    for entry in entries {
        let input = std::fs::read(entry.expect("corpus entry").path()).expect("corpus file");
        let Some((&mode, data)) = input.split_first() else {
            continue;
        };
        let mut data = data.to_vec();
        if mode & 1 == 1 && data.len() >= 61 {
            let crc = compute_crc(&data);
            data[17..21].copy_from_slice(&crc.to_be_bytes());
        }
        let _ = validate(&data, 1 << 20);
        let data = Bytes::from(data);
        let mut at = 0;
        for item in iter_batches(&data, 1 << 20) {
            let Ok((header, batch)) = item else { break };
            let batch = data.slice(at..at + batch.len());
            at += batch.len();
            if let Ok(decoder) = RecordDecoder::new(header, &batch, 1 << 20) {
                assert!(decoder.take_while(Result::is_ok).count() <= header.record_count as usize);
            }
        }
        replayed += 1;
    }
    assert!(
        replayed > 0,
        "the fuzz corpus at {} is empty",
        dir.display()
    );
}

// Goal: a header is accepted only if the offset after its batch exists, so `next_offset`
// never overflows on bytes from a peer (the base offset lies outside the batch CRC).
// Method: one record batch (last offset delta 0) rebased to i64::MAX - 1, then i64::MAX.
#[test]
fn the_offset_after_a_batch_must_exist() {
    let record = SimpleRecord {
        key: None,
        value: Some(b"v".to_vec()),
        headers: Vec::new(),
        timestamp: TimestampMs(0),
    };
    let mut batch = build_batch(&[record], Compression::None)
        .expect("small batch")
        .to_vec();
    set_base_offset(&mut batch, Offset(i64::MAX - 1));
    let header = BatchHeader::parse(&batch, BATCH_BYTES_MAX).expect("last offset i64::MAX - 1");
    assert_eq!(header.next_offset(), Offset(i64::MAX));
    set_base_offset(&mut batch, Offset(i64::MAX));
    assert_eq!(
        BatchHeader::parse(&batch, BATCH_BYTES_MAX),
        Err(BatchError::OffsetOverflow {
            base_offset: i64::MAX,
            last_offset_delta: 0
        })
    );
    assert!(validate(&batch, BATCH_BYTES_MAX).is_err());
}

proptest! {
    // Goal: a produced batch whose header counts fewer or more records than its uncompressed
    // records hold is refused (it would get fewer offsets than its records use, or claim
    // offsets no record has), as Kafka refuses an incorrect declared batch size; compressed
    // records are not opened. Method: build a batch of n records, rewrite its record count
    // and last offset delta to k != n with a fresh CRC.
    #[test]
    fn declared_record_count_must_match_the_records(
        records in prop::collection::vec(record_with(0_i64..1_000_000), 1..8),
        declared in 1_i32..12,
        codec in codec(),
    ) {
        prop_assume!(declared as usize != records.len());
        let mut batch = build_batch(&records, codec).expect("build").to_vec();
        batch[23..27].copy_from_slice(&(declared - 1).to_be_bytes());
        batch[57..61].copy_from_slice(&declared.to_be_bytes());
        let crc = compute_crc(&batch);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        let header = validate(&batch, BATCH_BYTES_MAX).expect("the header alone is consistent");
        prop_assert_eq!(header.record_count, declared);
        let produced = validate_produced(&batch, BATCH_BYTES_MAX);
        if codec == Compression::None {
            prop_assert!(
                matches!(produced, Err(BatchError::CorruptRecords(_))),
                "{:?}",
                produced
            );
        } else {
            prop_assert!(produced.is_ok());
        }
    }
}
