//! Ollama's API over the same engine, for the clients and tools that speak it: `POST /api/chat`
//! and `POST /api/generate` (streaming newline-delimited JSON by default, as Ollama does),
//! `POST /api/embed` and `/api/embeddings`, `GET /api/tags`, `POST /api/show`, `GET /api/ps`
//! and `GET /api/version`.
//!
//! A request is rewritten into the OpenAI request it means and checked by the same code
//! (`options` become sampling fields, `format` a `response_format`, tools and their results the
//! OpenAI shapes), so both APIs behave alike. Errors are Ollama's `{"error": "..."}`.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::guard::JsonBody;
use super::{AppState, handlers};
use crate::engine::service::{
    EmbedRequest, EngineHandle, Event, Prompt, Request, RequestStream, Timings, Usage,
};
use crate::engine::{Normalize, StopReason, fit_conversation};
use crate::openai::request::{self, Endpoint};
use crate::openai::tools::{self, Reply, ReplyParser, ToolCall};

/// How long a stream waits for a line before it sends an empty one.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// An error in Ollama's shape, with the status the OpenAI error would have.
pub struct OllamaError(ApiError);

impl From<ApiError> for OllamaError {
    fn from(e: ApiError) -> Self {
        OllamaError(e)
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::BAD_REQUEST);
        (status, Json(json!({ "error": self.0.message }))).into_response()
    }
}

/// Ollama's timestamps: RFC 3339 in UTC with nanoseconds.
fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}.{:09}Z",
        crate::tokenizer::chat::strftime("%Y-%m-%dT%H:%M:%S", now.as_secs()),
        now.subsec_nanos()
    )
}

/// `model` as Ollama names it: the served model, with or without the `:latest` tag.
fn check_model(state: &AppState, body: &Value) -> Result<(), ApiError> {
    let id = &state.config.model_id;
    match body.get("model") {
        Some(Value::String(m)) if m == id || m.strip_suffix(":latest") == Some(id) => Ok(()),
        Some(Value::String(m)) => Err(ApiError::model_not_found(m)),
        Some(_) => Err(ApiError::invalid_type("model", "a string")),
        None => Err(ApiError::missing("model")),
    }
}

/// Ollama's `options` and `format` as OpenAI request fields, into `out`.
fn options_and_format(body: &Value, out: &mut Map<String, Value>) -> Result<(), ApiError> {
    match body.get("options") {
        None | Some(Value::Null) => {}
        Some(Value::Object(options)) => {
            for (key, value) in options {
                match key.as_str() {
                    _ if value.is_null() => {}
                    _ if super::llama_cpp::sampling_option(key, value, out) => {}
                    // -1 (the default) runs to the end, -2 until the context is full.
                    "num_predict" => match value.as_i64() {
                        Some(n) if n > 0 => {
                            out.insert("max_tokens".into(), value.clone());
                        }
                        Some(_) => {}
                        None => {
                            return Err(ApiError::invalid_type(
                                "options.num_predict",
                                "an integer",
                            ));
                        }
                    },
                    // How Ollama would load or run the model (context, threads, GPU layers):
                    // fixed when this server loaded it.
                    _ => {}
                }
            }
        }
        Some(_) => return Err(ApiError::invalid_type("options", "an object")),
    }
    match body.get("format") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) if s == "json" => {
            out.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some(schema @ Value::Object(_)) => {
            out.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": "format", "schema": schema}}),
            );
        }
        Some(_) => {
            return Err(ApiError::invalid_value(
                "format",
                "\"json\" or a JSON schema.",
            ));
        }
    }
    Ok(())
}

/// Refuses `key` of `fields` when it holds anything (not null, false, "" or []).
fn unsupported_if_set(fields: &Map<String, Value>, key: &str, why: &str) -> Result<(), ApiError> {
    let set = match fields.get(key) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    };
    if set {
        return Err(ApiError::unsupported(key, why));
    }
    Ok(())
}

/// Ollama's chat messages as OpenAI's. Calls keep the ids a client gave them and get one
/// otherwise; a result names its call by `tool_call_id`, else answers the first call not yet
/// answered of its `tool_name` (or of any tool).
fn chat_messages(messages: &Value) -> Result<Vec<Value>, ApiError> {
    let Value::Array(messages) = messages else {
        return Err(ApiError::invalid_type("messages", "an array"));
    };
    let mut calls: Vec<(String, String, bool)> = Vec::new();
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(ApiError::invalid_type(
                &format!("messages[{i}]"),
                "an object",
            ));
        };
        unsupported_if_set(m, "images", "this server reads text only.")?;
        let mut o = Map::new();
        for key in ["role", "content"] {
            if let Some(v) = m.get(key) {
                o.insert(key.into(), v.clone());
            }
        }
        match m.get("role").and_then(Value::as_str) {
            Some("assistant") => {
                if let Some(Value::Array(tool_calls)) = m.get("tool_calls") {
                    let mut list = Vec::new();
                    for c in tool_calls {
                        let name = c["function"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string();
                        let arguments = match &c["function"]["arguments"] {
                            Value::String(s) => s.clone(),
                            Value::Null => "{}".into(),
                            other => other.to_string(),
                        };
                        let id = c["id"]
                            .as_str()
                            .filter(|id| !id.is_empty() && !calls.iter().any(|(c, _, _)| c == id))
                            .map_or_else(|| format!("call_{}", calls.len()), str::to_string);
                        calls.push((id.clone(), name.clone(), false));
                        list.push(json!({"id": id, "type": "function",
                            "function": {"name": name, "arguments": arguments}}));
                    }
                    o.insert("tool_calls".into(), Value::Array(list));
                }
            }
            Some("tool") => {
                let name = m
                    .get("tool_name")
                    .or_else(|| m.get("name"))
                    .and_then(Value::as_str);
                let by_id = m.get("tool_call_id").and_then(Value::as_str);
                let call = match by_id {
                    Some(id) => calls.iter_mut().find(|(c, _, _)| c == id),
                    None => calls
                        .iter_mut()
                        .find(|(_, n, answered)| !answered && name.is_none_or(|name| name == n)),
                };
                match call {
                    Some((id, _, answered)) => {
                        *answered = true;
                        o.insert("tool_call_id".into(), Value::String(id.clone()));
                    }
                    // Ollama takes a result that answers no call of the conversation; it goes
                    // in as the user's, in the format results take.
                    None => {
                        let content = m.get("content").and_then(Value::as_str).unwrap_or_default();
                        let result = tools::result_message(name.unwrap_or("tool"), content);
                        o.insert("role".into(), "user".into());
                        o.insert("content".into(), result.content.into());
                    }
                }
            }
            _ => {}
        }
        out.push(Value::Object(o));
    }
    Ok(out)
}

/// `POST /api/chat`.
pub async fn chat(
    State(state): State<AppState>,
    body: Result<JsonBody, ApiError>,
) -> Result<Response, OllamaError> {
    let JsonBody(body) = body?;
    check_model(&state, &body)?;
    let mut openai = Map::new();
    openai.insert("model".into(), state.config.model_id.clone().into());
    let messages = match body.get("messages") {
        None | Some(Value::Null) => Vec::new(),
        Some(m) => chat_messages(m)?,
    };
    if messages.is_empty() {
        // Ollama's way to load a model: answer at once, generate nothing.
        return Ok(Json(
            json!({"model": state.config.model_id, "created_at": timestamp(),
            "message": {"role": "assistant", "content": ""},
            "done": true, "done_reason": "load"}),
        )
        .into_response());
    }
    openai.insert("messages".into(), Value::Array(messages));
    // Ollama's clients send `"tools": []` when there are none.
    if let Some(tools) = body
        .get("tools")
        .filter(|t| !t.is_null() && t.as_array().is_none_or(|a| !a.is_empty()))
    {
        openai.insert("tools".into(), tools.clone());
        // Ollama puts no limit on the calls of one reply.
        openai.insert("parallel_tool_calls".into(), true.into());
    }
    options_and_format(&body, &mut openai)?;
    let stream = stream_flag(&body)?;
    run(
        state,
        Value::Object(openai),
        Endpoint::Chat,
        Api::Chat,
        stream,
    )
    .await
}

/// `POST /api/generate`: the prompt through the chat template (with `system`), or as it is
/// with `raw`.
pub async fn generate(
    State(state): State<AppState>,
    body: Result<JsonBody, ApiError>,
) -> Result<Response, OllamaError> {
    let JsonBody(body) = body?;
    check_model(&state, &body)?;
    let no_fields = Map::new();
    let fields = body.as_object().unwrap_or(&no_fields);
    unsupported_if_set(fields, "images", "this server reads text only.")?;
    unsupported_if_set(fields, "suffix", "this server does not fill in the middle.")?;
    unsupported_if_set(fields, "template", "the model's own chat template is used.")?;
    unsupported_if_set(
        fields,
        "context",
        "continuing from returned context is not supported; send the conversation to /api/chat.",
    )?;
    let prompt = match body.get("prompt") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(p)) => p.clone(),
        Some(_) => return Err(ApiError::invalid_type("prompt", "a string").into()),
    };
    let stream = stream_flag(&body)?;
    if prompt.is_empty() {
        // Ollama's way to load a model: answer at once, generate nothing.
        let done = json!({"model": state.config.model_id, "created_at": timestamp(),
            "response": "", "done": true, "done_reason": "load"});
        return Ok(Json(done).into_response());
    }
    let raw = body.get("raw").and_then(Value::as_bool).unwrap_or(false);
    let mut openai = Map::new();
    openai.insert("model".into(), state.config.model_id.clone().into());
    let endpoint = if raw {
        openai.insert("prompt".into(), Value::String(prompt));
        Endpoint::Completions
    } else {
        let mut messages = Vec::new();
        if let Some(system) = body
            .get("system")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": prompt}));
        openai.insert("messages".into(), Value::Array(messages));
        Endpoint::Chat
    };
    options_and_format(&body, &mut openai)?;
    run(
        state,
        Value::Object(openai),
        endpoint,
        Api::Generate,
        stream,
    )
    .await
}

fn stream_flag(body: &Value) -> Result<bool, ApiError> {
    match body.get("stream") {
        None | Some(Value::Null) => Ok(true),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid_type("stream", "a boolean")),
    }
}

/// Which of Ollama's endpoints answers: its text goes in `message` or in `response`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Generate,
}

/// What one request's lines repeat, and how its text is keyed.
struct Shape {
    model: String,
    api: Api,
}

impl Shape {
    fn line(&self, text: &str, calls: &[ToolCall], done: bool) -> Map<String, Value> {
        let mut o = Map::new();
        o.insert("model".into(), self.model.clone().into());
        o.insert("created_at".into(), timestamp().into());
        match self.api {
            Api::Chat => {
                let mut message = json!({"role": "assistant", "content": text});
                if !calls.is_empty() {
                    message["tool_calls"] = calls
                        .iter()
                        .map(|c| {
                            // Ollama's clients take arguments as an object only.
                            let arguments = serde_json::from_str::<Value>(&c.arguments)
                                .ok()
                                .filter(Value::is_object)
                                .unwrap_or_else(|| json!({}));
                            json!({"function": {"name": c.name, "arguments": arguments}})
                        })
                        .collect();
                }
                o.insert("message".into(), message);
            }
            Api::Generate => {
                o.insert("response".into(), text.into());
            }
        }
        o.insert("done".into(), done.into());
        o
    }

    /// The last line: why it stopped and the counts and durations (nanoseconds).
    fn done(&self, text: &str, stop: &StopReason, u: &Usage, t: &Timings) -> Value {
        let mut o = self.line(text, &[], true);
        let reason = match stop {
            StopReason::MaxTokens | StopReason::ContextFull => "length",
            _ => "stop",
        };
        let ns = |d: Duration| d.as_nanos() as u64;
        let first = t.time_to_first_token.unwrap_or(t.total);
        o.insert("done_reason".into(), reason.into());
        o.insert("total_duration".into(), ns(t.total).into());
        o.insert("load_duration".into(), 0.into());
        o.insert("prompt_eval_count".into(), u.prompt_tokens.into());
        o.insert(
            "prompt_eval_duration".into(),
            ns(first.saturating_sub(t.queued)).into(),
        );
        o.insert("eval_count".into(), u.completion_tokens.into());
        o.insert(
            "eval_duration".into(),
            ns(t.total.saturating_sub(first)).into(),
        );
        Value::Object(o)
    }
}

/// A conversation longer than the context loses its oldest turns (system messages stay), as
/// Ollama's chat does, leaving room for `num_predict` tokens of reply (a quarter of the context
/// without it). One that leaves that room is left whole.
fn fit_to_context(engine: &EngineHandle, req: &mut Request) -> crate::Result<()> {
    let Prompt::Chat(messages) = &req.prompt else {
        return Ok(());
    };
    let tokenizer = engine.tokenizer();
    let n_ctx = engine.model_info().n_ctx as usize;
    let room = req
        .params
        .max_tokens
        .map_or(n_ctx / 4, |n| (n as usize).min(n_ctx / 2));
    let fitted = fit_conversation(messages, n_ctx, room, |m| Ok(tokenizer.encode_chat(m)?))?;
    if fitted.dropped == 0 {
        return Ok(());
    }
    tracing::info!(
        dropped = fitted.dropped,
        tokens = fitted.tokens.len(),
        "conversation cut to the context"
    );
    req.prompt = Prompt::Chat(fitted.messages);
    Ok(())
}

async fn run(
    state: AppState,
    openai: Value,
    endpoint: Endpoint,
    api: Api,
    stream: bool,
) -> Result<Response, OllamaError> {
    let mut parsed = request::parse(endpoint, &openai)?;
    // Ollama generates to the end unless `num_predict` says otherwise (OpenAI's legacy
    // endpoint stops at 16 tokens).
    if openai.get("max_tokens").is_none() {
        parsed.request.params.max_tokens = None;
    }
    let constraint_param = parsed.constraint_param;
    let reply = parsed.tools.as_ref().map(ReplyParser::new);
    let engine = state.engine.clone();
    let mut req = parsed.request;
    let events = tokio::task::spawn_blocking(move || {
        fit_to_context(&engine, &mut req)?;
        engine.submit(req)
    })
    .await
    .map_err(|e| ApiError::internal(format!("the request was lost: {e}")))?
    .map_err(|e| ApiError::from_submit(e, endpoint.prompt_param(), constraint_param))?;
    let shape = Shape {
        model: state.config.model_id.clone(),
        api,
    };
    let lines = Lines {
        events,
        shape,
        reply,
        text: String::new(),
        calls: Vec::new(),
        done: false,
    };
    if stream {
        let body = futures_util::stream::unfold(lines, |mut l| async move {
            if l.done {
                return None;
            }
            // A line now and then while nothing comes (queued, a long prompt, a reply of tool
            // calls), so proxies keep the stream open and a vanished client is noticed.
            let out = match tokio::time::timeout(KEEP_ALIVE, l.next_lines()).await {
                Ok(out) => out,
                Err(_) => vec![Value::Object(l.shape.line("", &[], false))],
            };
            Some((out, l))
        })
        .flat_map(futures_util::stream::iter)
        .map(|line: Value| Ok::<_, Infallible>(Bytes::from(format!("{line}\n"))));
        Ok((
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            Body::from_stream(body),
        )
            .into_response())
    } else {
        let mut lines = lines;
        // Whole: the text gathered into the last line.
        let mut last = None;
        while !lines.done {
            for line in lines.next_lines().await {
                if line.get("error").is_some() {
                    let message = line["error"].as_str().unwrap_or_default().to_string();
                    return Err(ApiError::internal(message).into());
                }
                last = Some(line);
            }
        }
        let mut last = last.unwrap_or(Value::Null);
        let text = std::mem::take(&mut lines.text);
        match api {
            Api::Chat => {
                if let Some(message) = lines.shape.line(&text, &lines.calls, true).get("message") {
                    last["message"] = message.clone();
                }
            }
            Api::Generate => last["response"] = text.into(),
        }
        Ok(Json(last).into_response())
    }
}

/// One request's lines, from its engine events.
struct Lines {
    events: RequestStream,
    shape: Shape,
    reply: Option<ReplyParser>,
    /// Everything sent as text so far (the whole reply, for a request that does not stream).
    text: String,
    /// The reply's tool calls, once it is finished.
    calls: Vec<ToolCall>,
    done: bool,
}

impl Lines {
    async fn next_lines(&mut self) -> Vec<Value> {
        match self.events.next().await {
            Some(Event::Started { .. }) => Vec::new(),
            Some(Event::Delta { text, .. }) => {
                let text = match &mut self.reply {
                    Some(reply) => reply.push(&text),
                    None => text,
                };
                if text.is_empty() {
                    return Vec::new();
                }
                self.text.push_str(&text);
                vec![Value::Object(self.shape.line(&text, &[], false))]
            }
            Some(Event::Finished {
                stop,
                usage,
                timings,
            }) => {
                self.done = true;
                super::handlers::log_finished("ollama", &stop, &usage, &timings);
                let (reply, unsent) = match &self.reply {
                    Some(reply) => reply.finish(),
                    None => (Reply::default(), String::new()),
                };
                self.text.push_str(&unsent);
                // Calls come in a line of their own before the last, as Ollama streams them.
                let mut out = Vec::new();
                if !reply.tool_calls.is_empty() {
                    out.push(Value::Object(self.shape.line("", &reply.tool_calls, false)));
                }
                out.push(self.shape.done(&unsent, &stop, &usage, &timings));
                self.calls = reply.tool_calls;
                out
            }
            Some(Event::Failed(message)) => {
                self.done = true;
                tracing::error!(%message, "generation failed");
                vec![json!({ "error": format!("Generation failed: {message}") })]
            }
            None => {
                self.done = true;
                vec![json!({ "error": "The engine stopped." })]
            }
        }
    }
}

fn details(state: &AppState) -> Value {
    let info = state.engine.model_info();
    json!({"parent_model": "", "format": "gguf", "family": info.arch,
        "families": [info.arch], "parameter_size": "", "quantization_level": ""})
}

/// `GET /api/tags`: the one model this server holds.
pub async fn tags(State(state): State<AppState>) -> Json<Value> {
    let info = state.engine.model_info();
    Json(json!({"models": [{
        "name": state.config.model_id, "model": state.config.model_id,
        "modified_at": timestamp(), "size": info.gpu_bytes, "digest": "",
        "details": details(&state),
    }]}))
}

/// `GET /api/ps`: the model, loaded, with the GPU memory it holds.
pub async fn ps(State(state): State<AppState>) -> Json<Value> {
    let info = state.engine.model_info();
    Json(json!({"models": [{
        "name": state.config.model_id, "model": state.config.model_id,
        "size": info.gpu_bytes, "digest": "", "details": details(&state),
        "expires_at": "9999-12-31T23:59:59Z", "size_vram": info.gpu_bytes,
        "context_length": info.n_ctx,
    }]}))
}

/// `POST /api/show`: the model's details, chat template and what it can do.
pub async fn show(
    State(state): State<AppState>,
    body: Result<JsonBody, ApiError>,
) -> Result<Json<Value>, OllamaError> {
    let JsonBody(mut body) = body?;
    // Older clients name the model `name`.
    if body.get("model").is_none()
        && let Some(name) = body.get("name").cloned()
        && let Value::Object(map) = &mut body
    {
        map.insert("model".into(), name);
    }
    check_model(&state, &body)?;
    let info = state.engine.model_info();
    let template = state.engine.tokenizer().chat_template().unwrap_or_default();
    Ok(Json(json!({
        "modelfile": "", "parameters": "", "template": template,
        "details": details(&state),
        "model_info": {
            "general.architecture": info.arch,
            format!("{}.context_length", info.arch): info.n_ctx,
            format!("{}.vocab_size", info.arch): info.n_vocab,
            format!("{}.embedding_length", info.arch): info.n_embd,
        },
        "capabilities": ["completion", "tools", "embedding"],
        "modified_at": timestamp(),
    })))
}

/// Ollama's `input`/`prompt` of an embeddings request as engine inputs (empty: nothing to
/// embed, which Ollama answers with no vectors).
fn embed_request(
    state: &AppState,
    body: &Value,
    key: &str,
    normalize: Normalize,
) -> Result<Option<request::EmbeddingsRequest>, ApiError> {
    check_model(state, body)?;
    let inputs = match body.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.is_empty() => return Ok(None),
        Some(Value::Array(a)) if a.is_empty() => return Ok(None),
        Some(v) => request::embedding_inputs(v, key)?,
    };
    let truncate = match body.get("truncate") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid_type("truncate", "a boolean")),
    };
    let dimensions = match body.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| ApiError::invalid_type("dimensions", "a positive integer"))?,
        ),
    };
    Ok(Some(request::EmbeddingsRequest {
        model: None,
        request: EmbedRequest {
            inputs,
            pooling: None,
            normalize,
            truncate,
        },
        encoding_format: request::EncodingFormat::Float,
        dimensions,
    }))
}

/// `POST /api/embed`: unit-length vectors of `input` (a string or an array of them); inputs
/// longer than the context are cut to it unless `truncate` is false.
pub async fn embed(
    State(state): State<AppState>,
    body: Result<JsonBody, ApiError>,
) -> Result<Json<Value>, OllamaError> {
    let JsonBody(body) = body?;
    let started = std::time::Instant::now();
    let Some(parsed) = embed_request(&state, &body, "input", Normalize::EUCLIDEAN)? else {
        return Ok(Json(
            json!({"model": state.config.model_id, "embeddings": []}),
        ));
    };
    let embeddings = handlers::embed(&state, parsed, "input").await?;
    let n_tokens: usize = embeddings.iter().map(|e| e.n_tokens).sum();
    let vectors: Vec<&[f32]> = embeddings.iter().map(|e| &e.values[..]).collect();
    Ok(Json(json!({
        "model": state.config.model_id,
        "embeddings": vectors,
        "total_duration": started.elapsed().as_nanos() as u64,
        "load_duration": 0,
        "prompt_eval_count": n_tokens,
    })))
}

/// `POST /api/embeddings`, Ollama's older endpoint: one `prompt`, its vector not normalized.
pub async fn embeddings(
    State(state): State<AppState>,
    body: Result<JsonBody, ApiError>,
) -> Result<Json<Value>, OllamaError> {
    let JsonBody(body) = body?;
    if let Some(Value::Array(_)) = body.get("prompt") {
        return Err(ApiError::invalid_type("prompt", "a string").into());
    }
    let Some(parsed) = embed_request(&state, &body, "prompt", Normalize::NONE)? else {
        return Ok(Json(json!({"embedding": []})));
    };
    let embeddings = handlers::embed(&state, parsed, "prompt").await?;
    let vector = embeddings.first().map_or(&[][..], |e| &e.values[..]);
    Ok(Json(json!({ "embedding": vector })))
}

/// Any other `/api/...` path: Ollama's endpoints that this server does not have (pulling and
/// pushing models), in Ollama's error shape.
pub async fn not_found(uri: axum::http::Uri) -> OllamaError {
    OllamaError(ApiError::not_found(format!(
        "{} is not an endpoint of this server.",
        uri.path()
    )))
}

/// `GET /api/version`: this server's version (not Ollama's).
pub async fn version() -> Json<Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION") }))
}
