//! What an admitted request carries: its reservation, the permit that settles it
//! with the real usage (or, dropped, with the full reservation), and the backend side
//! of that settlement.

use std::sync::Arc;

use super::{Dim, RateView, Subject};
use crate::meta::{RequestMeta, RouteKind, Usage};

/// What a request asks for at admission. Requests and concurrency count 1 each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reservation {
    /// Estimated input tokens.
    pub input: u64,
    /// Output tokens reserved: the request's `max_tokens`.
    pub output: u64,
}

impl Reservation {
    /// Tokens are reserved for Messages requests only: input estimated as body bytes / 4
    /// (the JSON around the text makes this an over-estimate, refunded at settlement),
    /// output as `max_tokens`.
    pub fn for_request(route: RouteKind, meta: &RequestMeta, body_len: usize) -> Reservation {
        if route != RouteKind::Messages {
            return Reservation::default();
        }
        Reservation {
            input: (body_len as u64 / 4).max(1),
            output: meta.max_tokens.unwrap_or(0),
        }
    }

    pub fn amount(&self, d: Dim) -> u64 {
        match d {
            Dim::Requests | Dim::Concurrency => 1,
            Dim::InputTokens => self.input,
            Dim::OutputTokens => self.output,
            Dim::DailyTokens => self.input.saturating_add(self.output),
        }
    }
}

/// Where each scope's windows stood at admission, so a refund lands in the same window
/// (or is dropped if that window has ended).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp {
    pub window: i64,
    pub day: i64,
}

/// What a request really used, decided when its record finishes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Actual {
    pub input: u64,
    pub output: u64,
}

/// The backend side of a permit: settles usage and frees the concurrency slot.
pub trait Settle: Send + Sync {
    fn settle(&self, permit: &PermitData, actual: Actual);
}

/// Everything a backend needs to settle a permit.
#[derive(Debug, Clone)]
pub struct PermitData {
    pub subject: Subject,
    pub reservation: Reservation,
    pub stamps: [Stamp; 2],
}

/// An admitted request's reservation. Settle it with [`Permit::settle`]; dropping it
/// unsettled charges the full reservation (the safe assumption for a request whose
/// outcome is unknown) and still frees the concurrency slot.
pub struct Permit {
    data: PermitData,
    backend: Arc<dyn Settle>,
    settled: bool,
}

impl Permit {
    pub fn new(data: PermitData, backend: Arc<dyn Settle>) -> Permit {
        Permit {
            data,
            backend,
            settled: false,
        }
    }

    pub fn reservation(&self) -> Reservation {
        self.data.reservation
    }

    /// Settles with the usage read from the response. `outcome` is the record's: a
    /// stream cut short (`client_gone`, `upstream_failed`, `drain_deadline`) may have
    /// used more than was read, so it is charged at least its reservation; anything else
    /// is charged what the upstream reported (zero for error responses, which carry no
    /// usage).
    pub fn settle(mut self, usage: &Usage, outcome: &str) {
        let reported = Actual {
            input: usage
                .input_tokens
                .saturating_add(usage.cache_creation_input_tokens),
            output: usage.output_tokens,
        };
        let actual = match outcome {
            "client_gone" | "upstream_failed" | "drain_deadline" => Actual {
                input: reported.input.max(self.data.reservation.input),
                output: reported.output.max(self.data.reservation.output),
            },
            _ => reported,
        };
        self.settled = true;
        self.backend.settle(&self.data, actual);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled {
            let r = self.data.reservation;
            self.backend.settle(
                &self.data,
                Actual {
                    input: r.input,
                    output: r.output,
                },
            );
        }
    }
}

/// The decision for an admitted request.
pub struct Admission {
    pub permit: Permit,
    pub view: RateView,
}
