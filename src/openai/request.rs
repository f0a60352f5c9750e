//! OpenAI request bodies to engine [`Request`]s. Every field is checked here, with the field's
//! name in the error, so nothing malformed reaches the engine.

use serde_json::{Map, Value};

use super::error::ApiError;
use super::tools::{self, Tool, ToolChoice, Tools};
use crate::engine::service::{Prompt, Request};
use crate::engine::{Constraint, GenerateParams, SamplingParams};
use crate::tokenizer::ChatMessage;

/// Most stop strings per request.
const MAX_STOP: usize = 16;
/// Most alternatives per token the engine reports.
const MAX_TOP_LOGPROBS: u64 = 20;
/// OpenAI's default for `/v1/completions` when `max_tokens` is absent.
const COMPLETIONS_DEFAULT_MAX_TOKENS: u32 = 16;

/// A checked request and what the response should look like.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub model: String,
    pub request: Request,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the usage.
    pub include_usage: bool,
    /// The tools the reply may call (chat only); the reply is read back into calls.
    pub tools: Option<Tools>,
    /// The request field the constraint came from, named when it does not compile.
    pub constraint_param: &'static str,
}

/// The two generation endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`: messages through the model's chat template.
    Chat,
    /// `/v1/completions`: a raw prompt.
    Completions,
}

impl Endpoint {
    /// The request field the prompt came from, named in errors about it.
    pub fn prompt_param(self) -> &'static str {
        match self {
            Endpoint::Chat => "messages",
            Endpoint::Completions => "prompt",
        }
    }
}

/// Checks a body for `endpoint`.
pub fn parse(endpoint: Endpoint, body: &Value) -> Result<Parsed, ApiError> {
    match endpoint {
        Endpoint::Chat => chat(body),
        Endpoint::Completions => completion(body),
    }
}

/// The fields of one JSON object; `prefix` names it in errors (`messages[2].`).
struct Fields<'a> {
    map: &'a Map<String, Value>,
    prefix: String,
}

impl<'a> Fields<'a> {
    fn of(value: &'a Value, path: &str) -> Result<Self, ApiError> {
        match value {
            Value::Object(map) => Ok(Fields {
                map,
                prefix: if path.is_empty() {
                    String::new()
                } else {
                    format!("{path}.")
                },
            }),
            _ if path.is_empty() => Err(ApiError::bad_request(
                "The request body must be a JSON object.",
            )
            .with_code("invalid_type")),
            _ => Err(ApiError::invalid_type(path, "an object")),
        }
    }

    fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The value, treating an explicit `null` as absent, as OpenAI does.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn required(&self, key: &str) -> Result<&'a Value, ApiError> {
        self.get(key)
            .ok_or_else(|| ApiError::missing(&self.path(key)))
    }

    fn required_str(&self, key: &str) -> Result<&'a str, ApiError> {
        self.str(key)?
            .ok_or_else(|| ApiError::missing(&self.path(key)))
    }

    fn str(&self, key: &str) -> Result<Option<&'a str>, ApiError> {
        self.get(key)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| ApiError::invalid_type(&self.path(key), "a string"))
            })
            .transpose()
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| ApiError::invalid_type(&self.path(key), "a boolean"))
            })
            .transpose()
    }

    fn number(&self, key: &str) -> Result<Option<f64>, ApiError> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| ApiError::invalid_type(&self.path(key), "a number"))
            })
            .transpose()
    }

    /// A number in `lo..=hi` (or `lo < x <= hi` when `open_lo`).
    fn f32_in(&self, key: &str, lo: f64, hi: f64, open_lo: bool) -> Result<Option<f32>, ApiError> {
        let Some(v) = self.number(key)? else {
            return Ok(None);
        };
        let ok = if open_lo { v > lo } else { v >= lo } && v <= hi;
        if !ok {
            let open = if open_lo { "(" } else { "[" };
            return Err(ApiError::invalid_value(
                &self.path(key),
                format!("{v} is outside {open}{lo}, {hi}]."),
            ));
        }
        Ok(Some(v as f32))
    }

    fn integer(&self, key: &str) -> Result<Option<i128>, ApiError> {
        self.get(key)
            .map(|v| {
                v.as_i64()
                    .map(i128::from)
                    .or_else(|| v.as_u64().map(i128::from))
                    .ok_or_else(|| ApiError::invalid_type(&self.path(key), "an integer"))
            })
            .transpose()
    }

    /// An integer in `lo..=hi`.
    fn int_in(&self, key: &str, lo: i128, hi: i128) -> Result<Option<u64>, ApiError> {
        let Some(v) = self.integer(key)? else {
            return Ok(None);
        };
        if v < lo || v > hi {
            return Err(ApiError::invalid_value(
                &self.path(key),
                format!("{v} is outside [{lo}, {hi}]."),
            ));
        }
        // lo >= 0 at every call site, so this cannot fail.
        u64::try_from(v)
            .map(Some)
            .map_err(|_| ApiError::invalid_value(&self.path(key), "must not be negative."))
    }
}

/// Fields of the OpenAI API this server does not implement: refusing them beats silently
/// answering something else than was asked.
fn reject_unsupported(f: &Fields) -> Result<(), ApiError> {
    let set = |key: &str| f.get(key).is_some();
    for key in ["audio", "prediction"] {
        if set(key) {
            return Err(ApiError::unsupported(
                key,
                "this server does not support it.",
            ));
        }
    }
    for key in ["functions", "function_call"] {
        if set(key) {
            return Err(ApiError::unsupported(
                key,
                "the deprecated functions are not supported; use 'tools'.",
            ));
        }
    }
    if let Some(modalities) = f.get("modalities") {
        let text_only = modalities
            .as_array()
            .is_some_and(|m| m.iter().all(|x| x.as_str() == Some("text")));
        if !text_only {
            return Err(ApiError::unsupported(
                "modalities",
                "only [\"text\"] is supported.",
            ));
        }
    }
    if let Some(n) = f.int_in("n", 0, i128::from(u64::MAX))?
        && n != 1
    {
        return Err(ApiError::invalid_value(
            "n",
            format!("{n}: this server generates exactly one choice per request (n = 1)."),
        ));
    }
    if let Some(best_of) = f.int_in("best_of", 0, i128::from(u64::MAX))?
        && best_of != 1
    {
        return Err(ApiError::invalid_value(
            "best_of",
            format!("{best_of}: only 1 is supported."),
        ));
    }
    Ok(())
}

/// `logit_bias`: token ids (as strings) to a bias in [-100, 100]. Ids past the vocabulary are
/// refused when the request is submitted.
fn logit_bias(f: &Fields) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(bias) = f.get("logit_bias") else {
        return Ok(Vec::new());
    };
    let Value::Object(map) = bias else {
        return Err(ApiError::invalid_type("logit_bias", "an object"));
    };
    let mut out = Vec::with_capacity(map.len());
    for (key, value) in map {
        let Ok(id) = key.parse::<u32>() else {
            return Err(ApiError::invalid_value(
                "logit_bias",
                format!("{key:?} is not a token id."),
            ));
        };
        let Some(b) = value.as_f64() else {
            return Err(ApiError::invalid_type(
                &format!("logit_bias.{key}"),
                "a number",
            ));
        };
        if !(-100.0..=100.0).contains(&b) {
            return Err(ApiError::invalid_value(
                &format!("logit_bias.{key}"),
                format!("{b} is outside [-100, 100]."),
            ));
        }
        out.push((id, b as f32));
    }
    // "5" and "05" name one token: the later says its bias, as for a repeated key.
    out.reverse();
    let mut seen = std::collections::HashSet::new();
    out.retain(|(id, _)| seen.insert(*id));
    out.reverse();
    Ok(out)
}

/// `response_format`: text, any JSON object, or JSON valid against a schema. llama.cpp's
/// server also takes a schema beside `json_object`; so does this one.
fn response_format(f: &Fields) -> Result<Option<Constraint>, ApiError> {
    let Some(format) = f.get("response_format") else {
        return Ok(None);
    };
    let format = Fields::of(format, "response_format")?;
    let schema = |fields: &Fields| -> Result<Option<Constraint>, ApiError> {
        Ok(match fields.get("schema") {
            None => None,
            Some(schema @ Value::Object(_)) => Some(Constraint::JsonSchema(schema.clone())),
            Some(_) => return Err(ApiError::invalid_type(&fields.path("schema"), "an object")),
        })
    };
    match format.str("type")? {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(schema(&format)?.unwrap_or(Constraint::JsonObject))),
        Some("json_schema") => {
            let spec = Fields::of(format.required("json_schema")?, &format.path("json_schema"))?;
            spec.str("name")?;
            spec.str("description")?;
            spec.bool("strict")?;
            // A schema left out allows any JSON object, as llama.cpp's server does.
            Ok(Some(schema(&spec)?.unwrap_or(Constraint::JsonObject)))
        }
        Some(other) => Err(ApiError::invalid_value(
            &format.path("type"),
            format!("{other:?} is not one of \"text\", \"json_object\" or \"json_schema\"."),
        )),
        None => Err(ApiError::missing(&format.path("type"))),
    }
}

/// The constraint of `response_format`, or of llama.cpp's `grammar` (GBNF, or Lark) and
/// `json_schema`, and the field it came from. One request takes one of them.
fn constraint(f: &Fields) -> Result<(Option<Constraint>, &'static str), ApiError> {
    let mut found = Vec::new();
    if let Some(c) = response_format(f)? {
        found.push((c, "response_format"));
    }
    if let Some(grammar) = f.str("grammar")?
        && !grammar.trim().is_empty()
    {
        found.push((Constraint::grammar(grammar), "grammar"));
    }
    match f.get("json_schema") {
        None => {}
        Some(schema @ (Value::Object(_) | Value::Bool(true))) => {
            found.push((Constraint::JsonSchema(schema.clone()), "json_schema"))
        }
        Some(_) => return Err(ApiError::invalid_type("json_schema", "an object")),
    }
    match found.len() {
        0 => Ok((None, "response_format")),
        1 => {
            let (c, param) = found.remove(0);
            Ok((Some(c), param))
        }
        _ => Err(ApiError::invalid_value(
            found[1].1,
            format!(
                "a request takes one of response_format, grammar and json_schema; this one also has {}.",
                found[0].1
            ),
        )),
    }
}

fn stop_strings(f: &Fields) -> Result<Vec<String>, ApiError> {
    let stop = match f.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::invalid_type(&format!("stop[{i}]"), "a string"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::invalid_type(
                "stop",
                "a string or an array of strings",
            ));
        }
    };
    if stop.len() > MAX_STOP {
        return Err(ApiError::invalid_value(
            "stop",
            format!("at most {MAX_STOP} stop sequences."),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid_value(
            "stop",
            "stop sequences must not be empty.",
        ));
    }
    Ok(stop)
}

/// Sampling, stop strings, token limit and streaming: the fields both endpoints share.
fn common(f: &Fields, default_max_tokens: Option<u32>) -> Result<Parsed, ApiError> {
    let model = match f.required("model")? {
        Value::String(s) => s.clone(),
        _ => return Err(ApiError::invalid_type("model", "a string")),
    };
    reject_unsupported(f)?;
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(options) => {
            if !stream {
                return Err(ApiError::invalid_value(
                    "stream_options",
                    "only allowed when 'stream' is true.",
                ));
            }
            Fields::of(options, "stream_options")?
                .bool("include_usage")?
                .unwrap_or(false)
        }
    };
    let max_u32 = i128::from(u32::MAX);
    let max_tokens = match f.int_in("max_completion_tokens", 1, max_u32)? {
        Some(n) => Some(n),
        None => f.int_in("max_tokens", 1, max_u32)?,
    }
    .map(|n| n as u32)
    .or(default_max_tokens);

    // Absent fields keep the engine's defaults (llama.cpp's), as llama.cpp's server does:
    // OpenAI's (temperature 1, no top-k, no min-p) make small models ramble.
    let d = SamplingParams::default();
    let sampling = SamplingParams {
        temperature: f
            .f32_in("temperature", 0.0, 2.0, false)?
            .unwrap_or(d.temperature),
        top_p: f.f32_in("top_p", 0.0, 1.0, false)?.unwrap_or(d.top_p),
        top_k: f
            .int_in("top_k", 0, i128::from(u32::MAX))?
            .map_or(d.top_k, |k| k as usize),
        min_p: f.f32_in("min_p", 0.0, 1.0, false)?.unwrap_or(d.min_p),
        repeat_penalty: f
            .f32_in("repeat_penalty", 0.0, f64::from(f32::MAX), true)?
            .unwrap_or(d.repeat_penalty),
        repeat_last_n: f
            .int_in("repeat_last_n", 0, i128::from(u32::MAX))?
            .map_or(d.repeat_last_n, |n| n as usize),
        presence_penalty: f
            .f32_in("presence_penalty", -2.0, 2.0, false)?
            .unwrap_or(d.presence_penalty),
        frequency_penalty: f
            .f32_in("frequency_penalty", -2.0, 2.0, false)?
            .unwrap_or(d.frequency_penalty),
        // Negative seeds are valid OpenAI seeds; any 64 bits name one generator.
        seed: f.integer("seed")?.map(|s| s as u64),
        logit_bias: logit_bias(f)?,
    };
    let (constraint, constraint_param) = constraint(f)?;
    let params = GenerateParams {
        max_tokens,
        sampling,
        stop: stop_strings(f)?,
        ignore_eos: f.bool("ignore_eos")?.unwrap_or(false),
        constraint,
        // The engine's setting (`sovereign serve --draft`), not the request's.
        draft: 0,
    };
    Ok(Parsed {
        model,
        request: Request {
            prompt: Prompt::Text(String::new()),
            params,
            logprobs: None,
        },
        stream,
        include_usage,
        tools: None,
        constraint_param,
    })
}

/// Longest tool name OpenAI takes.
const MAX_TOOL_NAME: usize = 64;

/// `tools`, `tool_choice` and `parallel_tool_calls`: the tools in play, if any. `response` is
/// what `response_format` asked of a direct reply.
fn tools(f: &Fields, response: Option<&Constraint>) -> Result<Option<Tools>, ApiError> {
    let list = match f.get("tools") {
        None => Vec::new(),
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(ApiError::invalid_value(
                "tools",
                "an empty array: leave 'tools' out instead.",
            ));
        }
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| tool(item, &format!("tools[{i}]")))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(ApiError::invalid_type("tools", "an array")),
    };
    for (i, t) in list.iter().enumerate() {
        if list[..i].iter().any(|o| o.name == t.name) {
            return Err(ApiError::invalid_value(
                &format!("tools[{i}].function.name"),
                format!("{:?} names two tools.", t.name),
            ));
        }
    }
    let parallel = f.bool("parallel_tool_calls")?.unwrap_or(false);
    let choice = match f.get("tool_choice") {
        None if list.is_empty() => return Ok(None),
        None => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => return Ok(None),
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::invalid_value(
                    "tool_choice",
                    format!(
                        "{other:?} is not one of \"none\", \"auto\", \"required\" or a function."
                    ),
                ));
            }
        },
        Some(choice @ Value::Object(_)) => {
            let c = Fields::of(choice, "tool_choice")?;
            match c.str("type")? {
                Some("function") => {}
                Some(other) => {
                    return Err(ApiError::unsupported(
                        &c.path("type"),
                        format!("{other:?}: only functions can be chosen."),
                    ));
                }
                None => return Err(ApiError::missing(&c.path("type"))),
            }
            let function = Fields::of(c.required("function")?, &c.path("function"))?;
            let name = function.required_str("name")?;
            if !list.iter().any(|t| t.name == name) {
                return Err(ApiError::invalid_value(
                    &function.path("name"),
                    format!("no tool is named {name:?}."),
                ));
            }
            ToolChoice::Function(name.to_string())
        }
        Some(_) => {
            return Err(ApiError::invalid_type(
                "tool_choice",
                "a string or an object",
            ));
        }
    };
    if list.is_empty() {
        return Err(ApiError::invalid_value(
            "tool_choice",
            "only allowed when 'tools' are given.",
        ));
    }
    let response = match response {
        None => serde_json::json!({"type": "string"}),
        Some(Constraint::JsonSchema(schema)) => schema.clone(),
        Some(Constraint::JsonObject) => serde_json::json!({"type": "object"}),
        Some(Constraint::Lark(_) | Constraint::Gbnf(_) | Constraint::Regex(_)) => {
            return Err(ApiError::invalid_value(
                "grammar",
                "a grammar and tools cannot be combined (a reply that calls no tool may be held to response_format or json_schema).",
            ));
        }
    };
    Ok(Some(Tools {
        tools: list,
        choice,
        parallel,
        response,
    }))
}

/// One of `tools`: `{"type": "function", "function": {"name", "description", "parameters"}}`.
fn tool(item: &Value, path: &str) -> Result<Tool, ApiError> {
    let t = Fields::of(item, path)?;
    match t.str("type")? {
        Some("function") => {}
        Some(other) => {
            return Err(ApiError::unsupported(
                &t.path("type"),
                format!("tools of type {other:?} are not supported; only functions."),
            ));
        }
        None => return Err(ApiError::missing(&t.path("type"))),
    }
    let f = Fields::of(t.required("function")?, &t.path("function"))?;
    let name = f.required_str("name")?;
    let name_ok = !name.is_empty()
        && name.len() <= MAX_TOOL_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !name_ok {
        return Err(ApiError::invalid_value(
            &f.path("name"),
            format!(
                "{name:?}: a name is 1 to {MAX_TOOL_NAME} letters, digits, underscores or dashes."
            ),
        ));
    }
    f.bool("strict")?;
    let parameters = match f.get("parameters") {
        None => serde_json::json!({"type": "object", "properties": {}}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => return Err(ApiError::invalid_type(&f.path("parameters"), "an object")),
    };
    Ok(Tool {
        name: name.to_string(),
        description: f.str("description")?.map(str::to_string),
        parameters,
    })
}

/// An assistant turn's `tool_calls`: each call's name and arguments (parsed when they are JSON).
fn assistant_calls(value: &Value, path: &str) -> Result<Vec<(String, String, Value)>, ApiError> {
    let Value::Array(calls) = value else {
        return Err(ApiError::invalid_type(path, "an array"));
    };
    calls
        .iter()
        .enumerate()
        .map(|(i, call)| {
            let c = Fields::of(call, &format!("{path}[{i}]"))?;
            let id = c.required_str("id")?;
            if let Some(kind) = c.str("type")?
                && kind != "function"
            {
                return Err(ApiError::unsupported(
                    &c.path("type"),
                    format!("calls of type {kind:?} are not supported; only functions."),
                ));
            }
            let function = Fields::of(c.required("function")?, &c.path("function"))?;
            let name = function.required_str("name")?;
            let arguments = function.str("arguments")?.unwrap_or("{}");
            let arguments = serde_json::from_str(arguments)
                .unwrap_or_else(|_| Value::String(arguments.to_string()));
            Ok((id.to_string(), name.to_string(), arguments))
        })
        .collect()
}

fn message_content(value: &Value, path: &str) -> Result<String, ApiError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (i, part) in parts.iter().enumerate() {
                let p = Fields::of(part, &format!("{path}[{i}]"))?;
                match p.str("type")? {
                    Some("text") => match p.required("text")? {
                        Value::String(s) => text.push_str(s),
                        _ => return Err(ApiError::invalid_type(&p.path("text"), "a string")),
                    },
                    Some(other) => {
                        return Err(ApiError::unsupported(
                            &p.path("type"),
                            format!("content parts of type {other:?} are not supported."),
                        ));
                    }
                    None => return Err(ApiError::missing(&p.path("type"))),
                }
            }
            Ok(text)
        }
        _ => Err(ApiError::invalid_type(
            path,
            "a string or an array of content parts",
        )),
    }
}

/// `POST /v1/chat/completions`.
pub fn chat(body: &Value) -> Result<Parsed, ApiError> {
    let f = Fields::of(body, "")?;
    let mut parsed = common(&f, None)?;
    let messages = match f.required("messages")? {
        Value::Array(m) if m.is_empty() => {
            return Err(ApiError::invalid_value(
                "messages",
                "at least one message is required.",
            ));
        }
        Value::Array(m) => m,
        _ => return Err(ApiError::invalid_type("messages", "an array")),
    };
    let mut conversation = Vec::with_capacity(messages.len() + 1);
    // Which tool each earlier call id named, for the results that answer them.
    let mut call_names: Vec<(String, String)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let path = format!("messages[{i}]");
        let m = Fields::of(m, &path)?;
        let role = match m.required("role")? {
            Value::String(r) => r.as_str(),
            _ => return Err(ApiError::invalid_type(&m.path("role"), "a string")),
        };
        // OpenAI's newer name for the system role; chat templates know only `system`.
        let role = match role {
            "developer" => "system",
            "system" | "user" | "assistant" | "tool" => role,
            other => {
                return Err(ApiError::invalid_value(
                    &m.path("role"),
                    format!("{other:?} is not one of system, developer, user, assistant, tool."),
                ));
            }
        };
        if m.get("function_call").is_some() {
            return Err(ApiError::unsupported(
                &m.path("function_call"),
                "the deprecated functions are not supported; use 'tool_calls'.",
            ));
        }
        let content = match m.get("content") {
            Some(c) => message_content(c, &m.path("content"))?,
            None if role == "assistant" => String::new(),
            None => return Err(ApiError::missing(&m.path("content"))),
        };
        // An empty list of calls is no call.
        let calls = m
            .get("tool_calls")
            .filter(|c| c.as_array().is_none_or(|a| !a.is_empty()));
        match (role, calls) {
            ("assistant", Some(calls)) => {
                let calls = assistant_calls(calls, &m.path("tool_calls"))?;
                let named: Vec<(String, Value)> = calls
                    .iter()
                    .map(|(_, name, args)| (name.clone(), args.clone()))
                    .collect();
                call_names.extend(calls.into_iter().map(|(id, name, _)| (id, name)));
                conversation.push(tools::calls_message(&content, &named));
            }
            (_, Some(_)) => {
                return Err(ApiError::invalid_value(
                    &m.path("tool_calls"),
                    "only assistant messages make tool calls.",
                ));
            }
            ("tool", None) => {
                let id = m.required_str("tool_call_id")?;
                let name = match call_names.iter().rev().find(|(c, _)| c == id) {
                    Some((_, name)) => name.clone(),
                    None => {
                        return Err(ApiError::invalid_value(
                            &m.path("tool_call_id"),
                            format!("{id:?} answers no tool call of an earlier assistant message."),
                        ));
                    }
                };
                conversation.push(tools::result_message(&name, &content));
            }
            (_, None) => conversation.push(ChatMessage::new(role, content)),
        }
    }
    let tools = tools(&f, parsed.request.params.constraint.as_ref())?;
    if let Some(t) = &tools {
        t.add_to(&mut conversation);
        parsed.request.params.constraint = Some(t.constraint());
    }
    if tools.is_some() {
        parsed.constraint_param = "tools";
    }
    parsed.tools = tools;
    let logprobs = f.bool("logprobs")?.unwrap_or(false);
    let top = f.int_in("top_logprobs", 0, i128::from(MAX_TOP_LOGPROBS))?;
    if top.is_some() && !logprobs {
        return Err(ApiError::invalid_value(
            "top_logprobs",
            "'logprobs' must be true when 'top_logprobs' is set.",
        ));
    }
    parsed.request.prompt = Prompt::Chat(conversation);
    parsed.request.logprobs = logprobs.then(|| top.unwrap_or(0) as usize);
    Ok(parsed)
}

fn token_ids(items: &[Value], path: &str) -> Result<Vec<u32>, ApiError> {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| ApiError::invalid_type(&format!("{path}[{i}]"), "a token id"))
        })
        .collect()
}

/// `POST /v1/completions`.
pub fn completion(body: &Value) -> Result<Parsed, ApiError> {
    let f = Fields::of(body, "")?;
    let mut parsed = common(&f, Some(COMPLETIONS_DEFAULT_MAX_TOKENS))?;
    for key in ["tools", "tool_choice", "parallel_tool_calls"] {
        if f.get(key).is_some() {
            return Err(ApiError::unsupported(
                key,
                "tools are for /v1/chat/completions.",
            ));
        }
    }
    let one_prompt = || {
        ApiError::invalid_value(
            "prompt",
            "this server takes one prompt per request (a string, or an array of token ids).",
        )
    };
    let prompt = match f.required("prompt")? {
        Value::String(s) => Prompt::Text(s.clone()),
        Value::Array(items) => match items.as_slice() {
            [] => return Err(ApiError::invalid_value("prompt", "the prompt is empty.")),
            [Value::String(s)] => Prompt::Text(s.clone()),
            [Value::Array(ids)] => Prompt::Tokens(token_ids(ids, "prompt[0]")?),
            [Value::Number(_), ..] => Prompt::Tokens(token_ids(items, "prompt")?),
            [Value::String(_) | Value::Array(_), ..] => return Err(one_prompt()),
            _ => {
                return Err(ApiError::invalid_type(
                    "prompt",
                    "a string, an array of strings or an array of token ids",
                ));
            }
        },
        _ => {
            return Err(ApiError::invalid_type(
                "prompt",
                "a string, an array of strings or an array of token ids",
            ));
        }
    };
    if f.bool("echo")?.unwrap_or(false) {
        return Err(ApiError::unsupported(
            "echo",
            "this server does not echo the prompt.",
        ));
    }
    if f.str("suffix")?.is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::unsupported(
            "suffix",
            "this server does not support insertion.",
        ));
    }
    // Unlike chat's boolean, the legacy endpoint's `logprobs` is the number of alternatives.
    let logprobs = match f.get("logprobs") {
        Some(Value::Bool(_)) => {
            return Err(ApiError::invalid_type("logprobs", "an integer"));
        }
        _ => f.int_in("logprobs", 0, i128::from(MAX_TOP_LOGPROBS))?,
    };
    parsed.request.prompt = prompt;
    parsed.request.logprobs = logprobs.map(|n| n as usize);
    Ok(parsed)
}

/// `POST /tokenize` (llama.cpp's): the text, whether to add the model's BOS/EOS, and whether
/// to give each token's text beside its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizeRequest {
    pub content: String,
    pub add_special: bool,
    pub with_pieces: bool,
}

pub fn tokenize(body: &Value) -> Result<TokenizeRequest, ApiError> {
    let f = Fields::of(body, "")?;
    let content = f.required_str("content")?.to_string();
    if f.bool("parse_special")? == Some(false) {
        return Err(ApiError::unsupported(
            "parse_special",
            "special tokens written in the text are always parsed.",
        ));
    }
    Ok(TokenizeRequest {
        content,
        add_special: f.bool("add_special")?.unwrap_or(false),
        with_pieces: f.bool("with_pieces")?.unwrap_or(false),
    })
}

/// `POST /detokenize` (llama.cpp's): the token ids.
pub fn detokenize(body: &Value) -> Result<Vec<u32>, ApiError> {
    let f = Fields::of(body, "")?;
    match f.get("tokens") {
        None => Ok(Vec::new()),
        Some(Value::Array(ids)) => token_ids(ids, "tokens"),
        Some(_) => Err(ApiError::invalid_type("tokens", "an array of token ids")),
    }
}

/// How embeddings are written back: numbers, or base64 of their little-endian f32 bytes (what
/// OpenAI's clients ask for unless told otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodingFormat {
    Float,
    Base64,
}

/// `POST /v1/embeddings` (or llama.cpp's `/embedding`, whose inputs are under `content`).
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingsRequest {
    /// `None`: the served model (llama.cpp's endpoints need none).
    pub model: Option<String>,
    pub request: crate::engine::service::EmbedRequest,
    pub encoding_format: EncodingFormat,
    /// Dimensions asked for; the model's own are the only ones it has.
    pub dimensions: Option<u64>,
}

impl EmbeddingsRequest {
    /// Refuses `dimensions` other than the model's `n_embd`: its vectors cannot be shortened.
    pub fn check_dimensions(&self, n_embd: u32) -> Result<(), ApiError> {
        match self.dimensions {
            Some(d) if d != u64::from(n_embd) => Err(ApiError::unsupported(
                "dimensions",
                format!(
                    "this model's embeddings have {n_embd} dimensions and cannot be shortened."
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// The inputs of an embeddings request under `key`: a string, an array of strings, an array of
/// token ids, or an array of arrays of token ids, each one input.
pub fn embedding_inputs(value: &Value, key: &str) -> Result<Vec<Prompt>, ApiError> {
    let expected =
        "a string, an array of strings, an array of token ids or an array of arrays of token ids";
    match value {
        Value::String(s) => Ok(vec![Prompt::Text(s.clone())]),
        Value::Array(items) => match items.as_slice() {
            [] => Err(ApiError::invalid_value(key, "there is nothing to embed.")),
            [Value::Number(_), ..] => Ok(vec![Prompt::Tokens(token_ids(items, key)?)]),
            _ => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(Prompt::Text(s.clone())),
                    Value::Array(ids) => {
                        Ok(Prompt::Tokens(token_ids(ids, &format!("{key}[{i}]"))?))
                    }
                    _ => Err(ApiError::invalid_type(
                        &format!("{key}[{i}]"),
                        "a string or an array of token ids",
                    )),
                })
                .collect(),
        },
        _ => Err(ApiError::invalid_type(key, expected)),
    }
}

pub fn embeddings(body: &Value, input_key: &str) -> Result<EmbeddingsRequest, ApiError> {
    let f = Fields::of(body, "")?;
    let model = f.str("model")?.map(str::to_string);
    let inputs = embedding_inputs(f.required(input_key)?, input_key)?;
    let encoding_format = match f.str("encoding_format")? {
        None | Some("float") => EncodingFormat::Float,
        Some("base64") => EncodingFormat::Base64,
        Some(other) => {
            return Err(ApiError::invalid_value(
                "encoding_format",
                format!("{other:?}: expected \"float\" or \"base64\"."),
            ));
        }
    };
    let dimensions = f.int_in("dimensions", 1, i128::from(u32::MAX))?;
    // llama.cpp's: -1 none, 0 int16 range, 1 taxicab, 2 Euclidean (the default), p > 2 p-norm.
    let normalize = match f.integer("embd_normalize")? {
        None => crate::engine::Normalize::EUCLIDEAN,
        Some(p) => i32::try_from(p)
            .map_err(|_| ApiError::invalid_value("embd_normalize", format!("{p} is too large.")))
            .and_then(|p| {
                crate::engine::Normalize::new(p).map_err(|e| match e {
                    crate::engine::EngineError::InvalidParameter { message, .. } => {
                        ApiError::invalid_value("embd_normalize", message)
                    }
                    other => ApiError::invalid_value("embd_normalize", other),
                })
            })?,
    };
    Ok(EmbeddingsRequest {
        model,
        request: crate::engine::service::EmbedRequest {
            inputs,
            pooling: None,
            normalize,
            truncate: false,
        },
        encoding_format,
        dimensions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat_err(body: Value) -> ApiError {
        match chat(&body) {
            Err(e) => e,
            Ok(p) => panic!("accepted: {p:?}"),
        }
    }

    #[test]
    fn chat_maps_fields() {
        let p = chat(&json!({
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]}
            ],
            "temperature": 0, "top_p": 0, "max_completion_tokens": 7, "stop": "x",
            "seed": -1, "n": 1, "logprobs": true, "top_logprobs": 3,
            "stream": true, "stream_options": {"include_usage": true}, "user": "ignored"
        }))
        .unwrap();
        assert!(p.stream && p.include_usage);
        assert_eq!(
            p.request.prompt,
            Prompt::Chat(vec![
                ChatMessage::new("system", "be brief"),
                ChatMessage::new("user", "hi")
            ])
        );
        let params = &p.request.params;
        assert_eq!(params.max_tokens, Some(7));
        assert_eq!(params.sampling.temperature, 0.0);
        // 0 is in OpenAI's range: the most likely token only.
        assert_eq!(params.sampling.top_p, 0.0);
        assert_eq!(params.sampling.seed, Some(u64::MAX));
        assert_eq!(params.stop, vec!["x".to_string()]);
        assert_eq!(p.request.logprobs, Some(3));
    }

    #[test]
    fn logit_bias_maps_ids_once() {
        let p = chat(
            &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "logit_bias": {"5": -100, "07": 3.5, "7": 1}}),
        )
        .unwrap();
        let mut bias = p.request.params.sampling.logit_bias;
        bias.sort_by_key(|b| b.0);
        assert_eq!(bias, vec![(5, -100.0), (7, 1.0)]);
    }

    #[test]
    fn response_formats_map_to_constraints() {
        let constraint = |format: Value| {
            let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                "response_format": format});
            chat(&body).unwrap().request.params.constraint
        };
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        assert_eq!(constraint(json!({"type": "text"})), None);
        assert_eq!(constraint(Value::Null), None);
        assert_eq!(
            constraint(json!({"type": "json_object"})),
            Some(Constraint::JsonObject)
        );
        // llama.cpp's server takes a schema beside json_object.
        assert_eq!(
            constraint(json!({"type": "json_object", "schema": schema})),
            Some(Constraint::JsonSchema(schema.clone()))
        );
        assert_eq!(
            constraint(json!({"type": "json_schema",
                "json_schema": {"name": "a", "strict": true, "schema": schema}})),
            Some(Constraint::JsonSchema(schema.clone()))
        );
        assert_eq!(
            constraint(json!({"type": "json_schema", "json_schema": {"name": "a"}})),
            Some(Constraint::JsonObject)
        );
        // llama.cpp's own fields: a grammar (GBNF or Lark) and a schema.
        let gbnf = r#"root ::= "yes" | "no""#;
        let p = completion(&json!({"model": "m", "prompt": "x", "grammar": gbnf})).unwrap();
        assert_eq!(
            p.request.params.constraint,
            Some(Constraint::Gbnf(gbnf.into()))
        );
        assert_eq!(p.constraint_param, "grammar");
        let p =
            completion(&json!({"model": "m", "prompt": "x", "grammar": "start: \"a\""})).unwrap();
        assert_eq!(
            p.request.params.constraint,
            Some(Constraint::Lark("start: \"a\"".into()))
        );
        let p = chat(
            &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "json_schema": schema}),
        )
        .unwrap();
        assert_eq!(
            p.request.params.constraint,
            Some(Constraint::JsonSchema(schema.clone()))
        );
        assert_eq!(p.constraint_param, "json_schema");
        let both = completion(&json!({"model": "m", "prompt": "x", "grammar": gbnf,
            "response_format": {"type": "json_object"}}));
        assert_eq!(both.unwrap_err().param.as_deref(), Some("grammar"));
        let body = json!({"model": "m", "prompt": "x", "response_format": {"type": "json_object"}});
        assert_eq!(
            completion(&body).unwrap().request.params.constraint,
            Some(Constraint::JsonObject)
        );
        for (format, param) in [
            (json!("json"), "response_format"),
            (json!({}), "response_format.type"),
            (json!({"type": 1}), "response_format.type"),
            (
                json!({"type": "json_schema", "json_schema": []}),
                "response_format.json_schema",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"name": 5}}),
                "response_format.json_schema.name",
            ),
            (
                json!({"type": "json_object", "schema": true}),
                "response_format.schema",
            ),
        ] {
            let e = chat_err(
                json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                "response_format": format}),
            );
            assert_eq!(e.param.as_deref(), Some(param), "{format}: {e:?}");
        }
    }

    #[test]
    fn bad_fields_name_their_param() {
        let base = || json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let with = |k: &str, v: Value| {
            let mut b = base();
            b[k] = v;
            b
        };
        let cases = [
            (
                with("temperature", json!("hot")),
                "temperature",
                "invalid_type",
            ),
            (
                with("temperature", json!(3)),
                "temperature",
                "invalid_value",
            ),
            (with("top_p", json!(1.5)), "top_p", "invalid_value"),
            (with("top_p", json!(-0.1)), "top_p", "invalid_value"),
            (with("max_tokens", json!(0)), "max_tokens", "invalid_value"),
            (with("max_tokens", json!(1.5)), "max_tokens", "invalid_type"),
            (with("n", json!(2)), "n", "invalid_value"),
            (with("stop", json!([1])), "stop[0]", "invalid_type"),
            (with("stop", json!("")), "stop", "invalid_value"),
            (with("messages", json!("hi")), "messages", "invalid_type"),
            (with("messages", json!([])), "messages", "invalid_value"),
            (
                with("messages", json!([{"content": "x"}])),
                "messages[0].role",
                "missing_required_parameter",
            ),
            (
                with("messages", json!([{"role": "robot", "content": "x"}])),
                "messages[0].role",
                "invalid_value",
            ),
            (
                with("top_logprobs", json!(2)),
                "top_logprobs",
                "invalid_value",
            ),
            (with("tools", json!([])), "tools", "invalid_value"),
            (
                with("functions", json!([])),
                "functions",
                "unsupported_parameter",
            ),
            (
                with("stream_options", json!({"include_usage": true})),
                "stream_options",
                "invalid_value",
            ),
            (
                json!({"messages": []}),
                "model",
                "missing_required_parameter",
            ),
        ];
        for (body, param, code) in cases {
            let e = chat_err(body.clone());
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
            assert_eq!(e.code, Some(code), "{body}");
            assert_eq!(e.status, 400);
        }
        assert!(chat(&json!([1, 2])).is_err());
    }

    #[test]
    fn embeddings_bodies() {
        let inputs = |v: Value| embeddings(&json!({"input": v}), "input").map(|r| r.request.inputs);
        assert_eq!(inputs(json!("a")).unwrap(), [Prompt::Text("a".into())]);
        assert_eq!(
            inputs(json!(["a", [1, 2]])).unwrap(),
            [Prompt::Text("a".into()), Prompt::Tokens(vec![1, 2])]
        );
        assert_eq!(inputs(json!([5, 6])).unwrap(), [Prompt::Tokens(vec![5, 6])]);
        for (bad, param) in [
            (json!([]), "input"),
            (json!(7), "input"),
            (json!(["a", 7]), "input[1]"),
            (json!([[1, -1]]), "input[0][1]"),
            (json!([1, "a"]), "input[1]"),
        ] {
            let e = inputs(bad.clone()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{bad}: {}", e.message);
        }
        let r = embeddings(
            &json!({"content": "x", "encoding_format": "base64", "dimensions": 576,
                    "embd_normalize": -1, "model": "m"}),
            "content",
        )
        .unwrap();
        assert_eq!(r.encoding_format, EncodingFormat::Base64);
        assert_eq!(r.dimensions, Some(576));
        assert_eq!(r.request.normalize, crate::engine::Normalize::NONE);
        assert_eq!(r.model.as_deref(), Some("m"));
        let defaults = embeddings(&json!({"input": "x"}), "input").unwrap();
        assert_eq!(defaults.encoding_format, EncodingFormat::Float);
        assert_eq!(
            defaults.request.normalize,
            crate::engine::Normalize::EUCLIDEAN
        );
        assert!(defaults.model.is_none() && !defaults.request.truncate);
        for (body, param) in [
            (json!({}), "input"),
            (
                json!({"input": "x", "encoding_format": "int8"}),
                "encoding_format",
            ),
            (json!({"input": "x", "dimensions": 0}), "dimensions"),
            (
                json!({"input": "x", "embd_normalize": -2}),
                "embd_normalize",
            ),
            (
                json!({"input": "x", "embd_normalize": 1e10}),
                "embd_normalize",
            ),
        ] {
            let e = embeddings(&body, "input").unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
    }

    #[test]
    fn tokenize_and_detokenize_bodies() {
        assert_eq!(
            tokenize(&json!({"content": "hi", "with_pieces": true})).unwrap(),
            TokenizeRequest {
                content: "hi".into(),
                add_special: false,
                with_pieces: true
            }
        );
        assert_eq!(
            tokenize(&json!({})).unwrap_err().param.as_deref(),
            Some("content")
        );
        assert!(tokenize(&json!({"content": "x", "parse_special": false})).is_err());
        assert_eq!(detokenize(&json!({"tokens": [1, 2]})).unwrap(), vec![1, 2]);
        assert_eq!(
            detokenize(&json!({"tokens": [1, -2]}))
                .unwrap_err()
                .param
                .as_deref(),
            Some("tokens[1]")
        );
    }

    #[test]
    fn completion_prompts_and_logprobs() {
        let p = completion(&json!({"model": "m", "prompt": [1, 2, 3], "logprobs": 2})).unwrap();
        assert_eq!(p.request.prompt, Prompt::Tokens(vec![1, 2, 3]));
        assert_eq!(p.request.logprobs, Some(2));
        assert_eq!(p.request.params.max_tokens, Some(16));
        let p = completion(&json!({"model": "m", "prompt": ["one"]})).unwrap();
        assert_eq!(p.request.prompt, Prompt::Text("one".into()));
        for bad in [
            json!({"model": "m", "prompt": ["a", "b"]}),
            json!({"model": "m", "prompt": 5}),
            json!({"model": "m", "prompt": [-1]}),
            json!({"model": "m", "prompt": "x", "logprobs": true}),
            json!({"model": "m", "prompt": "x", "echo": true}),
            json!({"model": "m"}),
        ] {
            assert!(completion(&bad).is_err(), "{bad}");
        }
    }
}
