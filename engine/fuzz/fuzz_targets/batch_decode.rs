//! Fuzz target: record batch v2 validation and record decoding of arbitrary bytes.
//!
//! The input is read as a sequence of batches (`iter_batches`), and each one that validates is
//! decoded record by record. Most random inputs fail the CRC, so the first input byte can ask
//! for the CRC to be recomputed over the rest before validation: that lets the fuzzer reach
//! the record decoder and the decompressors with arbitrary record bytes. Invariants checked:
//! no panic, no decoded record count above the header's.
//!
//! Run: `cargo +nightly fuzz run batch_decode` in `engine/fuzz`.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_engine::batch::{RecordDecoder, compute_crc, iter_batches, validate};

/// A small batch limit so that the fuzzer explores the limit paths.
const FUZZ_BATCH_BYTES_MAX: usize = 1 << 20;
/// A decompression limit below the engine's, so that zip bombs (which the fuzzer finds fast)
/// hit the limit path in microseconds instead of inflating 64 MiB on every run.
const FUZZ_DECOMPRESSED_BYTES_MAX: usize = 1 << 20;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    let mut data = data.to_vec();
    if mode & 1 == 1 && data.len() >= 61 {
        let crc = compute_crc(&data);
        data[17..21].copy_from_slice(&crc.to_be_bytes());
    }
    let _ = validate(&data, FUZZ_BATCH_BYTES_MAX);
    let data = Bytes::from(data);
    let mut at = 0;
    for item in iter_batches(&data, FUZZ_BATCH_BYTES_MAX) {
        let Ok((header, batch)) = item else { break };
        let batch = data.slice(at..at + batch.len());
        at += batch.len();
        let Ok(decoder) = RecordDecoder::new(header, &batch, FUZZ_DECOMPRESSED_BYTES_MAX) else {
            continue;
        };
        let mut yielded = 0;
        for record in decoder {
            match record {
                Ok(_) => yielded += 1,
                Err(_) => break,
            }
        }
        assert!(yielded <= header.record_count, "more records than the header says");
    }
});
