//! Phase 3, admit: the request target. A path that could mean something else to a
//! server behind the upstream (dot segments, empty segments, encoded slashes or dots)
//! is refused before routing, and only the Anthropic API's own routes, with their
//! methods, are forwarded: the node never relays a pool key to a path nobody checked.

use http::Method;

use crate::error::{Error, ErrorKind};
use crate::meta::RouteKind;

/// What a route segment must be.
#[derive(Clone, Copy)]
enum Seg {
    /// This exact word.
    Lit(&'static str),
    /// An id (anything the hygiene check let through).
    Id,
}

use Seg::{Id, Lit};

/// The Anthropic API's routes under `/v1/`, with the methods each takes (HEAD goes
/// wherever GET does). Kept to the public API reference; `upstream.pass_unknown_routes`
/// relays other `/v1/` paths for APIs newer than this list.
const ROUTES: &[(&[Seg], &[Method], RouteKind)] = &[
    (&[Lit("messages")], &[Method::POST], RouteKind::Messages),
    (
        &[Lit("messages"), Lit("count_tokens")],
        &[Method::POST],
        RouteKind::CountTokens,
    ),
    (
        &[Lit("messages"), Lit("batches")],
        &[Method::POST, Method::GET],
        RouteKind::Batches,
    ),
    (
        &[Lit("messages"), Lit("batches"), Id],
        &[Method::GET, Method::DELETE],
        RouteKind::Batches,
    ),
    (
        &[Lit("messages"), Lit("batches"), Id, Lit("cancel")],
        &[Method::POST],
        RouteKind::Batches,
    ),
    (
        &[Lit("messages"), Lit("batches"), Id, Lit("results")],
        &[Method::GET],
        RouteKind::Batches,
    ),
    (&[Lit("models")], &[Method::GET], RouteKind::Models),
    (&[Lit("models"), Id], &[Method::GET], RouteKind::Models),
    (
        &[Lit("files")],
        &[Method::POST, Method::GET],
        RouteKind::Files,
    ),
    (
        &[Lit("files"), Id],
        &[Method::GET, Method::DELETE],
        RouteKind::Files,
    ),
    (
        &[Lit("files"), Id, Lit("content")],
        &[Method::GET],
        RouteKind::Files,
    ),
    (
        &[Lit("skills")],
        &[Method::POST, Method::GET],
        RouteKind::OtherV1,
    ),
    (
        &[Lit("skills"), Id],
        &[Method::GET, Method::DELETE],
        RouteKind::OtherV1,
    ),
    (
        &[Lit("skills"), Id, Lit("versions")],
        &[Method::POST, Method::GET],
        RouteKind::OtherV1,
    ),
    (
        &[Lit("skills"), Id, Lit("versions"), Id],
        &[Method::GET, Method::DELETE],
        RouteKind::OtherV1,
    ),
    // The legacy Text Completions API.
    (&[Lit("complete")], &[Method::POST], RouteKind::OtherV1),
];

/// Methods the API uses at all; anything else (TRACE, CONNECT, made-up ones) is 405
/// wherever it is sent.
fn known_method(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::POST | Method::DELETE | Method::PUT | Method::PATCH
    ) || m == Method::OPTIONS
}

/// Checks a request's path (without its query, which is relayed as it came) and
/// method. Returns the route, or the error to answer with: 400 for a path with dot
/// segments, empty segments or encoded slashes, 404 for paths outside the API (and for
/// `/v1/strait/...`, the node's own, never forwarded), 405 for a method the route (or
/// the API) does not take. `pass_unknown`: other `/v1/` paths are relayed as
/// [`RouteKind::OtherV1`] instead of refused.
pub fn check(method: &Method, path: &str, pass_unknown: bool) -> Result<RouteKind, Error> {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Err(not_found());
    };
    // One pass over the path's bytes: its segments (as many as the longest route has,
    // and how many there are), each looked at closely only when it starts with a dot
    // or holds `%` or `\`. This runs on every request.
    let bytes = rest.as_bytes();
    let mut segments = [""; MAX_SEGMENTS];
    let (mut count, mut start, mut suspect) = (0, 0, false);
    for i in 0..=bytes.len() {
        match bytes.get(i) {
            Some(b'/') | None => {
                let segment = &rest[start..i];
                if segment.is_empty() || (suspect && !plain_segment(segment.as_bytes())) {
                    return Err(Error::new(
                        ErrorKind::InvalidRequest,
                        "invalid request path: empty or dot segments and encoded slashes are not allowed",
                    ));
                }
                if count < MAX_SEGMENTS {
                    segments[count] = segment;
                }
                count += 1;
                start = i + 1;
                suspect = false;
            }
            Some(b'%' | b'\\') => suspect = true,
            Some(b'.') if i == start => suspect = true,
            Some(_) => {}
        }
    }
    let matches = |pattern: &[Seg]| {
        count == pattern.len()
            && segments.iter().zip(pattern).all(|(s, p)| match p {
                Lit(word) => s == word,
                Id => true,
            })
    };
    let route = ROUTES.iter().find(|(pattern, _, _)| matches(pattern));
    if let Some((_, methods, kind)) = route {
        if methods.contains(method) || (*method == Method::HEAD && methods.contains(&Method::GET)) {
            return Ok(*kind);
        }
    }
    if route.is_some() || !known_method(method) {
        return Err(method_not_allowed(method));
    }
    if segments[0] == "strait" {
        return Err(Error::new(
            ErrorKind::NotFound,
            "not found: no such gateway endpoint",
        ));
    }
    if pass_unknown {
        return Ok(RouteKind::OtherV1);
    }
    Err(Error::new(
        ErrorKind::NotFound,
        "not found: not a route of the Anthropic API this gateway relays",
    ))
}

/// Segments in the longest route of [`ROUTES`].
const MAX_SEGMENTS: usize = 4;

/// Whether a path segment is plain: not empty, not `.` or `..` (also spelled with
/// `%2e`), with no backslash and no encoded slash or backslash. Servers and proxies
/// disagree on what the others mean, which is how a path reaches what it names for one
/// of them but not the other.
fn plain_segment(s: &[u8]) -> bool {
    let Some(&first) = s.first() else {
        return false;
    };
    if (first == b'.' || first == b'%') && is_dot_segment(s) {
        return false;
    }
    s.iter().all(|&c| c != b'\\' && c != b'%') || !(s.contains(&b'\\') || encodes_a_slash(s))
}

/// `.` or `..`, each dot written as itself or as `%2e` (either case).
fn is_dot_segment(s: &[u8]) -> bool {
    let (mut i, mut dots) = (0, 0);
    while i < s.len() {
        if s[i] == b'.' {
            i += 1;
        } else if s[i..].len() >= 3 && s[i] == b'%' && s[i + 1] == b'2' && s[i + 2] | 0x20 == b'e' {
            i += 3;
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// Whether the segment holds `%2f` or `%5c` (a slash or backslash, either case).
fn encodes_a_slash(s: &[u8]) -> bool {
    s.windows(3)
        .any(|w| w[0] == b'%' && matches!((w[1], w[2] | 0x20), (b'2', b'f') | (b'5', b'c')))
}

fn not_found() -> Error {
    Error::new(
        ErrorKind::NotFound,
        "not found: the gateway relays /v1/ paths of the Anthropic API",
    )
}

fn method_not_allowed(method: &Method) -> Error {
    // The method is a token (checked by the parser), short enough to name.
    let name: String = method.as_str().chars().take(32).collect();
    Error::new(
        ErrorKind::MethodNotAllowed,
        format!("method {name} is not allowed on this path"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Method {
        Method::from_bytes(s.as_bytes()).unwrap()
    }

    /// The hostile-client probe's cases, path variants x methods.
    #[test]
    fn probe_paths_and_methods_are_answered_as_the_issue_asks() {
        let cases: &[(&str, &str, Result<RouteKind, ErrorKind>)] = &[
            ("POST", "/v1/messages", Ok(RouteKind::Messages)),
            (
                "POST",
                "/v1/messages/count_tokens",
                Ok(RouteKind::CountTokens),
            ),
            ("GET", "/v1/models", Ok(RouteKind::Models)),
            ("HEAD", "/v1/models", Ok(RouteKind::Models)),
            ("GET", "/v1/models/claude-x", Ok(RouteKind::Models)),
            ("POST", "/v1/messages/batches", Ok(RouteKind::Batches)),
            ("GET", "/v1/messages/batches", Ok(RouteKind::Batches)),
            ("GET", "/v1/messages/batches/b1", Ok(RouteKind::Batches)),
            ("DELETE", "/v1/messages/batches/b1", Ok(RouteKind::Batches)),
            (
                "POST",
                "/v1/messages/batches/b1/cancel",
                Ok(RouteKind::Batches),
            ),
            (
                "GET",
                "/v1/messages/batches/b1/results",
                Ok(RouteKind::Batches),
            ),
            ("POST", "/v1/files", Ok(RouteKind::Files)),
            ("GET", "/v1/files/f1/content", Ok(RouteKind::Files)),
            ("DELETE", "/v1/files/f1", Ok(RouteKind::Files)),
            ("POST", "/v1/skills", Ok(RouteKind::OtherV1)),
            ("GET", "/v1/skills/s1/versions/2", Ok(RouteKind::OtherV1)),
            ("POST", "/v1/complete", Ok(RouteKind::OtherV1)),
            ("GET", "/v1/../admin", Err(ErrorKind::InvalidRequest)),
            ("GET", "/v1/%2e%2e/metrics", Err(ErrorKind::InvalidRequest)),
            ("GET", "/v1/%2E./metrics", Err(ErrorKind::InvalidRequest)),
            ("GET", "/v1/..%2fmetrics", Err(ErrorKind::InvalidRequest)),
            ("POST", "/v1/./messages", Err(ErrorKind::InvalidRequest)),
            ("POST", "/v1//messages", Err(ErrorKind::InvalidRequest)),
            ("POST", "/v1/x/../messages", Err(ErrorKind::InvalidRequest)),
            ("POST", "/v1/messages/", Err(ErrorKind::InvalidRequest)),
            ("POST", "/v1/messages%5c..", Err(ErrorKind::InvalidRequest)),
            ("GET", "/v1/strait/deferred/x", Err(ErrorKind::NotFound)),
            ("GET", "/v1/admin", Err(ErrorKind::NotFound)),
            ("GET", "/admin", Err(ErrorKind::NotFound)),
            ("GET", "/v1/messages", Err(ErrorKind::MethodNotAllowed)),
            ("DELETE", "/v1/models", Err(ErrorKind::MethodNotAllowed)),
            ("TRACE", "/v1/messages", Err(ErrorKind::MethodNotAllowed)),
            ("BREW", "/v1/models", Err(ErrorKind::MethodNotAllowed)),
            ("TRACE", "/v1/unknown", Err(ErrorKind::MethodNotAllowed)),
        ];
        for (method, path, want) in cases {
            let got = check(&m(method), path, false).map_err(|e| e.kind);
            assert_eq!(&got, want, "{method} {path}");
        }
    }

    #[test]
    fn unknown_routes_pass_only_when_switched_on_and_hygiene_holds_regardless() {
        assert_eq!(
            check(&Method::POST, "/v1/newer/api", false).map_err(|e| e.kind),
            Err(ErrorKind::NotFound)
        );
        assert_eq!(
            check(&Method::POST, "/v1/newer/api", true).map_err(|e| e.kind),
            Ok(RouteKind::OtherV1)
        );
        assert_eq!(
            check(&Method::POST, "/v1/newer/../api", true).map_err(|e| e.kind),
            Err(ErrorKind::InvalidRequest)
        );
        assert_eq!(
            check(&Method::GET, "/v1/strait/x", true).map_err(|e| e.kind),
            Err(ErrorKind::NotFound)
        );
    }
}
