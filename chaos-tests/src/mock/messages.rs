//! `POST /v1/messages`: request validation, the token estimate, canned replies and SSE streams.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL};
use http::StatusCode;
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::conn::ConnCtl;
use super::faults::{Cut, Fault, Pacing};
use super::response::{self, MockBody, Resp, Sender};
use super::State;

/// Characters of prompt text in a `content` or `system` value: a string counts whole, a block
/// array counts the `text` of each block that has one. Counted while parsing, without copies.
#[derive(Default)]
struct TextChars(u64);

impl<'de> Deserialize<'de> for TextChars {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TextChars;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of content blocks")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<TextChars, E> {
                Ok(TextChars(v.chars().count() as u64))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TextChars, A::Error> {
                let mut n = 0;
                while let Some(block) = seq.next_element::<Block>()? {
                    n += block.text.map_or(0, |t| t.0);
                }
                Ok(TextChars(n))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct Block {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    #[serde(default)]
    text: Option<TextChars>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Role {
    User,
    Assistant,
}

#[derive(Deserialize)]
struct Message {
    #[serde(rename = "role")]
    _role: Role,
    content: TextChars,
}

/// Sums the messages' text while parsing the array, so no `Vec` is built per request.
#[derive(Default)]
struct Messages {
    count: usize,
    chars: u64,
}

impl<'de> Deserialize<'de> for Messages {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Messages;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of messages")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Messages, A::Error> {
                let mut m = Messages::default();
                while let Some(msg) = seq.next_element::<Message>()? {
                    m.count += 1;
                    m.chars += msg.content.0;
                }
                Ok(m)
            }
        }
        d.deserialize_seq(V)
    }
}

/// The fields of a Messages API request the mock looks at; others are ignored.
#[derive(Deserialize)]
pub(crate) struct RawRequest<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    messages: Option<Messages>,
    #[serde(default)]
    system: Option<TextChars>,
    #[serde(default)]
    stream: Option<bool>,
}

/// A validated request.
pub(crate) struct Request<'a> {
    pub(crate) model: Cow<'a, str>,
    pub(crate) max_tokens: u64,
    pub(crate) input_tokens: u64,
    pub(crate) stream: bool,
}

/// The token estimate: max(1, prompt chars / 4). Documented in the README; tests rely on it.
pub(crate) fn estimate_tokens(chars: u64) -> u64 {
    (chars / 4).max(1)
}

impl<'a> RawRequest<'a> {
    /// Checks required fields; `Err` is the message for a 400 (`prefix` locates it in a batch).
    pub(crate) fn validate(
        self,
        need_max_tokens: bool,
        prefix: &str,
    ) -> Result<Request<'a>, String> {
        let model = self
            .model
            .ok_or_else(|| format!("{prefix}model: Field required"))?;
        let messages = self
            .messages
            .ok_or_else(|| format!("{prefix}messages: Field required"))?;
        if messages.count == 0 {
            return Err(format!(
                "{prefix}messages: at least one message is required"
            ));
        }
        let max_tokens = match self.max_tokens {
            Some(0) => {
                return Err(format!(
                    "{prefix}max_tokens: Input should be greater than or equal to 1"
                ))
            }
            Some(n) => n,
            None if need_max_tokens => return Err(format!("{prefix}max_tokens: Field required")),
            None => 0,
        };
        let chars = messages.chars + self.system.map_or(0, |s| s.0);
        Ok(Request {
            model,
            max_tokens,
            input_tokens: estimate_tokens(chars),
            stream: self.stream.unwrap_or(false),
        })
    }
}

/// Parses and validates a Messages request body.
pub(crate) fn parse(body: &[u8], need_max_tokens: bool) -> Result<Request<'_>, String> {
    serde_json::from_slice::<RawRequest<'_>>(body)
        .map_err(|e| format!("invalid request body: {e}"))?
        .validate(need_max_tokens, "")
}

/// The text of output token `i`; concatenated they read "tok0 tok1 tok2 ...".
fn token(i: u32) -> String {
    if i == 0 {
        "tok0".to_owned()
    } else {
        format!(" tok{i}")
    }
}

/// What a reply contains, shared by plain replies, streams and batch results.
pub(crate) struct Reply<'a> {
    pub(crate) id: String,
    pub(crate) model: &'a str,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u32,
    pub(crate) stop_reason: &'static str,
}

impl<'a> Reply<'a> {
    pub(crate) fn new(model: &'a str, max_tokens: u64, input_tokens: u64, tokens: u32) -> Self {
        let capped = u64::from(tokens) > max_tokens;
        Reply {
            id: response::new_id("msg_"),
            model,
            input_tokens,
            output_tokens: if capped { max_tokens as u32 } else { tokens },
            stop_reason: if capped { "max_tokens" } else { "end_turn" },
        }
    }

    pub(crate) fn text(&self) -> String {
        let mut text = String::with_capacity(self.output_tokens as usize * 6);
        for i in 0..self.output_tokens {
            if i > 0 {
                text.push(' ');
            }
            let _ = write!(text, "tok{i}");
        }
        text
    }

    /// The message object; `text` is `None` for `message_start`, whose content is empty.
    pub(crate) fn object<'s>(&'s self, text: Option<&'s str>) -> MessageObject<'s> {
        let streaming_start = text.is_none();
        MessageObject {
            id: &self.id,
            kind: "message",
            role: "assistant",
            model: self.model,
            content: text.map(|text| TextBlock { kind: "text", text }),
            stop_reason: (!streaming_start).then_some(self.stop_reason),
            stop_sequence: None,
            usage: Usage {
                input_tokens: self.input_tokens,
                cache_creation_input_tokens: 0,
                cache_read_input_tokens: 0,
                cache_creation: CacheCreation {
                    ephemeral_5m_input_tokens: 0,
                    ephemeral_1h_input_tokens: 0,
                },
                output_tokens: if streaming_start {
                    1
                } else {
                    u64::from(self.output_tokens)
                },
                service_tier: "standard",
            },
        }
    }
}

#[derive(Serialize)]
pub(crate) struct MessageObject<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    #[serde(serialize_with = "as_list")]
    content: Option<TextBlock<'a>>,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<&'static str>,
    usage: Usage,
}

fn as_list<S: serde::Serializer>(block: &Option<TextBlock<'_>>, s: S) -> Result<S::Ok, S::Error> {
    block.as_slice().serialize(s)
}

#[derive(Serialize)]
struct MessageStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: MessageObject<'a>,
}

#[derive(Serialize)]
struct TextBlock<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

/// In Anthropic's order: the cache split by lifetime nested before `output_tokens`,
/// the service tier last.
#[derive(Serialize)]
struct Usage {
    input_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    cache_creation: CacheCreation,
    output_tokens: u64,
    service_tier: &'static str,
}

#[derive(Serialize)]
struct CacheCreation {
    ephemeral_5m_input_tokens: u64,
    ephemeral_1h_input_tokens: u64,
}

/// Handles `POST /v1/messages` after auth and status faults.
pub(crate) fn create(
    state: &State,
    ctl: &Arc<ConnCtl>,
    body: &Bytes,
    fault: &Fault,
    pacing: Pacing,
) -> Resp {
    let req = match parse(body, true) {
        Ok(req) => req,
        Err(msg) => return response::error(400, &msg),
    };
    let reply = Reply::new(&req.model, req.max_tokens, req.input_tokens, pacing.tokens);
    let snap = state
        .limits
        .consume(reply.input_tokens, u64::from(reply.output_tokens));
    let mut resp = if req.stream {
        stream(&reply, ctl, fault, pacing)
    } else {
        let text = reply.text();
        match serde_json::to_vec(&reply.object(Some(&text))) {
            Ok(json) => response::with_body(
                StatusCode::OK,
                HeaderValue::from_static("application/json"),
                response::body_with_faults(json.into(), fault, ctl),
            ),
            Err(e) => return response::error(500, &format!("mock could not encode reply: {e}")),
        }
    };
    state.limits.write_headers(resp.headers_mut(), snap, None);
    resp
}

fn event(name: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// The SSE events of a reply, in Anthropic's order; built up front so the sending task only
/// has to pace them.
fn events(reply: &Reply<'_>) -> Vec<Bytes> {
    let n = reply.output_tokens;
    let mut out = Vec::with_capacity(n as usize + 6);
    // Written in Anthropic's key order ("type" first): gateways may scan events as text.
    let start = MessageStart {
        kind: "message_start",
        message: reply.object(None),
    };
    let start = serde_json::to_string(&start).unwrap_or_default();
    out.push(event("message_start", &start));
    out.push(event(
        "content_block_start",
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
    ));
    out.push(event("ping", r#"{"type": "ping"}"#));
    for i in 0..n {
        // Token texts are plain ASCII words, so no JSON escaping is needed.
        let delta = format!(
            r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{}"}}}}"#,
            token(i)
        );
        out.push(event("content_block_delta", &delta));
    }
    out.push(event(
        "content_block_stop",
        r#"{"type":"content_block_stop","index":0}"#,
    ));
    let delta = format!(
        r#"{{"type":"message_delta","delta":{{"stop_reason":"{}","stop_sequence":null}},"usage":{{"output_tokens":{n}}}}}"#,
        reply.stop_reason
    );
    out.push(event("message_delta", &delta));
    out.push(event("message_stop", r#"{"type":"message_stop"}"#));
    out
}

const OVERLOADED_EVENT: &str =
    "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";

/// Index of the first delta event in [`events`].
const FIRST_DELTA: usize = 3;

fn stream(reply: &Reply<'_>, ctl: &Arc<ConnCtl>, fault: &Fault, pacing: Pacing) -> Resp {
    let events = events(reply);
    let deltas = FIRST_DELTA..FIRST_DELTA + reply.output_tokens as usize;
    let (mut out, rx) = Sender::new(fault, ctl.clone());
    let cut = fault.cut;
    tokio::spawn(async move {
        if !out.pause(pacing.ttft).await {
            return;
        }
        let total = events.len();
        for (i, ev) in events.into_iter().enumerate() {
            if let Some(cut) = cut {
                if cut_at(cut) == i {
                    finish_cut(out, cut).await;
                    return;
                }
            }
            if i > deltas.start && deltas.contains(&i) && !out.pause(pacing.interval).await {
                return;
            }
            if !out.send(ev).await {
                return;
            }
        }
        if let Some(cut) = cut {
            if cut_at(cut) >= total {
                finish_cut(out, cut).await;
            }
        }
    });
    let mut resp = response::with_body(
        StatusCode::OK,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
        MockBody::Channel { rx, len: None },
    );
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

fn cut_at(cut: Cut) -> usize {
    match cut {
        Cut::StallAfter(n) | Cut::ResetAfter(n) | Cut::ErrorAfter(n) => n,
    }
}

async fn finish_cut(mut out: Sender, cut: Cut) {
    match cut {
        Cut::StallAfter(_) => out.stall().await,
        Cut::ResetAfter(_) => out.reset().await,
        Cut::ErrorAfter(_) => {
            out.send(Bytes::from_static(OVERLOADED_EVENT.as_bytes()))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_counts_system_and_text_blocks_only() {
        let body = br#"{"model":"m","max_tokens":5,"system":"abcd",
            "messages":[{"role":"user","content":"12345678"},
                        {"role":"assistant","content":[{"type":"text","text":"abcd"},
                                                       {"type":"image","source":{"data":"xxxxxxxx"}}]}]}"#;
        let req = parse(body, true).unwrap();
        assert_eq!(req.input_tokens, 4);
        assert_eq!(req.model, "m");
    }

    #[test]
    fn missing_fields_are_named() {
        assert_eq!(
            parse(
                br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
                true
            )
            .err(),
            Some("max_tokens: Field required".to_owned())
        );
        assert!(parse(
            br#"{"model":"m","max_tokens":1,"messages":[{"role":"robot","content":"x"}]}"#,
            true
        )
        .is_err());
        assert!(parse(b"{not json", true).is_err());
    }

    #[test]
    fn reply_is_capped_by_max_tokens() {
        let r = Reply::new("m", 3, 1, 12);
        assert_eq!((r.output_tokens, r.stop_reason), (3, "max_tokens"));
        assert_eq!(r.text(), "tok0 tok1 tok2");
        let streamed: String = (0..3).map(token).collect();
        assert_eq!(streamed, r.text());
    }
}
