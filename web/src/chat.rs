//! OpenAI-shaped generation for JavaScript: a request body is checked by the same code the HTTP
//! server uses, submitted to the engine, and its events come back as the chunks an OpenAI stream
//! carries (`chat.completion.chunk` or `text_completion`). Nothing here touches the browser, so it
//! is tested natively.

use serde_json::{Map, Value, json};
use sovereign::engine::StopReason;
use sovereign::engine::service::{Canceller, EngineHandle, Event, RequestStream, Timings, Usage};
use sovereign::openai::ApiError;
use sovereign::openai::request;
pub use sovereign::openai::request::Endpoint;
use sovereign::openai::response::{
    ChatChunk, ChatChunkChoice, ChatLogprobs, ChatTokenLogprob, Delta, TextChoice, TextCompletion,
    TextLogprobs, TextOffsets, UsageBody, finish_reason, tool_reply_end,
};
use sovereign::openai::tools::ReplyParser;

const FINGERPRINT: &str = concat!("sovereign-web-", env!("CARGO_PKG_VERSION"));

/// One request in flight.
pub struct Generation {
    events: RequestStream,
    endpoint: Endpoint,
    id: String,
    created: u64,
    model: String,
    role_sent: bool,
    /// Where the next token starts in the text (the legacy logprobs' `text_offset`).
    offsets: TextOffsets,
    /// Reads a reply that may call tools.
    reply: Option<ReplyParser>,
    done: bool,
}

fn unix_now() -> u64 {
    web_time::SystemTime::now()
        .duration_since(web_time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Checks `body` (a JSON object as OpenAI's API takes it) and submits it. `model` may be left
/// out: a page holds one model. Naming another one is an error, as it is on the server.
pub fn submit(
    engine: &EngineHandle,
    body: &str,
    endpoint: Endpoint,
    id: String,
) -> Result<Generation, ApiError> {
    let mut value: Value = serde_json::from_str(body).map_err(|e| {
        ApiError::bad_request(format!("The request is not valid JSON: {e}"))
            .with_code("invalid_json")
    })?;
    let loaded = engine.model_info().name.clone();
    if let Value::Object(map) = &mut value {
        map.entry("model")
            .or_insert_with(|| Value::String(loaded.clone()));
    }
    let parsed = request::parse(endpoint, &value)?;
    if parsed.model != loaded {
        return Err(ApiError::model_not_found(&parsed.model));
    }
    let constraint_param = parsed.constraint_param;
    let reply = parsed.tools.as_ref().map(ReplyParser::new);
    let events = engine
        .submit(parsed.request)
        .map_err(|e| ApiError::from_submit(e, endpoint.prompt_param(), constraint_param))?;
    Ok(Generation {
        events,
        endpoint,
        id,
        created: unix_now(),
        model: loaded,
        role_sent: false,
        offsets: TextOffsets::default(),
        reply,
        done: false,
    })
}

/// What the last chunk tells beyond OpenAI's fields (under `sovereign`).
fn timing_fields(usage: &Usage, t: &Timings) -> Value {
    let secs = |d: std::time::Duration| d.as_secs_f64();
    let ttft = t.time_to_first_token;
    let computed = usage.prompt_tokens.saturating_sub(usage.cached_tokens);
    let prefill = ttft.map(|f| secs(f.saturating_sub(t.queued)));
    let decode = ttft.map(|f| secs(t.total.saturating_sub(f)));
    let rate = |n: usize, s: Option<f64>| match s {
        Some(s) if s > 0.0 && n > 0 => Value::from(n as f64 / s),
        _ => Value::Null,
    };
    json!({
        "queued_ms": secs(t.queued) * 1e3,
        "time_to_first_token_ms": ttft.map(|d| secs(d) * 1e3),
        "total_ms": secs(t.total) * 1e3,
        "prompt_tokens_per_second": rate(computed, prefill),
        // The first token comes out of the prefill; the rest are decode steps.
        "decode_tokens_per_second": rate(usage.completion_tokens.saturating_sub(1), decode),
    })
}

impl Generation {
    pub fn canceller(&self) -> Canceller {
        self.events.canceller()
    }

    fn chunk(
        &self,
        delta: Option<Delta>,
        text: Option<String>,
        finish: Option<&'static str>,
    ) -> Value {
        let chunk = match self.endpoint {
            Endpoint::Chat => serde_json::to_value(ChatChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk",
                created: self.created,
                model: self.model.clone(),
                system_fingerprint: FINGERPRINT,
                choices: vec![ChatChunkChoice {
                    index: 0,
                    delta: delta.unwrap_or_default(),
                    logprobs: None,
                    finish_reason: finish,
                }],
                usage: None,
            }),
            Endpoint::Completions => serde_json::to_value(TextCompletion {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.model.clone(),
                system_fingerprint: FINGERPRINT,
                choices: vec![TextChoice {
                    text: text.unwrap_or_default(),
                    index: 0,
                    logprobs: None,
                    finish_reason: finish,
                }],
                usage: None,
            }),
        };
        chunk.unwrap_or(Value::Null)
    }

    /// The next chunks to hand over (several when the first delta brings the role chunk), or
    /// `None` once the last chunk (with `finish_reason` and `usage`) went out.
    pub async fn next_chunks(&mut self) -> Option<Result<Vec<Value>, ApiError>> {
        loop {
            if self.done {
                return None;
            }
            let event = match self.events.next().await {
                Some(e) => e,
                None => {
                    self.done = true;
                    return Some(Err(ApiError::internal("The engine stopped.")));
                }
            };
            match event {
                Event::Started { .. } => {}
                Event::Delta {
                    token,
                    text,
                    logprob,
                } => {
                    // A token whose text is held back (it may start a stop string) still
                    // reports its id, so callers can follow the tokens one by one.
                    let mut out = Vec::new();
                    if self.endpoint == Endpoint::Chat && !self.role_sent {
                        self.role_sent = true;
                        out.push(self.chunk(
                            Some(Delta {
                                role: Some("assistant"),
                                content: Some(String::new()),
                                tool_calls: None,
                            }),
                            None,
                            None,
                        ));
                    }
                    // A reply that may call tools streams the text of a direct answer only.
                    let text = match &mut self.reply {
                        Some(reply) => reply.push(&text),
                        None => text,
                    };
                    let mut chunk = match self.endpoint {
                        Endpoint::Chat => self.chunk(
                            Some(Delta {
                                content: Some(text),
                                ..Delta::default()
                            }),
                            None,
                            None,
                        ),
                        Endpoint::Completions => self.chunk(None, Some(text), None),
                    };
                    if let Some(lp) = &logprob {
                        let value = match self.endpoint {
                            Endpoint::Chat => serde_json::to_value(ChatLogprobs {
                                content: vec![ChatTokenLogprob::from(lp)],
                            }),
                            Endpoint::Completions => {
                                let mut l = TextLogprobs::default();
                                l.push(lp, &mut self.offsets);
                                serde_json::to_value(l)
                            }
                        };
                        chunk["choices"][0]["logprobs"] = value.unwrap_or(Value::Null);
                    }
                    chunk["sovereign"] =
                        json!({ "token_ids": token.into_iter().collect::<Vec<_>>() });
                    out.push(chunk);
                    return Some(Ok(out));
                }
                Event::Finished {
                    stop,
                    usage,
                    timings,
                } => {
                    self.done = true;
                    let mut out = Vec::new();
                    let mut reason = finish_reason(&stop);
                    if let Some(reply) = &self.reply {
                        let (delta, tool_reason) = tool_reply_end(reply, &stop);
                        if let Some(delta) = delta {
                            out.push(self.chunk(Some(delta), None, None));
                        }
                        reason = tool_reason;
                    }
                    let mut chunk = self.chunk(None, None, Some(reason));
                    chunk["usage"] =
                        serde_json::to_value(UsageBody::from(usage)).unwrap_or_default();
                    let mut ext = Map::new();
                    ext.insert("timings".into(), timing_fields(&usage, &timings));
                    ext.insert(
                        "cancelled".into(),
                        Value::Bool(stop == StopReason::Cancelled),
                    );
                    chunk["sovereign"] = Value::Object(ext);
                    out.push(chunk);
                    return Some(Ok(out));
                }
                Event::Failed(message) => {
                    self.done = true;
                    return Some(Err(ApiError::internal(format!(
                        "Generation failed: {message}"
                    ))));
                }
            }
        }
    }
}
