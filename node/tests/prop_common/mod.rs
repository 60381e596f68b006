//! What the property tests share: a proptest configuration bounded for the suite,
//! raised with `PROPTEST_CASES`, and a strategy over fixed spellings.
#![allow(dead_code)]

use proptest::prelude::*;

/// `default` cases, or `PROPTEST_CASES`; no regression files written into the tree
/// (what a run finds is kept as a test by hand).
pub fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// One of `items`, as bytes.
pub fn pick(items: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(items).prop_map(|s| s.as_bytes().to_vec())
}
