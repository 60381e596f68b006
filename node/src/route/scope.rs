//! Upstream limit scopes: which of Anthropic's limits a request draws on. Anthropic
//! limits each organisation per endpoint family (messages, token counting, batches,
//! files, models) and, for messages, per model class (Opus, Sonnet and Haiku each
//! have their own buckets), so a 429 says something about one scope and nothing
//! about the others. The pool cools keys per scope ([`super::pool`]).

use std::sync::Arc;

use crate::meta::RouteKind;

/// The endpoint family of a request, as Anthropic's limits group them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Messages,
    CountTokens,
    Batches,
    Files,
    Models,
    /// A `/v1/` path the node relays without knowing its limits.
    Other,
}

impl Family {
    pub fn of(kind: RouteKind) -> Family {
        match kind {
            RouteKind::Messages => Family::Messages,
            RouteKind::CountTokens => Family::CountTokens,
            RouteKind::Batches => Family::Batches,
            RouteKind::Files => Family::Files,
            RouteKind::Models => Family::Models,
            RouteKind::OtherV1 => Family::Other,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Family::Messages => "messages",
            Family::CountTokens => "count_tokens",
            Family::Batches => "batches",
            Family::Files => "files",
            Family::Models => "models",
            Family::Other => "other",
        }
    }
}

/// Model-id prefixes of today's families. Longest prefix wins, so the older
/// `claude-3-5-sonnet-...` ids find their class as well as `claude-sonnet-4-5`.
pub const DEFAULT_MODEL_CLASSES: &[(&str, &str)] = &[
    ("claude-opus", "opus"),
    ("claude-3-opus", "opus"),
    ("claude-sonnet", "sonnet"),
    ("claude-3-sonnet", "sonnet"),
    ("claude-3-5-sonnet", "sonnet"),
    ("claude-3-7-sonnet", "sonnet"),
    ("claude-haiku", "haiku"),
    ("claude-3-haiku", "haiku"),
    ("claude-3-5-haiku", "haiku"),
];

/// Class names and model ids longer than this, or with characters outside
/// `[A-Za-z0-9._:@-]`, are not used as a class of their own (they would end up in a
/// response header): such a model is in the class [`UNNAMED_CLASS`].
const MAX_CLASS_LEN: usize = 64;
/// The class of a model whose id cannot name a class (see [`MAX_CLASS_LEN`]).
pub const UNNAMED_CLASS: &str = "unnamed";

/// The mapping from model ids to classes: the defaults, with the operator's
/// `upstream.model_classes` entries added (an entry for a default prefix replaces it).
#[derive(Debug)]
pub struct ModelClasses {
    /// Longest prefix first.
    rules: Vec<(Box<str>, Arc<str>)>,
    unnamed: Arc<str>,
}

impl ModelClasses {
    pub fn new(extra: &[(String, String)]) -> ModelClasses {
        let mut rules: Vec<(Box<str>, Arc<str>)> = Vec::new();
        let defaults = DEFAULT_MODEL_CLASSES
            .iter()
            .map(|(p, c)| (p.to_string(), c.to_string()));
        for (prefix, class) in defaults.chain(extra.iter().cloned()) {
            rules.retain(|(p, _)| **p != *prefix);
            rules.push((prefix.into(), Arc::from(class)));
        }
        rules.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        ModelClasses {
            rules,
            unnamed: Arc::from(UNNAMED_CLASS),
        }
    }

    /// The class of `model`, and whether it came from the mapping (`false`: the
    /// model is a class of its own).
    pub fn class_of<'a>(&'a self, model: &'a str) -> (&'a str, bool) {
        for (prefix, class) in &self.rules {
            if model.starts_with(&**prefix) {
                return (class, true);
            }
        }
        if is_header_safe_name(model) {
            (model, false)
        } else {
            (&self.unnamed, false)
        }
    }

    /// The owned form of [`Self::class_of`]: shares the mapping's string when it can.
    fn owned_class(&self, model: &str) -> (Arc<str>, bool) {
        for (prefix, class) in &self.rules {
            if model.starts_with(&**prefix) {
                return (class.clone(), true);
            }
        }
        if is_header_safe_name(model) {
            (Arc::from(model), false)
        } else {
            (self.unnamed.clone(), false)
        }
    }
}

impl Default for ModelClasses {
    fn default() -> Self {
        ModelClasses::new(&[])
    }
}

/// Whether `name` may stand as a class name in a header and a log line.
pub fn is_header_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CLASS_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'))
}

/// The scope of one request, borrowed from it: the model class is worked out only
/// when the pool needs it (a key cooling, or a 429 to record), never on the way of a
/// request through a pool at rest.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub family: Family,
    /// The request's `model`, for messages only.
    pub model: Option<&'a str>,
}

impl<'a> Scope<'a> {
    pub fn new(kind: RouteKind, model: Option<&'a str>) -> Scope<'a> {
        let family = Family::of(kind);
        Scope {
            family,
            model: model.filter(|_| family == Family::Messages),
        }
    }

    /// Whether `key` is this scope.
    pub fn is(&self, key: &ScopeKey, classes: &ModelClasses) -> bool {
        if self.family != key.family {
            return false;
        }
        match (self.model, &key.class) {
            (None, None) => true,
            (Some(m), Some(c)) => classes.class_of(m).0 == &**c,
            _ => false,
        }
    }

    pub fn to_key(self, classes: &ModelClasses) -> ScopeKey {
        let (class, known) = match self.model {
            Some(m) => {
                let (c, known) = classes.owned_class(m);
                (Some(c), known)
            }
            None => (None, true),
        };
        ScopeKey {
            family: self.family,
            class,
            known,
        }
    }
}

/// A scope as the pool keeps it, owned: `messages/sonnet`, `count_tokens`, ...
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopeKey {
    pub family: Family,
    pub class: Option<Arc<str>>,
    /// The class came from the mapping (`false`: the model id is its own class).
    pub known: bool,
}

impl ScopeKey {
    /// `messages/sonnet`, `messages/claude-new-1`, `models`: for the
    /// `x-strait-upstream-scope` header, logs and `/readyz`.
    pub fn label(&self) -> String {
        match &self.class {
            Some(c) => format!("{}/{c}", self.family.label()),
            None => self.family.label().to_string(),
        }
    }

    /// As [`Self::label`], but a model that is a class of its own is counted as
    /// `messages/other`: a metric label must not take any value a client sends.
    pub fn metric_label(&self) -> String {
        if self.known {
            self.label()
        } else {
            format!("{}/other", self.family.label())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_find_their_class() {
        let c = ModelClasses::default();
        assert_eq!(c.class_of("claude-sonnet-4-5-20250929"), ("sonnet", true));
        assert_eq!(c.class_of("claude-3-5-sonnet-latest"), ("sonnet", true));
        assert_eq!(c.class_of("claude-opus-4-1"), ("opus", true));
        assert_eq!(c.class_of("claude-3-5-haiku-20241022"), ("haiku", true));
        assert_eq!(c.class_of("claude-nova-1"), ("claude-nova-1", false));
        assert_eq!(c.class_of("bad model\r\nx: y"), (UNNAMED_CLASS, false));
        assert_eq!(c.class_of(&"x".repeat(65)), (UNNAMED_CLASS, false));
    }

    #[test]
    fn operator_entries_add_to_and_replace_the_defaults() {
        let c = ModelClasses::new(&[
            ("claude-nova".into(), "nova".into()),
            ("claude-haiku".into(), "small".into()),
            ("claude-sonnet-4-5-fast".into(), "fast".into()),
        ]);
        assert_eq!(c.class_of("claude-nova-1"), ("nova", true));
        assert_eq!(c.class_of("claude-haiku-4-5"), ("small", true));
        assert_eq!(c.class_of("claude-sonnet-4-5-fast"), ("fast", true));
        assert_eq!(c.class_of("claude-sonnet-4-5"), ("sonnet", true));
    }

    #[test]
    fn scopes_compare_by_family_and_class() {
        let c = ModelClasses::default();
        let sonnet = Scope::new(RouteKind::Messages, Some("claude-sonnet-4-5"));
        let key = sonnet.to_key(&c);
        assert_eq!(key.label(), "messages/sonnet");
        assert!(Scope::new(RouteKind::Messages, Some("claude-3-7-sonnet-x")).is(&key, &c));
        assert!(!Scope::new(RouteKind::Messages, Some("claude-haiku-4-5")).is(&key, &c));
        assert!(!Scope::new(RouteKind::CountTokens, Some("claude-sonnet-4-5")).is(&key, &c));
        let ct = Scope::new(RouteKind::CountTokens, Some("claude-sonnet-4-5")).to_key(&c);
        assert_eq!(ct.label(), "count_tokens");
        let odd = Scope::new(RouteKind::Messages, Some("claude-nova-1")).to_key(&c);
        assert_eq!(odd.label(), "messages/claude-nova-1");
        assert_eq!(odd.metric_label(), "messages/other");
        assert_eq!(
            Scope::new(RouteKind::Messages, None).to_key(&c).label(),
            "messages"
        );
    }
}
