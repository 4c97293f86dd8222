//! The library half of `efa-perf`: its control protocol ([`control`]), so it can be tested and
//! fuzzed apart from the binary (see `fuzz/fuzz_targets/perf_control.rs`). The benchmarks
//! themselves are the `efa-perf` binary.

pub mod control;
