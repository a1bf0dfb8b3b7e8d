//! Criterion micro-benchmarks of Sluice hot paths; the benchmarks live in `benches/benches/`.
