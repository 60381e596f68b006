//! The in-flight body budget: one node-wide bound on the request bodies held in memory
//! (`limits.max_inflight_body_bytes`), so a burst of large uploads is refused with 503
//! instead of growing the process without bound.
//!
//! A body's bytes are reserved before it is read (its declared length; a chunked body
//! grows its reservation as it arrives) and released when the last copy of the buffer
//! is dropped: the reservation lives inside the [`Bytes`] it pays for
//! ([`Bytes::from_owner`]), so the copies a retry makes share it and count once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use prometheus::{IntCounter, IntGauge};

use crate::body::ClientBody;
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::Metrics;

use super::too_large;

/// The node-wide budget over buffered request bodies.
pub struct BodyBudget {
    limit: u64,
    used: AtomicU64,
    in_flight: IntGauge,
    refused: IntCounter,
}

impl BodyBudget {
    /// A budget of `limit` bytes, reporting through `metrics`.
    pub fn new(limit: u64, metrics: &Metrics) -> Arc<Self> {
        Arc::new(BodyBudget {
            limit,
            used: AtomicU64::new(0),
            in_flight: metrics.body_bytes_in_flight.clone(),
            refused: metrics.body_budget_refusals.clone(),
        })
    }

    /// Bytes reserved now.
    pub fn in_flight(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `n` more bytes if they fit; `false` (nothing taken) if they do not.
    fn take(&self, n: u64) -> bool {
        let fits = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&after| after <= self.limit)
            })
            .is_ok();
        if fits {
            self.in_flight.add(n as i64);
        }
        fits
    }

    fn give_back(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
        self.in_flight.sub(n as i64);
    }

    /// Reserves `n` bytes, or the 503 that says the budget is full.
    fn reserve(self: &Arc<Self>, n: u64) -> Result<Held> {
        let mut held = Held {
            budget: self.clone(),
            bytes: 0,
        };
        held.grow_to(n)?;
        Ok(held)
    }
}

/// Bytes reserved for one body; given back when dropped.
struct Held {
    budget: Arc<BodyBudget>,
    bytes: u64,
}

impl Held {
    /// Raises the reservation to `n` bytes (no change if it holds that many already).
    fn grow_to(&mut self, n: u64) -> Result<()> {
        if n <= self.bytes {
            return Ok(());
        }
        if !self.budget.take(n - self.bytes) {
            self.budget.refused.inc();
            return Err(budget_full());
        }
        self.bytes = n;
        Ok(())
    }

    /// Lowers the reservation to `n` bytes, giving the rest back.
    fn shrink_to(&mut self, n: u64) {
        if n < self.bytes {
            self.budget.give_back(self.bytes - n);
            self.bytes = n;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.give_back(self.bytes);
        }
    }
}

/// A body's buffer with its reservation: the owner behind the [`Bytes`] handed on.
struct Budgeted {
    data: Bytes,
    _held: Held,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

fn budget_full() -> Error {
    Error::new(
        ErrorKind::Unavailable,
        "the gateway is at its in-flight body budget; retry shortly",
    )
    .with_retry_after(Duration::from_secs(1))
}

/// Reads a whole body into memory under `budget`: at most `max` bytes, `declared` of
/// them reserved before the first byte is read (so a body that does not fit is refused
/// unread). The buffer is sized once when the length is known. The returned bytes
/// carry their reservation.
pub async fn read_body(
    body: ClientBody,
    declared: Option<u64>,
    max: u64,
    budget: &Arc<BodyBudget>,
) -> Result<Bytes> {
    let mut body = match body {
        // Read whole by the server already: only the reservation to take.
        ClientBody::Full(data) => {
            let data = data.unwrap_or_default();
            if data.len() as u64 > max {
                return Err(too_large(max));
            }
            if data.is_empty() {
                return Ok(data);
            }
            let held = budget.reserve(data.len() as u64)?;
            return Ok(Bytes::from_owner(Budgeted { data, _held: held }));
        }
        streamed => streamed,
    };
    let mut held = budget.reserve(declared.unwrap_or(0))?;
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(frame) = body.frame().await {
        // The servers answer a stalled body themselves (408); this is for one they could not.
        let frame = frame.map_err(|e| match e.downcast::<crate::body::BodyStalled>() {
            Ok(stalled) => stalled.0,
            Err(e) => Error::new(ErrorKind::InvalidRequest, "could not read the request body")
                .with_detail(e),
        })?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        let need = (buf.len() + chunk.len()) as u64;
        if need > max {
            return Err(too_large(max));
        }
        if need > buf.capacity() as u64 {
            // A body of unknown length: room doubles, and the reservation is the room
            // taken (that is what the process holds), taken before the room is.
            let room = need.max(2 * buf.capacity() as u64).min(max);
            held.grow_to(room)?;
            buf.reserve(room as usize - buf.len());
        }
        buf.extend_from_slice(&chunk);
    }
    if buf.is_empty() {
        return Ok(Bytes::new());
    }
    held.shrink_to(buf.capacity() as u64);
    Ok(Bytes::from_owner(Budgeted {
        data: buf.freeze(),
        _held: held,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(chunks: &[&'static [u8]], left: Option<u64>) -> ClientBody {
        let (tx, rx) = tokio::sync::mpsc::channel(chunks.len().max(1));
        for c in chunks {
            tx.try_send(Ok(Bytes::from_static(c))).expect("room");
        }
        ClientBody::Channel { rx, left }
    }

    #[tokio::test]
    async fn a_body_holds_its_bytes_until_its_last_copy_is_dropped() {
        let metrics = Metrics::new();
        let budget = BodyBudget::new(100, &metrics);
        let body = read_body(channel(&[b"0123", b"4567"], Some(8)), Some(8), 50, &budget)
            .await
            .unwrap();
        assert_eq!(&body[..], b"01234567");
        assert_eq!(budget.in_flight(), 8);
        let retry_copy = body.clone();
        assert_eq!(budget.in_flight(), 8, "a copy does not count twice");
        drop(body);
        assert_eq!(budget.in_flight(), 8);
        drop(retry_copy);
        assert_eq!(budget.in_flight(), 0);
        assert_eq!(metrics.body_bytes_in_flight.get(), 0);
    }

    #[tokio::test]
    async fn a_body_that_does_not_fit_is_refused_unread() {
        let metrics = Metrics::new();
        let budget = BodyBudget::new(100, &metrics);
        let first = read_body(
            ClientBody::Full(Some(Bytes::from(vec![b'a'; 60]))),
            Some(60),
            100,
            &budget,
        )
        .await
        .unwrap();
        let e = read_body(channel(&[], Some(50)), Some(50), 100, &budget)
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert_eq!(e.retry_after, Some(Duration::from_secs(1)));
        assert_eq!(metrics.body_budget_refusals.get(), 1);
        assert_eq!(budget.in_flight(), 60, "the refused body took nothing");
        drop(first);
        assert!(
            read_body(channel(&[b"x"], Some(50)), Some(50), 100, &budget)
                .await
                .is_ok()
        );
        assert_eq!(budget.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_chunked_body_grows_its_reservation_and_stops_at_the_budget() {
        let metrics = Metrics::new();
        let budget = BodyBudget::new(64, &metrics);
        let body = read_body(
            channel(&[&[b'a'; 10], &[b'b'; 10]], None),
            None,
            64,
            &budget,
        )
        .await
        .unwrap();
        assert_eq!(body.len(), 20);
        assert!(budget.in_flight() >= 20 && budget.in_flight() <= 64);
        let big: &'static [u8] = &[b'c'; 40];
        let e = read_body(channel(&[big, big], None), None, 100, &budget)
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        drop(body);
        assert_eq!(budget.in_flight(), 0);
    }
}
