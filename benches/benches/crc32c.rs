//! CRC-32C throughput, the checksum every record batch carries (computed by producers and
//! the builder, verified by the broker on produce, replication and recovery).
//!
//! Measures `crc32c::crc32c` over 1 KiB, 64 KiB and 1 MiB in-memory buffers (no storage).
//! The crate uses SSE4.2 `crc32` instructions when the CPU has them, so expect several GB/s;
//! a figure near 0.5 GB/s means the software fallback is in use.

// criterion_group! generates a public function without docs.
#![allow(missing_docs)]

use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};

fn crc32c(c: &mut Criterion) {
    let mut group = c.benchmark_group("crc32c");
    for size in [1 << 10, 64 << 10, 1 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 251) as u8).collect();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &data, |b, data| {
            b.iter(|| crc32c::crc32c(black_box(data)))
        });
    }
    group.finish();
}

criterion_group!(benches, crc32c);
criterion_main!(benches);
