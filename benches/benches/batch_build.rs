//! Building a RecordBatch v2 with `BatchBuilder`, the producer hot path of the client library.
//!
//! Input: 60 records of 1 KiB JSON-like values (one batch just under 64 KiB), in memory.
//! Measures pushing every record into a builder sized up front and building the uncompressed
//! batch (header fill and CRC-32C). Throughput is in batch bytes.

// criterion_group! generates a public function without docs.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use sluice_benches::sample_records;
use sluice_engine::batch::{BatchBuilder, Compression};
use sluice_engine::limits::BATCH_BYTES_MAX;

/// Borrowed headers of one record, as `BatchBuilder::push` takes them.
type HeaderRefs<'a> = Vec<(&'a str, Option<&'a [u8]>)>;

fn batch_build(c: &mut Criterion) {
    let records = sample_records(60 << 10, 1 << 10);
    let headers: Vec<HeaderRefs<'_>> = records
        .iter()
        .map(|r| {
            r.headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref()))
                .collect()
        })
        .collect();
    let build = || {
        let mut builder = BatchBuilder::with_capacity(BATCH_BYTES_MAX, 64 << 10);
        for (record, headers) in records.iter().zip(&headers) {
            builder
                .push(
                    record.key.as_deref(),
                    record.value.as_deref(),
                    headers,
                    record.timestamp,
                )
                .expect("fits");
        }
        builder.build(Compression::None).expect("build")
    };
    let size = build().len();
    let mut group = c.benchmark_group("batch_build_64k_of_1k_records");
    group.throughput(Throughput::Bytes(size as u64));
    group.bench_function("push_and_build_uncompressed", |b| {
        b.iter(|| black_box(build()))
    });
    group.finish();
}

criterion_group!(benches, batch_build);
criterion_main!(benches);
