//! Limiter benchmark (placeholder until written).
fn main() {}
