//! The endpoints. Each one translates JSON to an engine [`Request`](crate::engine::service::Request)
//! and engine [`Event`]s back to JSON; the engine does the rest.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{Method, Uri, header};
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::error::ApiError;
use super::guard::JsonBody;
use super::{AppState, metrics};
use crate::engine::service::{Event, RequestStream, Timings, Usage};
use crate::engine::{EngineError, StopReason, TokenLogprob};
use crate::openai::request::{self, Endpoint, Parsed};
use crate::openai::response::*;
use crate::openai::tools::ReplyParser;

const FINGERPRINT: &str = concat!("sovereign-", env!("CARGO_PKG_VERSION"));

/// How often an idle stream (queued, or prefilling a long prompt) sends a comment line, so
/// proxies keep it open and a vanished client is noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A response id unique within this process and unlikely to repeat across restarts.
fn response_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{:x}{nanos:08x}{n:06x}", unix_now())
}

/// What every response and chunk of one request repeats.
#[derive(Debug, Clone)]
struct Meta {
    id: String,
    created: u64,
    model: String,
    logprobs: bool,
}

pub async fn chat_completions(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let parsed = request::chat(&body)?;
    generate(state, parsed, Endpoint::Chat).await
}

pub async fn completions(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let parsed = request::completion(&body)?;
    generate(state, parsed, Endpoint::Completions).await
}

async fn generate(
    state: AppState,
    parsed: Parsed,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    if parsed.model != state.config.model_id {
        return Err(ApiError::model_not_found(&parsed.model));
    }
    let meta = Meta {
        id: response_id(match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completions => "cmpl",
        }),
        created: unix_now(),
        model: state.config.model_id.clone(),
        logprobs: parsed.request.logprobs.is_some(),
    };
    // Templating and tokenizing a long prompt takes a while: keep it off the async workers.
    let engine = state.engine.clone();
    let constraint_param = parsed.constraint_param;
    let reply = parsed.tools.as_ref().map(ReplyParser::new);
    let request = parsed.request;
    let events = tokio::task::spawn_blocking(move || engine.submit(request))
        .await
        .map_err(|e| ApiError::internal(format!("the request was lost: {e}")))?
        .map_err(|e| ApiError::from_submit(e, endpoint.prompt_param(), constraint_param))?;
    if parsed.stream {
        Ok(stream(events, meta, endpoint, parsed.include_usage, reply).into_response())
    } else {
        let done = collect(events, &meta.id).await?;
        Ok(match endpoint {
            Endpoint::Chat => Json(chat_body(done, meta, reply)).into_response(),
            Endpoint::Completions => Json(text_body(done, meta)).into_response(),
        })
    }
}

struct Collected {
    text: String,
    logprobs: Vec<TokenLogprob>,
    stop: StopReason,
    usage: Usage,
}

pub(super) fn log_finished(id: &str, stop: &StopReason, usage: &Usage, timings: &Timings) {
    tracing::info!(
        id,
        prompt_tokens = usage.prompt_tokens,
        cached_tokens = usage.cached_tokens,
        completion_tokens = usage.completion_tokens,
        queued_ms = timings.queued.as_millis() as u64,
        ttft_ms = timings.time_to_first_token.map(|t| t.as_millis() as u64),
        total_ms = timings.total.as_millis() as u64,
        stop = ?stop,
        "finished"
    );
}

/// Runs a request to its end. Dropping this future (the client went away) drops the stream,
/// which cancels the request.
async fn collect(mut events: RequestStream, id: &str) -> Result<Collected, ApiError> {
    let mut text = String::new();
    let mut logprobs = Vec::new();
    loop {
        match events.next().await {
            Some(Event::Started { .. }) => {}
            Some(Event::Delta {
                text: t, logprob, ..
            }) => {
                text.push_str(&t);
                logprobs.extend(logprob);
            }
            Some(Event::Finished {
                stop,
                usage,
                timings,
            }) => {
                log_finished(id, &stop, &usage, &timings);
                return Ok(Collected {
                    text,
                    logprobs,
                    stop,
                    usage,
                });
            }
            Some(Event::Failed(message)) => {
                tracing::error!(id, %message, "generation failed");
                return Err(ApiError::internal(format!("Generation failed: {message}")));
            }
            None => return Err(ApiError::internal("The engine stopped.")),
        }
    }
}

fn chat_body(done: Collected, meta: Meta, reply: Option<ReplyParser>) -> ChatCompletion {
    let logprobs = meta.logprobs.then(|| ChatLogprobs {
        content: done.logprobs.iter().map(ChatTokenLogprob::from).collect(),
    });
    let (content, calls) = match reply {
        Some(mut reply) => {
            reply.push(&done.text);
            let (reply, _) = reply.finish();
            (reply.content, reply.tool_calls)
        }
        None => (Some(done.text), Vec::new()),
    };
    ChatCompletion {
        id: meta.id,
        object: "chat.completion",
        created: meta.created,
        model: meta.model,
        system_fingerprint: FINGERPRINT,
        choices: vec![ChatChoice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content,
                tool_calls: ToolCallBody::list(&calls, false),
            },
            logprobs,
            finish_reason: chat_finish_reason(&done.stop, &calls),
        }],
        usage: done.usage.into(),
    }
}

fn text_body(done: Collected, meta: Meta) -> TextCompletion {
    let logprobs = meta.logprobs.then(|| {
        let mut lp = TextLogprobs::default();
        let mut offsets = TextOffsets::default();
        for t in &done.logprobs {
            lp.push(t, &mut offsets);
        }
        lp
    });
    TextCompletion {
        id: meta.id,
        object: "text_completion",
        created: meta.created,
        model: meta.model,
        system_fingerprint: FINGERPRINT,
        choices: vec![TextChoice {
            text: done.text,
            index: 0,
            logprobs,
            finish_reason: Some(finish_reason(&done.stop)),
        }],
        usage: Some(Some(done.usage.into())),
    }
}

/// One request's server-sent events. The response body owns the [`RequestStream`]: when the
/// client disconnects, hyper drops the body and with it the stream, which cancels generation.
struct Streamer {
    events: RequestStream,
    meta: Meta,
    endpoint: Endpoint,
    include_usage: bool,
    role_sent: bool,
    /// Where the next token starts in the completion (the legacy logprobs' `text_offset`).
    offsets: TextOffsets,
    /// Reads a reply that may call tools.
    reply: Option<ReplyParser>,
    done: bool,
}

fn data<T: serde::Serialize>(value: &T) -> sse::Event {
    match serde_json::to_string(value) {
        Ok(json) => sse::Event::default().data(json),
        Err(e) => sse::Event::default()
            .data(ApiError::internal(format!("cannot encode a chunk: {e}")).body()),
    }
}

impl Streamer {
    fn usage_field(&self, usage: Option<Usage>) -> Option<Option<UsageBody>> {
        self.include_usage.then(|| usage.map(UsageBody::from))
    }

    fn chat_chunk(
        &self,
        delta: Delta,
        logprobs: Option<ChatLogprobs>,
        finish: Option<&'static str>,
    ) -> sse::Event {
        data(&ChatChunk {
            id: self.meta.id.clone(),
            object: "chat.completion.chunk",
            created: self.meta.created,
            model: self.meta.model.clone(),
            system_fingerprint: FINGERPRINT,
            choices: vec![ChatChunkChoice {
                index: 0,
                delta,
                logprobs,
                finish_reason: finish,
            }],
            usage: self.usage_field(None),
        })
    }

    fn text_chunk(
        &self,
        text: String,
        logprobs: Option<TextLogprobs>,
        finish: Option<&'static str>,
    ) -> sse::Event {
        data(&TextCompletion {
            id: self.meta.id.clone(),
            object: "text_completion",
            created: self.meta.created,
            model: self.meta.model.clone(),
            system_fingerprint: FINGERPRINT,
            choices: vec![TextChoice {
                text,
                index: 0,
                logprobs,
                finish_reason: finish,
            }],
            usage: self.usage_field(None),
        })
    }

    /// OpenAI's first chat chunk carries the role alone.
    fn role_chunk(&mut self, out: &mut Vec<sse::Event>) {
        if self.endpoint == Endpoint::Chat && !self.role_sent {
            self.role_sent = true;
            out.push(self.chat_chunk(
                Delta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                    tool_calls: None,
                },
                None,
                None,
            ));
        }
    }

    fn delta(&mut self, text: String, logprob: Option<TokenLogprob>, out: &mut Vec<sse::Event>) {
        // A reply that may call tools streams the text of a direct answer only.
        let text = match &mut self.reply {
            Some(reply) => reply.push(&text),
            None => text,
        };
        // A token whose text is held back (it may start a stop string) has nothing to say unless
        // its log-probability was asked for (the engine reports them only then).
        if text.is_empty() && logprob.is_none() {
            return;
        }
        self.role_chunk(out);
        let event = match self.endpoint {
            Endpoint::Chat => {
                let logprobs = logprob.map(|t| ChatLogprobs {
                    content: vec![ChatTokenLogprob::from(&t)],
                });
                self.chat_chunk(
                    Delta {
                        content: Some(text),
                        ..Delta::default()
                    },
                    logprobs,
                    None,
                )
            }
            Endpoint::Completions => {
                let logprobs = logprob.map(|t| {
                    let mut lp = TextLogprobs::default();
                    lp.push(&t, &mut self.offsets);
                    lp
                });
                self.text_chunk(text, logprobs, None)
            }
        };
        out.push(event);
    }

    fn finish(&mut self, stop: &StopReason, usage: Usage, out: &mut Vec<sse::Event>) {
        self.role_chunk(out);
        let mut reason = Some(finish_reason(stop));
        if let Some(reply) = &self.reply {
            let (delta, tool_reason) = tool_reply_end(reply, stop);
            if let Some(delta) = delta {
                out.push(self.chat_chunk(delta, None, None));
            }
            reason = Some(tool_reason);
        }
        out.push(match self.endpoint {
            Endpoint::Chat => self.chat_chunk(Delta::default(), None, reason),
            Endpoint::Completions => self.text_chunk(String::new(), None, reason),
        });
        if self.include_usage {
            let usage = Some(Some(UsageBody::from(usage)));
            out.push(match self.endpoint {
                Endpoint::Chat => data(&ChatChunk {
                    id: self.meta.id.clone(),
                    object: "chat.completion.chunk",
                    created: self.meta.created,
                    model: self.meta.model.clone(),
                    system_fingerprint: FINGERPRINT,
                    choices: Vec::new(),
                    usage,
                }),
                Endpoint::Completions => data(&TextCompletion {
                    id: self.meta.id.clone(),
                    object: "text_completion",
                    created: self.meta.created,
                    model: self.meta.model.clone(),
                    system_fingerprint: FINGERPRINT,
                    choices: Vec::new(),
                    usage,
                }),
            });
        }
        out.push(sse::Event::default().data("[DONE]"));
    }

    /// The events for the engine's next event; empty while there is nothing to send.
    async fn step(&mut self) -> Vec<sse::Event> {
        let mut out = Vec::new();
        match self.events.next().await {
            Some(Event::Started { .. }) => {}
            Some(Event::Delta { text, logprob, .. }) => self.delta(text, logprob, &mut out),
            Some(Event::Finished {
                stop,
                usage,
                timings,
            }) => {
                log_finished(&self.meta.id, &stop, &usage, &timings);
                self.finish(&stop, usage, &mut out);
                self.done = true;
            }
            Some(Event::Failed(message)) => {
                tracing::error!(id = %self.meta.id, %message, "generation failed");
                // Headers are gone already: OpenAI reports a late failure as an error event.
                let error = ApiError::internal(format!("Generation failed: {message}"));
                out.push(sse::Event::default().data(error.body()));
                self.done = true;
            }
            None => {
                out.push(
                    sse::Event::default().data(ApiError::internal("The engine stopped.").body()),
                );
                self.done = true;
            }
        }
        out
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        if !self.done {
            tracing::info!(id = %self.meta.id, "client disconnected; cancelling");
        }
    }
}

fn stream(
    events: RequestStream,
    meta: Meta,
    endpoint: Endpoint,
    include_usage: bool,
    reply: Option<ReplyParser>,
) -> impl IntoResponse {
    let streamer = Streamer {
        events,
        meta,
        endpoint,
        include_usage,
        role_sent: false,
        offsets: TextOffsets::default(),
        reply,
        done: false,
    };
    let chunks = futures_util::stream::unfold(streamer, |mut s| async move {
        if s.done {
            return None;
        }
        let events = s.step().await;
        Some((events, s))
    })
    .flat_map(futures_util::stream::iter)
    .map(Ok::<_, Infallible>);
    Sse::new(chunks).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

fn model_card(state: &AppState) -> ModelCard {
    ModelCard {
        id: state.config.model_id.clone(),
        object: "model",
        created: state.started,
        owned_by: "sovereign",
        meta: state.engine.model_info().clone(),
    }
}

pub async fn list_models(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![model_card(&state)],
    })
}

pub async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ModelCard>, ApiError> {
    if id == state.config.model_id {
        Ok(Json(model_card(&state)))
    } else {
        Err(ApiError::model_not_found(&id))
    }
}

/// `POST /tokenize`, as llama.cpp's server answers it: `{"tokens": [ids]}`, or with
/// `with_pieces` `{"tokens": [{"id", "piece"}]}` (a piece that is not whole UTF-8 as its bytes).
pub async fn tokenize(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req = request::tokenize(&body)?;
    let tokenizer = state.engine.tokenizer();
    let ids = tokenizer
        .encode(&req.content, req.add_special)
        .map_err(|e| ApiError::invalid_value("content", e))?;
    let tokens: Vec<serde_json::Value> = if req.with_pieces {
        ids.iter()
            .map(|&id| {
                let bytes = tokenizer.token_bytes(id).unwrap_or_default();
                let piece = if bytes.is_empty() {
                    // A control token: its name, as it was written.
                    serde_json::Value::from(tokenizer.token_text(id).unwrap_or_default())
                } else {
                    match std::str::from_utf8(bytes) {
                        Ok(text) => serde_json::Value::from(text),
                        Err(_) => serde_json::Value::from(bytes.to_vec()),
                    }
                };
                serde_json::json!({"id": id, "piece": piece})
            })
            .collect()
    } else {
        ids.iter().map(|&id| serde_json::Value::from(id)).collect()
    };
    Ok(Json(serde_json::json!({ "tokens": tokens })))
}

/// Runs an embeddings request: the vectors, one per input, and the tokens they took.
pub(super) async fn embed(
    state: &AppState,
    parsed: request::EmbeddingsRequest,
    input_param: &str,
) -> Result<Vec<crate::engine::Embedding>, ApiError> {
    if let Some(model) = &parsed.model
        && *model != state.config.model_id
    {
        return Err(ApiError::model_not_found(model));
    }
    parsed.check_dimensions(state.engine.model_info().n_embd)?;
    let started = std::time::Instant::now();
    let engine = state.engine.clone();
    let request = parsed.request;
    // Tokenizing many long inputs takes a while: keep it off the async workers.
    // The engine names inputs `input`; this endpoint's may be under another key.
    let renamed = |e: crate::Error| match e {
        crate::Error::Engine(EngineError::InvalidParameter { name, message }) => {
            let name = match name.strip_prefix("input") {
                Some(rest) => format!("{input_param}{rest}"),
                None => name,
            };
            EngineError::InvalidParameter { name, message }.into()
        }
        other => other,
    };
    let pending = tokio::task::spawn_blocking(move || engine.embed(request))
        .await
        .map_err(|e| ApiError::internal(format!("the request was lost: {e}")))?
        .map_err(|e| ApiError::from_submit(renamed(e), input_param, input_param))?;
    let embeddings = pending
        .wait()
        .await
        .map_err(|e| ApiError::from_submit(e, input_param, input_param))?;
    tracing::info!(
        inputs = embeddings.len(),
        tokens = embeddings.iter().map(|e| e.n_tokens).sum::<usize>(),
        ms = started.elapsed().as_secs_f64() * 1e3,
        "embedded"
    );
    Ok(embeddings)
}

/// `POST /v1/embeddings`: a unit-length vector per input, pooled as the model's file (or
/// `--pooling`) says.
pub async fn embeddings(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    let parsed = request::embeddings(&body, "input")?;
    let format = parsed.encoding_format;
    let embeddings = embed(&state, parsed, "input").await?;
    Ok(Json(embeddings_body(
        &embeddings,
        format,
        &state.config.model_id,
    )))
}

/// `POST /embedding` (and `/embeddings`), as llama.cpp's server answers it: inputs under
/// `content` (or `input`), and per input `{"index", "embedding": [vector]}` (one row: the
/// pooled one).
pub async fn llama_embedding(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key = if body.get("content").is_none() && body.get("input").is_some() {
        "input"
    } else {
        "content"
    };
    let parsed = request::embeddings(&body, key)?;
    let embeddings = embed(&state, parsed, key).await?;
    Ok(Json(
        embeddings
            .iter()
            .enumerate()
            .map(|(index, e)| serde_json::json!({"index": index, "embedding": [e.values]}))
            .collect(),
    ))
}

/// `POST /detokenize`, as llama.cpp's server answers it: `{"content": text}`.
pub async fn detokenize(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ids = request::detokenize(&body)?;
    let content = state
        .engine
        .tokenizer()
        .decode(&ids)
        .map_err(|e| ApiError::invalid_value("tokens", e))?;
    Ok(Json(serde_json::json!({ "content": content })))
}

/// `POST /apply-template`, as llama.cpp's server answers it: the prompt a chat request's
/// messages (and tools) become through the model's chat template, `{"prompt": text}`.
pub async fn apply_template(
    State(state): State<AppState>,
    JsonBody(mut body): JsonBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    if let serde_json::Value::Object(map) = &mut body {
        map.entry("model")
            .or_insert_with(|| state.config.model_id.clone().into());
    }
    let parsed = request::chat(&body)?;
    let crate::engine::service::Prompt::Chat(messages) = &parsed.request.prompt else {
        return Err(ApiError::internal("a chat request without messages"));
    };
    let prompt = state
        .engine
        .tokenizer()
        .apply_chat_template(messages, true)
        .map_err(|e| ApiError::invalid_value("messages", e))?;
    Ok(Json(serde_json::json!({ "prompt": prompt })))
}

pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let text = metrics::render(
        &state.engine.metrics(),
        &state.http,
        state.engine.model_info(),
        &state.config.model_id,
        env!("CARGO_PKG_VERSION"),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("Unknown request URL: {method} {}.", uri.path()))
        .with_code("unknown_url")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}
