//! Compressing and decompressing the records of one batch with each Kafka codec.
//!
//! Input: the records region of a batch just under 64 KiB (60 JSON-like records of 1 KiB), in
//! memory (no storage). `compress/<codec>` appends the compressed form to a reused buffer;
//! `decompress/<codec>` decodes it back with the engine's bounded decompression. Throughput
//! is in uncompressed bytes; each run also prints the compression ratio once.

// criterion_group! generates a public function without docs.
#![allow(missing_docs)]

use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use sluice_benches::sample_records;
use sluice_engine::batch::compression::{compress, decompress};
use sluice_engine::batch::{Compression, HEADER_BYTES, build_batch};
use sluice_engine::limits::RECORDS_DECOMPRESSED_BYTES_MAX;

const CODECS: [(Compression, &str); 4] = [
    (Compression::Gzip, "gzip"),
    (Compression::Snappy, "snappy"),
    (Compression::Lz4, "lz4"),
    (Compression::Zstd, "zstd"),
];

fn compression(c: &mut Criterion) {
    let batch = build_batch(&sample_records(60 << 10, 1 << 10), Compression::None).expect("build");
    let records = &batch[HEADER_BYTES..];
    let mut group = c.benchmark_group("compression_64k_of_1k_records");
    group.throughput(Throughput::Bytes(records.len() as u64));
    for (codec, name) in CODECS {
        let mut compressed = Vec::new();
        compress(codec, records, &mut compressed).expect("compress");
        println!(
            "{name}: {} -> {} bytes, ratio {:.2}",
            records.len(),
            compressed.len(),
            records.len() as f64 / compressed.len() as f64
        );
        let mut out = Vec::with_capacity(records.len() * 2);
        group.bench_with_input(
            BenchmarkId::new("compress", name),
            &records,
            |b, records| {
                b.iter(|| {
                    out.clear();
                    compress(codec, black_box(records), &mut out).expect("compress");
                    out.len()
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("decompress", name),
            &compressed,
            |b, input| {
                b.iter(|| {
                    out.clear();
                    decompress(
                        codec,
                        black_box(input),
                        RECORDS_DECOMPRESSED_BYTES_MAX,
                        &mut out,
                    )
                    .expect("decompress");
                    out.len()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, compression);
criterion_main!(benches);
