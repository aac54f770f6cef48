//! Shared pieces of the benchmark binaries (`bin/throughput`, `bin/report`): what the
//! kernel says about sockets and CPU time. The criterion benchmarks live in `benches/`.

pub mod kernel;
