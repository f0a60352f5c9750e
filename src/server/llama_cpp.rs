//! llama.cpp's own completion API, for the tools written against llama-server: `POST
//! /completion` (streamed as server-sent events of `{"content", "stop"}` when `stream` is set)
//! and `GET /props`.
//!
//! As with Ollama's API, a request is rewritten into the OpenAI completion request it means
//! and checked by the same parser; llama.cpp's defaults (temperature 0.8, top-k 40, top-p 0.95,
//! min-p 0.05, no token limit) fill what it leaves out.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};

use super::AppState;
use super::error::ApiError;
use super::guard::JsonBody;
use crate::engine::service::{Event, RequestStream, Timings, Usage};
use crate::engine::{StopReason, TokenLogprob};
use crate::openai::request;

/// How often an idle stream sends a comment line (as the OpenAI endpoints do).
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// llama.cpp's sampling defaults, for fields a request leaves out.
fn defaults() -> [(&'static str, Value); 4] {
    [
        ("temperature", 0.8.into()),
        ("top_k", 40.into()),
        ("top_p", 0.95.into()),
        ("min_p", 0.05.into()),
    ]
}

/// Samplers llama.cpp has and this engine does not, with the value that leaves each off: a
/// client that sends the off value (as llama.cpp's own page sends them all) is served, one that
/// asks for the sampler is told.
const ABSENT_SAMPLERS: [(&str, f64); 8] = [
    ("mirostat", 0.0),
    ("typical_p", 1.0),
    ("tfs_z", 1.0),
    ("dynatemp_range", 0.0),
    ("xtc_probability", 0.0),
    ("dry_multiplier", 0.0),
    ("top_n_sigma", -1.0),
    ("n_keep", 0.0),
];

/// A sampling setting as llama.cpp (and Ollama, in its `options`) writes it, into the OpenAI
/// request `out`; false for a key that is not one.
pub(super) fn sampling_option(key: &str, value: &Value, out: &mut Map<String, Value>) -> bool {
    let value = match key {
        "top_k" | "top_p" | "min_p" | "stop" | "repeat_penalty" | "presence_penalty"
        | "frequency_penalty" => value.clone(),
        // No ceiling there (past 2 the distribution is flat for any model), and 0 and below
        // are greedy.
        "temperature" => value
            .as_f64()
            .map_or(value.clone(), |t| t.clamp(0.0, 2.0).into()),
        // A negative seed (the default, -1) is a random one.
        "seed" if value.as_i64().is_some_and(|s| s < 0) => return true,
        "seed" => value.clone(),
        // -1: the whole context.
        "repeat_last_n" if value.as_i64() == Some(-1) => u32::MAX.into(),
        "repeat_last_n" => value.clone(),
        _ => return false,
    };
    out.insert(key.into(), value);
    true
}

/// The OpenAI completion request a `/completion` body means, and how to answer it.
fn rewrite(body: &Value, model: &str) -> Result<Rewritten, ApiError> {
    let Some(fields) = body.as_object() else {
        return Err(ApiError::invalid_type("body", "a JSON object"));
    };
    let mut out = Map::new();
    out.insert("model".into(), model.into());
    let mut n_predict = None;
    for (key, value) in fields {
        match key.as_str() {
            _ if value.is_null() => {}
            _ if sampling_option(key, value, &mut out) => {}
            "prompt" | "grammar" | "json_schema" | "ignore_eos" => {
                out.insert(key.clone(), value.clone());
            }
            // -1 (the default) and -2 run to the end of generation or of the context; 0 runs
            // the prompt into the cache and generates nothing. `max_tokens` is llama.cpp's
            // older name for it.
            "n_predict" | "max_tokens" => match value.as_i64() {
                _ if key == "max_tokens" && fields.contains_key("n_predict") => {}
                Some(n) if n >= 0 => {
                    n_predict = Some(n as u64);
                }
                Some(-1 | -2) => {}
                _ => {
                    return Err(ApiError::invalid_value(
                        key,
                        "expected -1 (no limit) or a number of tokens.",
                    ));
                }
            },
            // Past 20 alternatives a client learns nothing more (and the engine reports 20).
            "n_probs" => match value.as_u64() {
                Some(0) => {}
                Some(n) => {
                    out.insert("logprobs".into(), n.min(20).into());
                }
                None => return Err(ApiError::invalid_type("n_probs", "a non-negative integer")),
            },
            // Fields that would change the response's shape: honoured at their defaults only.
            "post_sampling_probs" | "timings_per_token" if value == &Value::Bool(true) => {
                return Err(ApiError::unsupported(
                    key,
                    "this server reports log-probabilities before sampling, and timings once.",
                ));
            }
            "response_fields" if value.as_array().is_some_and(|a| !a.is_empty()) => {
                return Err(ApiError::unsupported(key, "this server sends every field."));
            }
            "n_cmpl" if value.as_u64().is_some_and(|n| n > 1) => {
                return Err(ApiError::unsupported(key, "one completion per request."));
            }
            // llama.cpp's form, [[id, bias], ...] with `false` to ban, or OpenAI's map.
            "logit_bias" => {
                out.insert(key.clone(), logit_bias(value)?);
            }
            other => {
                if let Some((_, off)) = ABSENT_SAMPLERS.iter().find(|(k, _)| *k == other)
                    && value.as_f64() != Some(*off)
                {
                    return Err(ApiError::unsupported(
                        other,
                        format!("this server has no such sampler; leave it at {off}."),
                    ));
                }
                // As llama.cpp does, other fields are ignored: clients send whole settings
                // objects (slot ids, sampler orders, settings of samplers that are off).
                tracing::debug!(field = other, "ignored");
            }
        }
    }
    for (key, value) in defaults() {
        out.entry(key).or_insert(value);
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid_type("stream", "a boolean")),
    };
    let n_probs = out
        .get("logprobs")
        .and_then(Value::as_u64)
        .map(|n| n as usize);
    Ok(Rewritten {
        openai: Value::Object(out),
        stream,
        n_probs,
        n_predict,
    })
}

/// What a `/completion` body means.
#[derive(Debug)]
struct Rewritten {
    /// The OpenAI completion request, without the token limit.
    openai: Value,
    stream: bool,
    n_probs: Option<usize>,
    /// `None`: no limit.
    n_predict: Option<u64>,
}

/// llama.cpp's `logit_bias` as OpenAI's map: `[[id, bias]]` pairs (`false` bans the token) or a
/// map already.
fn logit_bias(value: &Value) -> Result<Value, ApiError> {
    let Value::Array(pairs) = value else {
        return Ok(value.clone());
    };
    let mut map = Map::new();
    for (i, pair) in pairs.iter().enumerate() {
        let bad =
            || ApiError::invalid_type(&format!("logit_bias[{i}]"), "[token id, bias or false]");
        let [id, bias] = pair.as_array().map(Vec::as_slice).unwrap_or_default() else {
            return Err(bad());
        };
        let id = id.as_u64().ok_or_else(bad)?;
        let bias = match bias {
            Value::Bool(false) => -100.0,
            v => v.as_f64().ok_or_else(bad)?.clamp(-100.0, 100.0),
        };
        map.insert(id.to_string(), bias.into());
    }
    Ok(Value::Object(map))
}

/// `POST /completion` (and `/completions`).
pub async fn completion(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let Rewritten {
        openai,
        stream,
        n_probs,
        n_predict,
    } = rewrite(&body, &state.config.model_id)?;
    let mut parsed = request::completion(&openai)?;
    // Set here: the OpenAI parser takes no 0, which llama.cpp takes (the prompt only).
    parsed.request.params.max_tokens = n_predict.map(|n| n.min(u64::from(u32::MAX)) as u32);
    let constraint_param = parsed.constraint_param;
    let engine = state.engine.clone();
    let req = parsed.request;
    let prompt = match &req.prompt {
        crate::engine::service::Prompt::Text(text) => Value::String(text.clone()),
        crate::engine::service::Prompt::Tokens(ids) => engine
            .tokenizer()
            .decode(ids)
            .map_or(Value::Null, Value::String),
        crate::engine::service::Prompt::Chat(_) => Value::Null,
    };
    let events = tokio::task::spawn_blocking(move || engine.submit(req))
        .await
        .map_err(|e| ApiError::internal(format!("the request was lost: {e}")))?
        .map_err(|e| ApiError::from_submit(e, "prompt", constraint_param))?;
    let chunks = Chunks {
        events,
        model: state.config.model_id.clone(),
        prompt,
        n_probs,
        content: String::new(),
        tokens: Vec::new(),
        probs: Vec::new(),
        done: false,
    };
    if stream {
        let events = futures_util::stream::unfold(chunks, |mut c| async move {
            if c.done {
                return None;
            }
            let out = c.next(true).await;
            Some((out, c))
        })
        .flat_map(futures_util::stream::iter)
        .map(|v: Value| Ok::<_, Infallible>(sse::Event::default().data(v.to_string())));
        Ok(Sse::new(events)
            .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
            .into_response())
    } else {
        let mut chunks = chunks;
        let mut last = Value::Null;
        while !chunks.done {
            for v in chunks.next(false).await {
                if let Some(message) = v.get("error").and_then(|e| e["message"].as_str()) {
                    return Err(ApiError::internal(message));
                }
                last = v;
            }
        }
        Ok(Json(last).into_response())
    }
}

/// One request's chunks, from its engine events.
struct Chunks {
    events: RequestStream,
    model: String,
    prompt: Value,
    n_probs: Option<usize>,
    /// The whole text and tokens so far (the last chunk of a request that does not stream
    /// carries them all).
    content: String,
    tokens: Vec<u32>,
    probs: Vec<Value>,
    done: bool,
}

/// An error as the JSON body llama.cpp's server sends (OpenAI's shape).
fn error_value(e: ApiError) -> Value {
    serde_json::from_str(&e.body()).unwrap_or(Value::Null)
}

/// A token's probabilities in llama.cpp's shape (log-probabilities, as its server gives them).
fn probabilities(lp: &TokenLogprob) -> Value {
    let top: Vec<Value> = lp
        .top
        .iter()
        .map(|t| json!({"id": t.id, "token": t.text, "bytes": t.bytes, "logprob": t.logprob}))
        .collect();
    json!({"id": lp.id, "token": lp.text, "bytes": lp.bytes, "logprob": lp.logprob,
        "top_logprobs": top})
}

impl Chunks {
    async fn next(&mut self, streaming: bool) -> Vec<Value> {
        match self.events.next().await {
            Some(Event::Started { .. }) => Vec::new(),
            Some(Event::Delta {
                token,
                text,
                logprob,
            }) => {
                let probs: Vec<Value> = logprob.iter().map(probabilities).collect();
                if !streaming {
                    self.content.push_str(&text);
                    self.tokens.extend(token);
                    self.probs.extend(probs);
                    return Vec::new();
                }
                if text.is_empty() && token.is_none() {
                    return Vec::new();
                }
                let mut chunk = json!({"index": 0, "content": text,
                    "tokens": token.into_iter().collect::<Vec<_>>(), "stop": false,
                    "id_slot": -1});
                if self.n_probs.is_some() {
                    chunk["completion_probabilities"] = probs.into();
                }
                vec![chunk]
            }
            Some(Event::Finished {
                stop,
                usage,
                timings,
            }) => {
                self.done = true;
                super::handlers::log_finished("completion", &stop, &usage, &timings);
                vec![self.last(&stop, &usage, &timings, streaming)]
            }
            Some(Event::Failed(message)) => {
                self.done = true;
                tracing::error!(%message, "generation failed");
                vec![error_value(ApiError::internal(format!(
                    "Generation failed: {message}"
                )))]
            }
            None => {
                self.done = true;
                vec![error_value(ApiError::internal("The engine stopped."))]
            }
        }
    }

    /// The last chunk: llama.cpp's summary of the request (and, unstreamed, its whole text).
    fn last(&mut self, stop: &StopReason, u: &Usage, t: &Timings, streaming: bool) -> Value {
        let (stop_type, word) = match stop {
            StopReason::EndOfGeneration => ("eos", ""),
            StopReason::StopString(s) => ("word", s.as_str()),
            StopReason::MaxTokens | StopReason::ContextFull => ("limit", ""),
            StopReason::Cancelled => ("none", ""),
        };
        let first = t.time_to_first_token.unwrap_or(t.total);
        let prompt_ms = first.saturating_sub(t.queued).as_secs_f64() * 1e3;
        let predicted_ms = t.total.saturating_sub(first).as_secs_f64() * 1e3;
        let per_second = |n: usize, ms: f64| if ms > 0.0 { n as f64 * 1e3 / ms } else { 0.0 };
        let per_token = |n: usize, ms: f64| if n > 0 { ms / n as f64 } else { 0.0 };
        let evaluated = u.prompt_tokens.saturating_sub(u.cached_tokens);
        let mut last = json!({
            "index": 0,
            "content": std::mem::take(&mut self.content),
            "tokens": std::mem::take(&mut self.tokens),
            "id_slot": -1,
            "stop": true,
            "model": self.model,
            "prompt": self.prompt,
            "stop_type": stop_type,
            "stopping_word": word,
            "stopped_eos": stop_type == "eos",
            "stopped_word": stop_type == "word",
            "stopped_limit": stop_type == "limit",
            "tokens_predicted": u.completion_tokens,
            "tokens_evaluated": u.prompt_tokens,
            "tokens_cached": u.cached_tokens,
            "truncated": false,
            "timings": {
                "prompt_n": evaluated,
                "prompt_ms": prompt_ms,
                "prompt_per_token_ms": per_token(evaluated, prompt_ms),
                "prompt_per_second": per_second(evaluated, prompt_ms),
                "predicted_n": u.completion_tokens,
                "predicted_ms": predicted_ms,
                "predicted_per_token_ms": per_token(u.completion_tokens, predicted_ms),
                "predicted_per_second": per_second(u.completion_tokens, predicted_ms),
            },
        });
        // Streamed, each token's probabilities came with it.
        if self.n_probs.is_some() && !streaming {
            last["completion_probabilities"] = std::mem::take(&mut self.probs).into();
        }
        last
    }
}

/// `GET /props`: the server's settings as llama.cpp reports them.
pub async fn props(State(state): State<AppState>) -> Json<Value> {
    let info = state.engine.model_info();
    let template = state.engine.tokenizer().chat_template().unwrap_or_default();
    let mut settings = Map::new();
    settings.insert("n_ctx".into(), info.n_ctx.into());
    let mut params = Map::new();
    for (key, value) in defaults() {
        params.insert(key.into(), value);
    }
    params.insert("n_predict".into(), (-1).into());
    settings.insert("params".into(), Value::Object(params));
    Json(json!({
        "default_generation_settings": settings,
        "total_slots": state.engine.n_slots(),
        "model_path": state.config.model_id,
        "model_alias": state.config.model_id,
        "chat_template": template,
        "modalities": {"vision": false, "audio": false},
        "build_info": concat!("sovereign-", env!("CARGO_PKG_VERSION")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_become_openai_requests_with_llama_cpp_defaults() {
        let r = rewrite(
            &json!({"prompt": "x", "n_predict": 8, "temperature": 3, "seed": -1,
                    "repeat_last_n": -1, "n_probs": 2, "stream": true, "cache_prompt": true,
                    "mirostat": 0, "typical_p": 1, "logit_bias": [[5, false], [7, 1.5]],
                    "penalize_nl": false, "xtc_threshold": 0.1, "max_tokens": 3}),
            "m",
        )
        .unwrap();
        assert!(r.stream);
        assert_eq!((r.n_probs, r.n_predict), (Some(2), Some(8)));
        assert_eq!(
            r.openai,
            json!({"model": "m", "prompt": "x", "temperature": 2.0,
                   "repeat_last_n": u32::MAX, "logprobs": 2,
                   "logit_bias": {"5": -100.0, "7": 1.5},
                   "top_k": 40, "top_p": 0.95, "min_p": 0.05})
        );
        let r = rewrite(&json!({"prompt": [1, 2], "n_predict": -1}), "m").unwrap();
        assert!(!r.stream && r.n_predict.is_none());
        assert_eq!(r.openai["temperature"], 0.8);
        let n = |body: Value| rewrite(&body, "m").unwrap().n_predict;
        assert_eq!(n(json!({"prompt": "x", "n_predict": 0})), Some(0));
        assert_eq!(n(json!({"prompt": "x", "n_predict": -2})), None);
        assert_eq!(n(json!({"prompt": "x", "max_tokens": 5})), Some(5));
        let t = rewrite(
            &json!({"prompt": "x", "temperature": -1, "n_probs": 50}),
            "m",
        )
        .unwrap();
        assert_eq!(
            (t.openai["temperature"].as_f64(), t.n_probs),
            (Some(0.0), Some(20))
        );
        for (body, param) in [
            (json!({"prompt": "x", "mirostat": 2}), "mirostat"),
            (
                json!({"prompt": "x", "post_sampling_probs": true}),
                "post_sampling_probs",
            ),
            (json!({"prompt": "x", "n_predict": -5}), "n_predict"),
            (json!({"prompt": "x", "logit_bias": [[1]]}), "logit_bias[0]"),
            (json!({"prompt": "x", "stream": "yes"}), "stream"),
        ] {
            let e = rewrite(&body, "m").unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
    }
}
