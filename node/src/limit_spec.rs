//! What a limit counts ([`Dim`]) and the limits of one key or tenant ([`LimitSpec`]),
//! as configuration states them. Vocabulary: read by the config, the limiter and
//! the rate-limit headers alike.

/// One limited quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dim {
    Requests,
    InputTokens,
    OutputTokens,
    DailyTokens,
    Concurrency,
}

impl Dim {
    pub const ALL: [Dim; 5] = [
        Dim::Requests,
        Dim::InputTokens,
        Dim::OutputTokens,
        Dim::DailyTokens,
        Dim::Concurrency,
    ];

    /// Metric label and `x-strait-ratelimit-dimension` value.
    pub fn label(self) -> &'static str {
        match self {
            Dim::Requests => "requests",
            Dim::InputTokens => "input_tokens",
            Dim::OutputTokens => "output_tokens",
            Dim::DailyTokens => "daily_tokens",
            Dim::Concurrency => "concurrency",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Dim::Requests => "requests per minute",
            Dim::InputTokens => "input tokens per minute",
            Dim::OutputTokens => "output tokens per minute",
            Dim::DailyTokens => "tokens per day",
            Dim::Concurrency => "concurrent requests",
        }
    }
}

/// The limits of one key or tenant; `None` means unlimited in that dimension.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitSpec {
    pub rpm: Option<u64>,
    pub itpm: Option<u64>,
    pub otpm: Option<u64>,
    pub concurrency: Option<u64>,
    pub daily_tokens: Option<u64>,
}

impl LimitSpec {
    pub fn get(&self, d: Dim) -> Option<u64> {
        match d {
            Dim::Requests => self.rpm,
            Dim::InputTokens => self.itpm,
            Dim::OutputTokens => self.otpm,
            Dim::DailyTokens => self.daily_tokens,
            Dim::Concurrency => self.concurrency,
        }
    }

    pub fn is_empty(&self) -> bool {
        Dim::ALL.iter().all(|d| self.get(*d).is_none())
    }

    /// Field by field: `self` where set, else `base`.
    pub fn or(self, base: LimitSpec) -> LimitSpec {
        LimitSpec {
            rpm: self.rpm.or(base.rpm),
            itpm: self.itpm.or(base.itpm),
            otpm: self.otpm.or(base.otpm),
            concurrency: self.concurrency.or(base.concurrency),
            daily_tokens: self.daily_tokens.or(base.daily_tokens),
        }
    }

    /// One node's safe share when it cannot coordinate: each limit divided by the
    /// expected node count, rounded down (at least 1, so a key is never locked out).
    pub fn safe_share(self, nodes: u32) -> LimitSpec {
        let n = u64::from(nodes.max(1));
        let share = |v: Option<u64>| v.map(|v| if v == 0 { 0 } else { (v / n).max(1) });
        LimitSpec {
            rpm: share(self.rpm),
            itpm: share(self.itpm),
            otpm: share(self.otpm),
            concurrency: share(self.concurrency),
            daily_tokens: share(self.daily_tokens),
        }
    }

    /// Parses the `--default-limits` form: `rpm=60,itpm=40000,otpm=8000,concurrency=4,daily_tokens=1000000`.
    pub fn parse(s: &str) -> std::result::Result<LimitSpec, String> {
        let mut spec = LimitSpec::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not name=value"))?;
            let v: u64 = v
                .trim()
                .parse()
                .map_err(|_| format!("{item:?}: the value must be a whole number"))?;
            let slot = match k.trim() {
                "rpm" => &mut spec.rpm,
                "itpm" => &mut spec.itpm,
                "otpm" => &mut spec.otpm,
                "concurrency" => &mut spec.concurrency,
                "daily_tokens" | "daily" => &mut spec.daily_tokens,
                other => {
                    return Err(format!(
                    "unknown limit {other:?} (known: rpm, itpm, otpm, concurrency, daily_tokens)"
                ))
                }
            };
            *slot = Some(v);
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quick_start_limits() {
        let s = LimitSpec::parse("rpm=60, itpm=40000,otpm=8000,concurrency=4").unwrap();
        assert_eq!(s.rpm, Some(60));
        assert_eq!(s.concurrency, Some(4));
        assert_eq!(s.daily_tokens, None);
        assert!(LimitSpec::parse("rpm=x").is_err());
        assert!(LimitSpec::parse("rps=1")
            .unwrap_err()
            .contains("unknown limit"));
        assert!(LimitSpec::parse("").unwrap().is_empty());
    }

    #[test]
    fn safe_share_rounds_down_but_never_to_zero() {
        let s = LimitSpec {
            rpm: Some(100),
            concurrency: Some(2),
            otpm: Some(0),
            ..Default::default()
        }
        .safe_share(3);
        assert_eq!((s.rpm, s.concurrency, s.otpm), (Some(33), Some(1), Some(0)));
    }

    #[test]
    fn key_limits_override_defaults_field_by_field() {
        let d = LimitSpec {
            rpm: Some(60),
            otpm: Some(8000),
            ..Default::default()
        };
        let k = LimitSpec {
            rpm: Some(5),
            ..Default::default()
        };
        assert_eq!(
            k.or(d),
            LimitSpec {
                rpm: Some(5),
                otpm: Some(8000),
                ..Default::default()
            }
        );
    }
}
