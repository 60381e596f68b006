//! The `strait-coordinator` binary.
fn main() {}
