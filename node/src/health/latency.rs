//! Latency of the upstream path: a moving average and a ring of recent samples for
//! percentiles. Writing is a few relaxed atomics (no lock, no allocation); reading
//! (the node record, `/metrics`) copies the ring and sorts it.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Samples kept for the percentiles.
pub const RING: usize = 64;
/// Weight of a new sample in the moving average.
pub const EWMA_WEIGHT: f64 = 0.2;

/// An exponentially weighted moving average of durations, in microseconds.
#[derive(Default)]
pub struct Ewma {
    /// `f64` bits; 0 before the first sample.
    bits: AtomicU64,
}

impl Ewma {
    /// Two racing samples may lose one of them: a moving average does not mind.
    pub fn add(&self, d: Duration) {
        let us = (d.as_secs_f64() * 1e6).max(1.0);
        let old = f64::from_bits(self.bits.load(Ordering::Relaxed));
        let new = if old == 0.0 {
            us
        } else {
            old + EWMA_WEIGHT * (us - old)
        };
        self.bits.store(new.to_bits(), Ordering::Relaxed);
    }

    /// Milliseconds; `None` before the first sample.
    pub fn ms(&self) -> Option<f64> {
        let v = f64::from_bits(self.bits.load(Ordering::Relaxed));
        (v > 0.0).then_some(v / 1000.0)
    }
}

/// Time to first byte: moving average and the last [`RING`] samples.
pub struct Latency {
    pub ewma: Ewma,
    /// Microseconds (at least 1); 0 is an empty slot.
    ring: [AtomicU32; RING],
    next: AtomicUsize,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            ewma: Ewma::default(),
            ring: [const { AtomicU32::new(0) }; RING],
            next: AtomicUsize::new(0),
        }
    }
}

/// Percentiles of the recent samples, milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Latency {
    /// One sample: the hot path's only call.
    pub fn add(&self, d: Duration) {
        let us = d.as_micros().clamp(1, u128::from(u32::MAX)) as u32;
        let i = self.next.fetch_add(1, Ordering::Relaxed) % RING;
        self.ring[i].store(us, Ordering::Relaxed);
        self.ewma.add(d);
    }

    /// Nearest-rank p50 and p99 over the samples in the ring (with a full ring, p99
    /// is the slowest of the last 64); `None` before the first sample.
    pub fn percentiles(&self) -> Option<Percentiles> {
        let mut buf = [0u32; RING];
        let mut n = 0;
        for slot in &self.ring {
            let v = slot.load(Ordering::Relaxed);
            if v != 0 {
                buf[n] = v;
                n += 1;
            }
        }
        if n == 0 {
            return None;
        }
        let s = &mut buf[..n];
        s.sort_unstable();
        let rank = |q: f64| s[((q * n as f64).ceil() as usize).clamp(1, n) - 1] as f64 / 1000.0;
        Some(Percentiles {
            p50_ms: rank(0.50),
            p99_ms: rank(0.99),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ewma_and_percentiles() {
        let l = Latency::default();
        assert_eq!(l.percentiles(), None);
        assert_eq!(l.ewma.ms(), None);
        l.add(Duration::from_millis(100));
        assert_eq!(l.ewma.ms(), Some(100.0));
        l.add(Duration::from_millis(200));
        assert!((l.ewma.ms().unwrap() - 120.0).abs() < 1e-6);
        // 100 more samples: the ring keeps the last 64, 1..=64 ms after these.
        for ms in 1..=100u64 {
            l.add(Duration::from_millis(if ms > 36 { ms - 36 } else { 5000 }));
        }
        let p = l.percentiles().unwrap();
        assert_eq!(p.p50_ms, 32.0);
        assert_eq!(p.p99_ms, 64.0);
    }
}
