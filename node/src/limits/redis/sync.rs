//! Background upkeep of the Redis limiter: the leased-mode sync (surplus back, debt
//! pushed), concurrency-slot heartbeats in both modes, the health and reconnect
//! probes that end an outage, and the usage snapshot `/stats` reads.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use tokio::time::Instant;

use super::leased::lock;
use super::RedisLimiter;
use crate::config::LimitMode;

/// How often a healthy node checks that Redis still answers (one PING).
const HEALTH_PING: Duration = Duration::from_secs(1);

/// How often the `/stats` usage snapshot is re-read from Redis while it is being asked
/// for (the dashboard polls every 2 s).
pub(super) const USAGE_EVERY: Duration = Duration::from_secs(2);

/// The snapshot stops being refreshed this long after the last ask.
const USAGE_IDLE: Duration = Duration::from_secs(30);

impl RedisLimiter {
    /// Leased: returns surplus and pushes debt per scope; both modes: slot heartbeats.
    async fn sync_once(&self) {
        let now = Instant::now();
        let heartbeat = self.settings.slot_ttl / 3;
        let resync = self.resync.swap(false, Ordering::Relaxed);
        for (i, slot) in self.leases.iter().enumerate() {
            let spec = &self.scopes[i].spec;
            let mut ret = [0i64; 4];
            let (mode, val, ws, ds);
            let _guard;
            match self.settings.mode {
                LimitMode::Exact => {
                    if spec.concurrency.is_none() {
                        continue;
                    }
                    let held = self.held[i].load(Ordering::Relaxed);
                    let mut l = lock(&slot.state);
                    let due = l.last_heartbeat.is_none_or(|t| now >= t + heartbeat);
                    if !(resync || (due && held > 0) || (due && l.conc_synced > 0)) {
                        continue;
                    }
                    l.last_heartbeat = Some(now);
                    l.conc_synced = held;
                    (mode, val, ws, ds) = (if resync { 2 } else { 1 }, held, -1, -1);
                }
                LimitMode::Leased => {
                    _guard = match slot.refill.try_lock() {
                        Ok(g) => g,
                        Err(_) => continue, // a refill is running; next round
                    };
                    let mut l = lock(&slot.state);
                    l.expire(now);
                    ret = l.take_surplus();
                    if spec.concurrency.is_some() {
                        l.release_unused_slots();
                    }
                    let due = l.last_heartbeat.is_none_or(|t| now >= t + heartbeat);
                    let conc_changed = l.conc_leased != l.conc_synced;
                    let conc_mode = if spec.concurrency.is_some()
                        && (conc_changed || (due && l.conc_leased > 0) || resync)
                    {
                        2
                    } else {
                        0
                    };
                    if ret.iter().all(|r| *r == 0) && conc_mode == 0 {
                        continue;
                    }
                    if conc_mode != 0 {
                        l.last_heartbeat = Some(now);
                        l.conc_synced = l.conc_leased;
                    }
                    (mode, val, ws, ds) = (conc_mode, l.conc_leased, l.ws, l.ds);
                }
            }
            let inv = self.sync_invocation(i, (ws, ds), ret, (mode, val));
            match self.run(&inv, &self.ops.sync, "sync").await {
                Some(reply) if reply.len() >= 7 => {
                    let mut l = lock(&slot.state);
                    if reply[1] == l.ws && l.ws >= 0 {
                        for k in 0..3 {
                            l.used_global[k] = reply[3 + k].max(0) as u64;
                        }
                    }
                    if reply[2] == l.ds && l.ds >= 0 {
                        l.used_global[3] = reply[6].max(0) as u64;
                    }
                }
                _ => {
                    // Unknown outcome: re-send absolute counts next time.
                    let mut l = lock(&slot.state);
                    l.conc_synced = u64::MAX;
                    return;
                }
            }
        }
    }
}

impl RedisLimiter {
    /// Re-reads every scope's use (one read-only script per scope), if asked lately.
    async fn refresh_usage(&self) {
        let asked = *self
            .usage_asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if asked.is_none_or(|t| t.elapsed() > USAGE_IDLE) {
            return;
        }
        let mut fresh = Vec::with_capacity(self.scopes.len());
        for i in 0..self.scopes.len() {
            let inv = self.usage_invocation(i);
            let used = match self.run(&inv, &self.ops.usage, "usage").await {
                Some(v) if v.len() == 5 => Some(std::array::from_fn(|d| v[d].max(0) as u64)),
                // Redis failed (and the node degraded): no half-fresh snapshot.
                _ => return,
            };
            fresh.push(used);
        }
        self.usage.store(std::sync::Arc::new(fresh));
    }
}

/// Background: lease sync (leased), slot heartbeats (both), reconnect probes.
pub(super) async fn sync_loop(limiter: Weak<RedisLimiter>) {
    let (tick, probe_every) = match limiter.upgrade() {
        Some(l) => {
            let tick = match l.settings.mode {
                LimitMode::Leased => l.settings.sync_interval,
                LimitMode::Exact => (l.settings.slot_ttl / 6).min(Duration::from_millis(500)),
            };
            (
                tick.max(Duration::from_millis(5)),
                Duration::from_millis(250),
            )
        }
        None => return,
    };
    let mut interval = tokio::time::interval(tick.min(probe_every));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sync = Instant::now();
    let mut last_ping = Instant::now();
    let mut last_usage: Option<Instant> = None;
    loop {
        interval.tick().await;
        let Some(l) = limiter.upgrade() else { return };
        if l.is_degraded() {
            l.probe().await;
            continue;
        }
        if last_sync.elapsed() >= tick {
            last_sync = Instant::now();
            l.sync_once().await;
        }
        // An idle node notices an outage too (readiness, metrics) within about a second.
        if last_ping.elapsed() >= HEALTH_PING {
            last_ping = Instant::now();
            l.probe().await;
        }
        if last_usage.is_none_or(|t| t.elapsed() >= USAGE_EVERY) {
            last_usage = Some(Instant::now());
            l.refresh_usage().await;
        }
    }
}
