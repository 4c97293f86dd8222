//! Transport benchmarks (being written).
fn main() {}
