//! Validating and decoding the records of one RecordBatch v2, as a consumer (or the client
//! library) does for every batch it fetches.
//!
//! Input: an uncompressed batch just under 64 KiB: 60 JSON-like records of 1 KiB, in memory.
//! `validate` is the header parse plus the CRC-32C over the batch; `validate_and_decode` adds
//! iterating every record with `decode_batch` (zero-copy `Bytes` slices, one `Vec` per record
//! for its headers). Throughput is in batch bytes.

// criterion_group! generates a public function without docs.
#![allow(missing_docs)]

use bytes::Bytes;
use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use sluice_benches::sample_records;
use sluice_engine::batch::{Compression, build_batch, decode_batch, validate};
use sluice_engine::limits::BATCH_BYTES_MAX;

fn batch_decode(c: &mut Criterion) {
    let records = sample_records(60 << 10, 1 << 10);
    let batch: Bytes = build_batch(&records, Compression::None).expect("build");
    assert!(batch.len() <= 64 << 10, "batch of {} bytes", batch.len());
    let mut group = c.benchmark_group("batch_decode_64k_of_1k_records");
    group.throughput(Throughput::Bytes(batch.len() as u64));
    group.bench_function("validate", |b| {
        b.iter(|| validate(black_box(&batch), BATCH_BYTES_MAX).expect("valid"))
    });
    group.bench_function("validate_and_decode", |b| {
        b.iter(|| {
            let decoder = decode_batch(black_box(&batch), BATCH_BYTES_MAX).expect("valid");
            let mut value_bytes = 0;
            for record in decoder {
                let record = record.expect("record");
                value_bytes += record.value.map_or(0, |v| v.len());
            }
            value_bytes
        })
    });
    group.finish();
}

criterion_group!(benches, batch_decode);
criterion_main!(benches);
