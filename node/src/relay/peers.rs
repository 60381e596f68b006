//! Choosing the peer: our measured round trip to each peer node (a cheap
//! `GET /readyz/local` over the relay's own pooled connection, as a moving average),
//! the ranking by the peer's published path latency plus that round trip, and the
//! "peer much faster" trigger (`health.relay_when_faster`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::FasterPeer;
use crate::health::EWMA_WEIGHT;
use crate::schema::NodeRecord;

/// Our round trips to peer nodes, keyed by their public address, in milliseconds.
/// Written once per measuring round, read when the peer list is ranked (on a
/// membership change or after a round): never on the request path.
#[derive(Default)]
pub struct PeerRtts {
    by_addr: Mutex<HashMap<String, f64>>,
}

impl PeerRtts {
    /// Folds one round trip into the peer's moving average (same weight as the
    /// direct path's).
    pub fn add(&self, addr: &str, rtt: Duration) {
        let ms = rtt.as_secs_f64() * 1000.0;
        let mut map = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        let v = map.entry(addr.to_string()).or_insert(ms);
        *v += EWMA_WEIGHT * (ms - *v);
    }

    /// The moving average to `addr`, if measured.
    pub fn get(&self, addr: &str) -> Option<f64> {
        let map = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        map.get(addr).copied()
    }

    /// Forgets peers no longer in `addrs` (left the cluster, or not a candidate).
    pub fn retain(&self, addrs: &[&str]) {
        let mut map = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|k, _| addrs.contains(&k.as_str()));
    }

    /// Ranks `peers` best first: the peer's published time to first byte (median,
    /// else moving average, else its probes' round trip) plus our round trip to it
    /// (not measured yet: nothing added). Peers that published no latency yet (a
    /// fresh record) come after those that did, ordered by our round trip alone.
    pub fn rank(&self, peers: &mut [NodeRecord]) {
        let map = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        let cost = |r: &NodeRecord| {
            let rtt = map.get(&r.public_addr).copied().unwrap_or(0.0);
            match published_ttfb(r) {
                Some(ttfb) => (0, ttfb + rtt),
                None => (1, rtt),
            }
        };
        peers.sort_by(|a, b| {
            let (a, b) = (cost(a), cost(b));
            a.0.cmp(&b.0).then(a.1.total_cmp(&b.1))
        });
    }

    /// The cost of relaying through `r` as the "peer much faster" trigger compares
    /// it: the peer's path latency (its probes' round trip, else its TTFB) plus our
    /// round trip to it; `None` until both are known.
    pub fn path_cost(&self, r: &NodeRecord) -> Option<f64> {
        let path = r.path.probe_rtt_ms.or_else(|| published_ttfb(r))?;
        Some(path + self.get(&r.public_addr)?)
    }
}

/// The peer's published time to first byte, in milliseconds.
pub fn published_ttfb(r: &NodeRecord) -> Option<f64> {
    let p = &r.path;
    p.ttfb_p50_ms.or(p.ttfb_ewma_ms).or(p.probe_rtt_ms)
}

/// The "peer much faster" trigger: relays while the best peer's path has been
/// `ratio` times faster than the direct one for `sustain`, and goes back once it has
/// not been for `sustain`.
pub struct Faster {
    pub rule: FasterPeer,
    on: AtomicBool,
    /// Since when the verdict has differed from `on` (a lock taken once a round).
    since: Mutex<Option<Instant>>,
}

impl Faster {
    pub fn new(rule: FasterPeer) -> Self {
        Faster {
            rule,
            on: AtomicBool::new(false),
            since: Mutex::new(None),
        }
    }

    /// Whether requests relay now although the direct path works.
    pub fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// One round's comparison: `direct` is the direct path's latency and `peer` the
    /// best peer's cost (milliseconds). Returns the new state when it flipped.
    pub fn observe(&self, direct: Option<f64>, peer: Option<f64>, now: Instant) -> Option<bool> {
        let faster = match (direct, peer) {
            (Some(d), Some(p)) => p * self.rule.ratio < d,
            _ => false,
        };
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        if faster == self.on() {
            *since = None;
            return None;
        }
        let start = *since.get_or_insert(now);
        if now.duration_since(start) < self.rule.sustain {
            return None;
        }
        *since = None;
        self.on.store(faster, Ordering::Relaxed);
        Some(faster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::PathHealth;

    fn peer(addr: &str, ttfb: f64, probe: f64) -> NodeRecord {
        serde_json::from_value(serde_json::json!({
            "id": addr, "region": addr, "public_addr": addr, "admin_addr": "",
            "version": "0", "started_at": "", "state": "serving",
            "path": PathHealth {
                ttfb_p50_ms: Some(ttfb),
                probe_rtt_ms: Some(probe),
                ..PathHealth::default()
            },
        }))
        .unwrap()
    }

    #[test]
    fn ranks_by_published_ttfb_plus_our_round_trip() {
        let rtts = PeerRtts::default();
        let mut peers = vec![peer("near", 30.0, 5.0), peer("far", 10.0, 5.0)];
        rtts.rank(&mut peers);
        assert_eq!(peers[0].id, "far", "by TTFB alone before any round trip");
        rtts.add("near", Duration::from_millis(5));
        rtts.add("far", Duration::from_millis(80));
        rtts.rank(&mut peers);
        assert_eq!(peers[0].id, "near", "30 + 5 beats 10 + 80");
        let mut fresh = peers[1].clone();
        fresh.id = "fresh".into();
        fresh.public_addr = "fresh".into();
        fresh.path = PathHealth::default();
        rtts.add("fresh", Duration::from_millis(1));
        let mut all = vec![fresh, peers[1].clone(), peers[0].clone()];
        rtts.rank(&mut all);
        let order: Vec<_> = all.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(order, ["near", "far", "fresh"], "published latency first");
        assert_eq!(rtts.path_cost(&peers[0]), Some(10.0));
        rtts.retain(&["near"]);
        assert_eq!(rtts.get("far"), None);
    }

    #[test]
    fn the_faster_trigger_needs_a_sustained_lead_both_ways() {
        let f = Faster::new(FasterPeer {
            ratio: 2.0,
            sustain: Duration::from_secs(10),
        });
        let t = Instant::now();
        assert_eq!(f.observe(Some(150.0), Some(50.0), t), None);
        assert_eq!(
            f.observe(Some(150.0), Some(80.0), t + Duration::from_secs(5)),
            None,
            "not twice as fast: the clock restarts"
        );
        assert_eq!(
            f.observe(Some(150.0), Some(50.0), t + Duration::from_secs(6)),
            None
        );
        assert_eq!(
            f.observe(Some(150.0), Some(50.0), t + Duration::from_secs(16)),
            Some(true)
        );
        assert!(f.on());
        assert_eq!(
            f.observe(None, Some(50.0), t + Duration::from_secs(17)),
            None
        );
        assert_eq!(
            f.observe(Some(20.0), Some(50.0), t + Duration::from_secs(27)),
            Some(false)
        );
        assert!(!f.on());
    }
}
