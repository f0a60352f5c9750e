//! OpenAI response bodies and stream chunks, built from engine events.

use serde::Serialize;
use serde_json::Map;

use crate::engine::service::{ModelInfo, Usage};
use crate::engine::{Embedding, StopReason, TokenLogprob};
use crate::openai::request::EncodingFormat;
use crate::openai::tools::{ReplyParser, ToolCall};

/// OpenAI's stand-in for a log-probability of minus infinity, which JSON cannot hold.
const NEG_INF_LOGPROB: f32 = -9999.0;

fn finite(logprob: f32) -> f32 {
    if logprob.is_finite() {
        logprob
    } else {
        NEG_INF_LOGPROB
    }
}

/// `stop` for the model's own end and stop strings, `length` for the token limit or a full
/// context.
pub fn finish_reason(stop: &StopReason) -> &'static str {
    match stop {
        StopReason::MaxTokens | StopReason::ContextFull => "length",
        StopReason::EndOfGeneration | StopReason::StopString(_) | StopReason::Cancelled => "stop",
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct UsageBody {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Clone, Serialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

impl From<Usage> for UsageBody {
    fn from(u: Usage) -> Self {
        UsageBody {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: u.cached_tokens,
            },
        }
    }
}

/// What stream chunks say about usage: nothing unless asked, then `null` on every chunk but the
/// last (OpenAI's shape for `stream_options.include_usage`).
fn skip_usage(u: &Option<Option<UsageBody>>) -> bool {
    u.is_none()
}

#[derive(Debug, Clone, Serialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

impl From<&TokenLogprob> for ChatTokenLogprob {
    fn from(t: &TokenLogprob) -> Self {
        ChatTokenLogprob {
            token: t.text.clone(),
            logprob: finite(t.logprob),
            bytes: t.bytes.clone(),
            top_logprobs: t
                .top
                .iter()
                .map(|top| TopLogprob {
                    token: top.text.clone(),
                    logprob: finite(top.logprob),
                    bytes: top.bytes.clone(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    /// `null` when the reply is tool calls.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallBody>,
}

/// A tool call, in a message or (with its `index`) in a stream's delta.
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, Serialize)]
pub struct FunctionCall {
    pub name: String,
    /// JSON text.
    pub arguments: String,
}

impl ToolCallBody {
    /// The calls of a reply; `indexed` for a stream's delta.
    pub fn list(calls: &[ToolCall], indexed: bool) -> Vec<ToolCallBody> {
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| ToolCallBody {
                index: indexed.then_some(i),
                id: c.id.clone(),
                kind: "function",
                function: FunctionCall {
                    name: c.name.clone(),
                    arguments: c.arguments.clone(),
                },
            })
            .collect()
    }
}

/// The end of a streamed chat reply that may call tools: a last delta with the text not yet
/// sent and the calls (none when there is neither), and the finish reason.
pub fn tool_reply_end(reply: &ReplyParser, stop: &StopReason) -> (Option<Delta>, &'static str) {
    let (reply, unsent) = reply.finish();
    let reason = chat_finish_reason(stop, &reply.tool_calls);
    if unsent.is_empty() && reply.tool_calls.is_empty() {
        return (None, reason);
    }
    let delta = Delta {
        content: (!unsent.is_empty()).then_some(unsent),
        tool_calls: (!reply.tool_calls.is_empty())
            .then(|| ToolCallBody::list(&reply.tool_calls, true)),
        ..Delta::default()
    };
    (Some(delta), reason)
}

/// `tool_calls` when the reply called tools, else as [`finish_reason`] says.
pub fn chat_finish_reason(stop: &StopReason, calls: &[ToolCall]) -> &'static str {
    if calls.is_empty() {
        finish_reason(stop)
    } else {
        "tool_calls"
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: &'static str,
    pub choices: Vec<ChatChoice>,
    pub usage: UsageBody,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallBody>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: &'static str,
    pub choices: Vec<ChatChunkChoice>,
    #[serde(skip_serializing_if = "skip_usage")]
    pub usage: Option<Option<UsageBody>>,
}

/// The legacy endpoint's log-probabilities: parallel arrays.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TextLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<Map<String, serde_json::Value>>,
    pub text_offset: Vec<usize>,
}

impl TextLogprobs {
    /// Appends one token, whose text starts at `offsets`' next character of the completion.
    pub fn push(&mut self, t: &TokenLogprob, offsets: &mut TextOffsets) {
        self.tokens.push(t.text.clone());
        self.token_logprobs.push(finite(t.logprob));
        let mut top = Map::new();
        for alt in &t.top {
            // Two ids can share a text; the first (most likely) one names it.
            top.entry(alt.text.clone())
                .or_insert_with(|| serde_json::Value::from(finite(alt.logprob)));
        }
        self.top_logprobs.push(top);
        self.text_offset.push(offsets.push(&t.bytes));
    }
}

/// Where each token of a completion starts in its text, in characters (as a client indexes the
/// string): at the character its first byte belongs to, so every token of a character split
/// across tokens starts at that character.
#[derive(Debug, Default)]
pub struct TextOffsets {
    /// Characters complete so far.
    chars: usize,
    /// Bytes of a character not yet complete.
    pending: Vec<u8>,
}

impl TextOffsets {
    /// The offset of a token of `bytes`, which then count toward the next one's.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let offset = self.chars;
        self.pending.extend_from_slice(bytes);
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    self.chars += s.chars().count();
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    self.chars += String::from_utf8_lossy(&rest[..valid]).chars().count();
                    match e.error_len() {
                        // Bytes that can never be a character are one U+FFFD, as in the text.
                        Some(bad) => {
                            self.chars += 1;
                            rest = &rest[valid + bad..];
                        }
                        None => {
                            rest = &rest[valid..];
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        offset
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TextChoice {
    pub text: String,
    pub index: u32,
    pub logprobs: Option<TextLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// Both the whole `/v1/completions` answer and each of its stream chunks.
#[derive(Debug, Clone, Serialize)]
pub struct TextCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: &'static str,
    pub choices: Vec<TextChoice>,
    #[serde(skip_serializing_if = "skip_usage")]
    pub usage: Option<Option<UsageBody>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// Not in OpenAI's schema; clients ignore it, people reading it learn the limits.
    pub meta: ModelInfo,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

/// A vector as OpenAI writes it: numbers, or base64 of the little-endian f32 bytes.
fn encoded(values: &[f32], format: EncodingFormat) -> serde_json::Value {
    match format {
        EncodingFormat::Float => values.iter().copied().collect(),
        EncodingFormat::Base64 => {
            use base64::Engine as _;
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            base64::engine::general_purpose::STANDARD
                .encode(bytes)
                .into()
        }
    }
}

/// The body of an embeddings response: a vector per input, in order, and the tokens they took.
pub fn embeddings_body(
    embeddings: &[Embedding],
    format: EncodingFormat,
    model: &str,
) -> serde_json::Value {
    let n_tokens: usize = embeddings.iter().map(|e| e.n_tokens).sum();
    let data: Vec<serde_json::Value> = embeddings
        .iter()
        .enumerate()
        .map(|(index, e)| {
            serde_json::json!({
                "object": "embedding",
                "index": index,
                "embedding": encoded(&e.values, format),
            })
        })
        .collect();
    serde_json::json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::TopToken;

    #[test]
    fn usage_and_chunks_have_openai_shape() {
        let usage = UsageBody::from(Usage {
            prompt_tokens: 5,
            completion_tokens: 3,
            cached_tokens: 2,
        });
        let v = serde_json::to_value(&usage).unwrap();
        assert_eq!(v["total_tokens"], 8);
        assert_eq!(v["prompt_tokens_details"]["cached_tokens"], 2);
        let chunk = |usage| ChatChunk {
            id: "x".into(),
            object: "chat.completion.chunk",
            created: 0,
            model: "m".into(),
            system_fingerprint: "f",
            choices: vec![],
            usage,
        };
        let v = serde_json::to_value(chunk(None)).unwrap();
        assert!(v.get("usage").is_none());
        let v = serde_json::to_value(chunk(Some(None))).unwrap();
        assert!(v["usage"].is_null() && v.get("usage").is_some());
        let t = TokenLogprob {
            id: 1,
            text: "\u{fffd}".into(),
            bytes: vec![0xf0, 0x9f],
            logprob: f32::NEG_INFINITY,
            top: vec![TopToken {
                id: 1,
                text: "a".into(),
                bytes: vec![97],
                logprob: -0.5,
            }],
        };
        let v = serde_json::to_value(ChatTokenLogprob::from(&t)).unwrap();
        assert_eq!(v["logprob"], -9999.0);
        assert_eq!(v["bytes"], serde_json::json!([0xf0, 0x9f]));
        assert_eq!(v["top_logprobs"][0]["bytes"], serde_json::json!([97]));
    }

    #[test]
    fn text_offsets_count_characters_and_split_ones_start_where_they_begin() {
        let mut o = TextOffsets::default();
        // " P", "izza", "!", then 🍕 (f0 9f 8d 95) in three tokens, then "é" and a stray byte.
        let tokens: [&[u8]; 9] = [
            b" P",
            b"izza",
            b"!",
            &[0x20, 0xf0],
            &[0x9f, 0x8d],
            &[0x95],
            "é".as_bytes(),
            &[0xff],
            b"x",
        ];
        let offsets: Vec<usize> = tokens.iter().map(|t| o.push(t)).collect();
        assert_eq!(offsets, vec![0, 2, 6, 7, 8, 8, 9, 10, 11]);
        let text = String::from_utf8_lossy(&tokens.concat()).into_owned();
        assert_eq!(text.chars().count(), 12);
        assert_eq!(text.chars().nth(8), Some('🍕'));
    }
}
