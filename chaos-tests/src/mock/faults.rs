//! Fault and pacing descriptions, and their `x-mock-fault` / `x-mock-pacing` header grammar.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Bytes per piece when `drip` is set and no `drip-bytes` is given.
pub const DEFAULT_DRIP_BYTES: usize = 7;

/// Upper bound on `tokens=`: a typo like `tokens=1000000000` would otherwise tie up the mock.
const MAX_TOKENS: u32 = 1_000_000;

/// What the mock does wrong for one request.
///
/// Several parts may be combined; they apply in this order: `latency`, then `reset`
/// (no response at all), then `status` (an error response), then the body faults
/// (`cut`, `drip`) on a successful response.
///
/// Build one with the constructors (`Fault::status(429).with_retry_after(2)`), a struct
/// literal with `..Default::default()`, or parse the header grammar with `str::parse`.
/// `Display` writes the header form back, so `fault.to_string()` can be sent as `x-mock-fault`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fault {
    /// Delay before the response headers are sent.
    pub latency: Option<Duration>,
    /// Abort the TCP connection (RST) without sending any response.
    pub reset: bool,
    /// Answer with this HTTP status and the matching Anthropic error body.
    pub status: Option<u16>,
    /// Seconds for the `retry-after` header of a `status` fault.
    pub retry_after: Option<u64>,
    /// Make a `status` fault look like an exhausted quota: `requests-remaining: 0` and a
    /// `requests-reset` far ahead (now + max(retry-after, 3600 s)).
    pub exhausted: bool,
    /// Break the response body part-way; see [`Cut`].
    pub cut: Option<Cut>,
    /// Send the body in small pieces with this delay between pieces.
    pub drip: Option<Duration>,
    /// Piece size for `drip` (default [`DEFAULT_DRIP_BYTES`]).
    pub drip_bytes: Option<usize>,
}

/// How a response body is broken part-way.
///
/// For SSE streams `N` counts events (including `ping`); for JSON bodies `N` counts bytes
/// (the `content-length` still announces the full body, so the client sees a truncation).
/// If `N` is larger than the body, the fault happens after the whole body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Send `N` units, then keep the connection open and send nothing more, ever.
    StallAfter(usize),
    /// Send `N` units, then abort the TCP connection (RST).
    ResetAfter(usize),
    /// Streams only: send `N` events, then an SSE `error` event (`overloaded_error`) and end.
    /// Ignored for JSON bodies.
    ErrorAfter(usize),
}

impl Fault {
    /// An Anthropic error response with this status.
    pub fn status(status: u16) -> Fault {
        Fault {
            status: Some(status),
            ..Fault::default()
        }
    }

    /// A transient 429 with `retry-after`.
    pub fn rate_limited(retry_after_secs: u64) -> Fault {
        Fault::status(429).with_retry_after(retry_after_secs)
    }

    /// A 429 whose headers say the quota is gone for a long while.
    pub fn quota_exhausted(retry_after_secs: u64) -> Fault {
        Fault {
            exhausted: true,
            ..Fault::rate_limited(retry_after_secs)
        }
    }

    /// A 529 `overloaded_error`.
    pub fn overloaded() -> Fault {
        Fault::status(529)
    }

    /// Delay before the response headers.
    pub fn latency(delay: Duration) -> Fault {
        Fault {
            latency: Some(delay),
            ..Fault::default()
        }
    }

    /// Abort the connection without any response.
    pub fn reset() -> Fault {
        Fault {
            reset: true,
            ..Fault::default()
        }
    }

    /// See [`Cut::StallAfter`].
    pub fn stall_after(n: usize) -> Fault {
        Fault {
            cut: Some(Cut::StallAfter(n)),
            ..Fault::default()
        }
    }

    /// See [`Cut::ResetAfter`].
    pub fn reset_after(n: usize) -> Fault {
        Fault {
            cut: Some(Cut::ResetAfter(n)),
            ..Fault::default()
        }
    }

    /// See [`Cut::ErrorAfter`].
    pub fn error_after(n: usize) -> Fault {
        Fault {
            cut: Some(Cut::ErrorAfter(n)),
            ..Fault::default()
        }
    }

    /// Send the body in [`DEFAULT_DRIP_BYTES`]-byte pieces, `delay` apart.
    pub fn drip(delay: Duration) -> Fault {
        Fault {
            drip: Some(delay),
            ..Fault::default()
        }
    }

    /// Adds a `retry-after` header to a status fault.
    pub fn with_retry_after(mut self, secs: u64) -> Fault {
        self.retry_after = Some(secs);
        self
    }

    /// Adds a delay before the response headers.
    pub fn with_latency(mut self, delay: Duration) -> Fault {
        self.latency = Some(delay);
        self
    }

    /// Combines two faults; parts set in `other` win.
    pub fn merge(self, other: Fault) -> Fault {
        Fault {
            latency: other.latency.or(self.latency),
            reset: self.reset || other.reset,
            status: other.status.or(self.status),
            retry_after: other.retry_after.or(self.retry_after),
            exhausted: self.exhausted || other.exhausted,
            cut: other.cut.or(self.cut),
            drip: other.drip.or(self.drip),
            drip_bytes: other.drip_bytes.or(self.drip_bytes),
        }
    }

    pub(crate) fn drip_plan(&self) -> Option<(Duration, usize)> {
        self.drip
            .map(|d| (d, self.drip_bytes.unwrap_or(DEFAULT_DRIP_BYTES).max(1)))
    }
}

/// A header value that does not follow the fault or pacing grammar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultParseError(pub String);

impl fmt::Display for FaultParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FaultParseError {}

fn bad(msg: impl Into<String>) -> FaultParseError {
    FaultParseError(msg.into())
}

fn number<T: FromStr>(key: &str, value: Option<&str>) -> Result<T, FaultParseError> {
    let value = value.ok_or_else(|| bad(format!("`{key}` needs a value, e.g. `{key}=3`")))?;
    value
        .trim()
        .parse()
        .map_err(|_| bad(format!("`{key}={value}`: not a valid non-negative integer")))
}

fn flag(key: &str, value: Option<&str>) -> Result<bool, FaultParseError> {
    match value {
        None => Ok(true),
        Some(v) => Err(bad(format!("`{key}` takes no value (got `{key}={v}`)"))),
    }
}

impl FromStr for Fault {
    type Err = FaultParseError;

    /// Grammar: `;`-separated items, each `key=value` or a bare flag; see the README.
    fn from_str(s: &str) -> Result<Fault, FaultParseError> {
        let mut fault = Fault::default();
        let mut cuts = 0;
        for item in s.split(';').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (item, None),
            };
            match key {
                "status" => {
                    let status: u16 = number(key, value)?;
                    if !(400..=599).contains(&status) {
                        return Err(bad(format!("`status={status}`: must be 400..=599")));
                    }
                    fault.status = Some(status);
                }
                "retry-after" => fault.retry_after = Some(number(key, value)?),
                "exhausted" => fault.exhausted = flag(key, value)?,
                "latency-ms" => fault.latency = Some(Duration::from_millis(number(key, value)?)),
                "reset" => fault.reset = flag(key, value)?,
                "stall-after" => {
                    fault.cut = Some(Cut::StallAfter(number(key, value)?));
                    cuts += 1;
                }
                "reset-after" => {
                    fault.cut = Some(Cut::ResetAfter(number(key, value)?));
                    cuts += 1;
                }
                "error-after" => {
                    fault.cut = Some(Cut::ErrorAfter(number(key, value)?));
                    cuts += 1;
                }
                "drip-ms" => fault.drip = Some(Duration::from_millis(number(key, value)?)),
                "drip-bytes" => {
                    let n: usize = number(key, value)?;
                    if n == 0 {
                        return Err(bad("`drip-bytes` must be at least 1"));
                    }
                    fault.drip_bytes = Some(n);
                }
                other => return Err(bad(format!("unknown fault `{other}`"))),
            }
        }
        if cuts > 1 {
            return Err(bad("use only one of stall-after, reset-after, error-after"));
        }
        if fault.status.is_none() && (fault.retry_after.is_some() || fault.exhausted) {
            return Err(bad("`retry-after` and `exhausted` need a `status`"));
        }
        if fault.drip_bytes.is_some() && fault.drip.is_none() {
            return Err(bad("`drip-bytes` needs `drip-ms`"));
        }
        Ok(fault)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items: Vec<String> = Vec::new();
        if let Some(d) = self.latency {
            items.push(format!("latency-ms={}", d.as_millis()));
        }
        if self.reset {
            items.push("reset".into());
        }
        if let Some(s) = self.status {
            items.push(format!("status={s}"));
        }
        if let Some(r) = self.retry_after {
            items.push(format!("retry-after={r}"));
        }
        if self.exhausted {
            items.push("exhausted".into());
        }
        match self.cut {
            Some(Cut::StallAfter(n)) => items.push(format!("stall-after={n}")),
            Some(Cut::ResetAfter(n)) => items.push(format!("reset-after={n}")),
            Some(Cut::ErrorAfter(n)) => items.push(format!("error-after={n}")),
            None => {}
        }
        if let Some(d) = self.drip {
            items.push(format!("drip-ms={}", d.as_millis()));
        }
        if let Some(b) = self.drip_bytes {
            items.push(format!("drip-bytes={b}"));
        }
        f.write_str(&items.join(";"))
    }
}

/// How fast a reply is produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pacing {
    /// Delay between the response headers and `message_start`.
    pub ttft: Duration,
    /// Delay between consecutive `content_block_delta` events.
    pub interval: Duration,
    /// Output tokens per reply, before the request's `max_tokens` cap.
    pub tokens: u32,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            ttft: Duration::ZERO,
            interval: Duration::ZERO,
            tokens: 12,
        }
    }
}

impl Pacing {
    /// Applies an `x-mock-pacing` header (`ttft-ms=100,interval-ms=20,tokens=5`; `,` or `;`
    /// separated, any subset) on top of `self`.
    pub fn with_overrides(self, header: &str) -> Result<Pacing, FaultParseError> {
        let mut pacing = self;
        for item in header
            .split([',', ';'])
            .map(str::trim)
            .filter(|i| !i.is_empty())
        {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (item, None),
            };
            match key {
                "ttft-ms" => pacing.ttft = Duration::from_millis(number(key, value)?),
                "interval-ms" => pacing.interval = Duration::from_millis(number(key, value)?),
                "tokens" => {
                    let tokens: u32 = number(key, value)?;
                    if tokens > MAX_TOKENS {
                        return Err(bad(format!("`tokens` must be at most {MAX_TOKENS}")));
                    }
                    pacing.tokens = tokens;
                }
                other => return Err(bad(format!("unknown pacing key `{other}`"))),
            }
        }
        Ok(pacing)
    }
}

impl fmt::Display for Pacing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ttft-ms={},interval-ms={},tokens={}",
            self.ttft.as_millis(),
            self.interval.as_millis(),
            self.tokens
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_combined_status_fault() {
        let f: Fault = "status=429; retry-after=30; exhausted".parse().unwrap();
        assert_eq!(f, Fault::quota_exhausted(30));
    }

    #[test]
    fn display_round_trips() {
        let f = Fault::reset_after(3)
            .merge(Fault::drip(Duration::from_millis(20)))
            .with_latency(Duration::from_millis(5));
        assert_eq!(f.to_string().parse::<Fault>().unwrap(), f);
    }

    #[test]
    fn rejects_typos_and_bad_combinations() {
        for bad in [
            "stauts=429",
            "status=200",
            "status",
            "reset=1",
            "retry-after=2",
            "stall-after=1;reset-after=2",
            "latency-ms=-3",
            "drip-bytes=4",
        ] {
            assert!(bad.parse::<Fault>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn pacing_overrides_only_given_keys() {
        let p = Pacing::default()
            .with_overrides("interval-ms=20, tokens=5")
            .unwrap();
        assert_eq!(p.interval, Duration::from_millis(20));
        assert_eq!(p.tokens, 5);
        assert_eq!(p.ttft, Duration::ZERO);
        assert!(Pacing::default().with_overrides("speed=3").is_err());
    }
}
