//! Tool calling (OpenAI's `tools`) for any model, whatever its chat template knows of tools.
//!
//! The tools are described in the system prompt with one reply format, and the reply is held to
//! that format by a JSON schema (constrained sampling), so it always parses:
//!
//! ```text
//! {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}
//! {"response": "Hello! How can I help?"}
//! ```
//!
//! A model trained on another tool format still follows this one (the grammar allows nothing
//! else), and one trained on none gets a format it can be told. Earlier calls and their results
//! go back into the conversation in the same format. The reply is read back into OpenAI's
//! `tool_calls` or `content`; a direct reply streams as it is generated.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value, json};

use crate::engine::Constraint;
use crate::tokenizer::ChatMessage;

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// The JSON schema of the arguments.
    pub parameters: Value,
}

/// `tool_choice`, when tools are in play (`"none"` leaves them out altogether).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model calls tools or replies, as it sees fit.
    Auto,
    /// The model calls at least one tool.
    Required,
    /// The model calls this tool.
    Function(String),
}

/// The tools of one request and how the model may use them.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    pub tools: Vec<Tool>,
    pub choice: ToolChoice,
    /// Several calls in one reply (`parallel_tool_calls`).
    pub parallel: bool,
    /// The JSON schema of a direct reply: a string, or what `response_format` asks for.
    pub response: Value,
}

/// What a direct reply starts with when it is a string, in the layout the grammar writes
/// (compact, a space after `:`): its text streams from here.
const RESPONSE_PREFIX: &str = "{\"response\": \"";
/// What a direct reply of any JSON value starts with.
const RESPONSE_VALUE_PREFIX: &str = "{\"response\": ";

impl Tools {
    /// The tools a reply may call.
    fn callable(&self) -> impl Iterator<Item = (usize, &Tool)> {
        self.tools
            .iter()
            .enumerate()
            .filter(|(_, t)| match &self.choice {
                ToolChoice::Function(name) => &t.name == name,
                ToolChoice::Auto | ToolChoice::Required => true,
            })
    }

    /// Whether the model may reply without calling a tool.
    fn may_reply(&self) -> bool {
        self.choice == ToolChoice::Auto
    }

    /// What the system prompt says about the tools and the reply format.
    pub fn system_prompt(&self) -> String {
        let list: Vec<Value> = self
            .callable()
            .map(|(_, t)| {
                let mut f = Map::new();
                f.insert("name".into(), Value::String(t.name.clone()));
                if let Some(d) = &t.description {
                    f.insert("description".into(), Value::String(d.clone()));
                }
                f.insert("parameters".into(), t.parameters.clone());
                Value::Object(f)
            })
            .collect();
        let list = serde_json::to_string(&list).unwrap_or_default();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "You can call these tools (each with a JSON schema of its arguments):\n{list}\n"
        );
        let call = r#"{"tool_calls": [{"name": "<tool name>", "arguments": {<the arguments>}}]}"#;
        match &self.choice {
            ToolChoice::Auto => {
                let _ = write!(
                    s,
                    "Answer with one JSON object. To call a tool: {call}\nTo answer the user \
                     directly: {{\"response\": \"<your answer>\"}}"
                );
            }
            ToolChoice::Required => {
                let _ = write!(s, "Answer by calling a tool, with one JSON object: {call}");
            }
            ToolChoice::Function(name) => {
                let _ = write!(
                    s,
                    "Answer by calling the tool {name}, with one JSON object: {call}"
                );
            }
        }
        if self.parallel {
            s.push_str("\nSeveral calls may go in the list.");
        }
        s.push_str(
            "\nEach tool's result comes back as {\"tool_response\": {\"name\": \"<tool name>\", \
             \"content\": <the result>}}.",
        );
        s
    }

    /// Adds the tools to the conversation's system prompt (a system message of its own when the
    /// conversation has none).
    pub fn add_to(&self, conversation: &mut Vec<ChatMessage>) {
        let prompt = self.system_prompt();
        match conversation.first_mut() {
            Some(first) if first.role == "system" => {
                if !first.content.is_empty() {
                    first.content.push_str("\n\n");
                }
                first.content.push_str(&prompt);
            }
            _ => conversation.insert(0, ChatMessage::system(prompt)),
        }
    }

    /// The JSON schema every reply is held to.
    pub fn schema(&self) -> Value {
        let mut defs = Map::new();
        let calls: Vec<Value> = self
            .callable()
            .map(|(i, t)| {
                let mut parameters = t.parameters.clone();
                close_objects(&mut parameters);
                json!({
                    "type": "object",
                    "properties": {
                        "name": {"const": t.name},
                        "arguments": embed(&parameters, &format!("tool_{i}"), &mut defs),
                    },
                    "required": ["name", "arguments"],
                    "additionalProperties": false,
                })
            })
            .collect();
        let mut list = json!({
            "type": "array",
            "items": if calls.len() == 1 { calls[0].clone() } else { json!({"anyOf": calls}) },
            "minItems": 1,
        });
        if !self.parallel {
            list["maxItems"] = json!(1);
        }
        let call_reply = json!({
            "type": "object",
            "properties": {"tool_calls": list},
            "required": ["tool_calls"],
            "additionalProperties": false,
        });
        let mut schema = if self.may_reply() {
            let direct = json!({
                "type": "object",
                "properties": {"response": embed(&self.response, "response", &mut defs)},
                "required": ["response"],
                "additionalProperties": false,
            });
            json!({"anyOf": [call_reply, direct]})
        } else {
            call_reply
        };
        if !defs.is_empty() {
            schema["$defs"] = Value::Object(defs);
        }
        schema
    }

    /// The constraint for the engine.
    pub fn constraint(&self) -> Constraint {
        Constraint::JsonSchema(self.schema())
    }

    /// Whether a direct reply is a string, which streams as it comes.
    fn reply_streams(&self) -> bool {
        self.may_reply() && self.response.get("type") == Some(&json!("string"))
    }
}

/// Gives every object schema with `properties` and no word on others `additionalProperties:
/// false`, as llama.cpp does: arguments a tool does not define are a small model's invention.
/// Schemas whose properties are combined with others' stay open: one beside `allOf`, `anyOf`,
/// `oneOf` or `$ref`, the parts of an `allOf`, and the alternatives of an object that has
/// properties of its own (closing would refuse the properties of the rest). Conditions (`not`,
/// `if`) are left as they are: closing would change what they say.
fn close_objects(schema: &mut Value) {
    close_objects_at(schema, true)
}

fn close_objects_at(schema: &mut Value, close_here: bool) {
    let Value::Object(m) = schema else { return };
    let combined = ["allOf", "anyOf", "oneOf", "$ref"];
    let open = [
        "additionalProperties",
        "patternProperties",
        "unevaluatedProperties",
    ];
    let own_properties = m.contains_key("properties") || m.contains_key("$ref");
    if close_here
        && m.contains_key("properties")
        && !open.iter().chain(&combined).any(|k| m.contains_key(*k))
    {
        m.insert("additionalProperties".into(), Value::Bool(false));
    }
    for (key, value) in m.iter_mut() {
        match (key.as_str(), value) {
            ("properties" | "patternProperties" | "$defs" | "definitions", Value::Object(map)) => {
                map.values_mut().for_each(close_objects)
            }
            ("anyOf" | "oneOf", Value::Array(list)) => list
                .iter_mut()
                .for_each(|v| close_objects_at(v, !own_properties)),
            ("allOf", Value::Array(list)) => {
                list.iter_mut().for_each(|v| close_objects_at(v, false))
            }
            ("prefixItems" | "items", Value::Array(list)) => {
                list.iter_mut().for_each(close_objects)
            }
            ("items" | "additionalProperties", v @ Value::Object(_)) => close_objects(v),
            _ => {}
        }
    }
}

/// `schema` to place inside the reply's schema. One that refers into itself (`$ref: "#/..."`,
/// as pydantic writes nested models) moves whole under the reply's `$defs` as `key`, its
/// references rewritten to point there, so they resolve as they did.
fn embed(schema: &Value, key: &str, defs: &mut Map<String, Value>) -> Value {
    fn has_local_ref(v: &Value) -> bool {
        match v {
            Value::Object(m) => m.iter().any(|(k, v)| {
                (k == "$ref" && v.as_str().is_some_and(|r| r.starts_with('#'))) || has_local_ref(v)
            }),
            Value::Array(a) => a.iter().any(has_local_ref),
            _ => false,
        }
    }
    fn rebase(v: &mut Value, base: &str) {
        match v {
            Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    match v {
                        Value::String(r) if k == "$ref" && r.starts_with('#') => {
                            *r = format!("{base}{}", &r[1..]);
                        }
                        _ => rebase(v, base),
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|v| rebase(v, base)),
            _ => {}
        }
    }
    if !has_local_ref(schema) {
        return schema.clone();
    }
    let base = format!("#/$defs/{key}");
    let mut moved = schema.clone();
    rebase(&mut moved, &base);
    // An `$id` would make the rewritten references resolve against it.
    if let Value::Object(m) = &mut moved {
        m.remove("$id");
        m.remove("$schema");
    }
    defs.insert(key.to_string(), moved);
    json!({ "$ref": base })
}

/// A call the model made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as a JSON text, as OpenAI hands them over.
    pub arguments: String,
}

/// An id for a call, unique within this process and unlikely to repeat across restarts.
fn call_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = web_time::SystemTime::now()
        .duration_since(web_time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("call_{:016x}{n:04x}", nanos ^ (n << 48))
}

/// A reply read back: a text, the calls, or (cut short) what was written of either.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reply {
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
}

/// Reads a reply as it is generated: a direct reply's text is handed out as it comes; calls
/// are read whole at the end.
#[derive(Debug)]
pub struct ReplyParser {
    raw: String,
    /// Whether a direct reply may stream (it is a string).
    streams: bool,
    /// Bytes of `raw` past [`RESPONSE_PREFIX`] read so far, and the text they decode to.
    read: usize,
    text: String,
    /// The direct reply's closing quote was read.
    closed: bool,
}

impl ReplyParser {
    pub fn new(tools: &Tools) -> Self {
        ReplyParser {
            raw: String::new(),
            streams: tools.reply_streams(),
            read: 0,
            text: String::new(),
            closed: false,
        }
    }

    /// Takes generated text; returns the part of a direct reply's text it completes.
    pub fn push(&mut self, piece: &str) -> String {
        self.raw.push_str(piece);
        if !self.streams || self.closed || !self.raw.starts_with(RESPONSE_PREFIX) {
            return String::new();
        }
        let rest = &self.raw[RESPONSE_PREFIX.len() + self.read..];
        let (decoded, used, closed) = decode_string_prefix(rest);
        self.read += used;
        self.closed = closed;
        self.text.push_str(&decoded);
        decoded
    }

    /// The whole reply, and the part of its text that [`push`](Self::push) has not handed out.
    pub fn finish(&self) -> (Reply, String) {
        let parsed: Option<Value> = serde_json::from_str(self.raw.trim()).ok();
        let reply = match parsed {
            Some(Value::Object(mut m)) if m.contains_key("tool_calls") => {
                let calls = match m.remove("tool_calls") {
                    Some(Value::Array(calls)) => calls,
                    _ => Vec::new(),
                };
                let tool_calls = calls
                    .into_iter()
                    .map(|c| ToolCall {
                        id: call_id(),
                        name: c["name"].as_str().unwrap_or_default().to_string(),
                        arguments: serde_json::to_string(&c["arguments"]).unwrap_or_default(),
                    })
                    .collect();
                Reply {
                    content: None,
                    tool_calls,
                }
            }
            Some(Value::Object(m)) if m.contains_key("response") => Reply {
                content: Some(match &m["response"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                }),
                tool_calls: Vec::new(),
            },
            // Cut short (the token limit, a stop string): what was written, as text.
            _ if self.raw.starts_with(RESPONSE_PREFIX) && self.streams => Reply {
                content: Some(self.text.clone()),
                tool_calls: Vec::new(),
            },
            _ if self.raw.starts_with(RESPONSE_VALUE_PREFIX) => Reply {
                content: Some(self.raw[RESPONSE_VALUE_PREFIX.len()..].to_string()),
                tool_calls: Vec::new(),
            },
            _ => Reply {
                content: Some(self.raw.clone()),
                tool_calls: Vec::new(),
            },
        };
        let unsent = match &reply.content {
            Some(c) => c.strip_prefix(self.text.as_str()).unwrap_or(c).to_string(),
            None => String::new(),
        };
        (reply, unsent)
    }
}

/// Decodes the start of a JSON string's body (past its opening quote): the text of every
/// complete character and escape, the bytes they took, and whether the closing quote was read
/// (and taken). An escape cut short waits for the rest.
fn decode_string_prefix(s: &str) -> (String, usize, bool) {
    let b = s.as_bytes();
    let hex = |at: usize| -> Option<u32> {
        let digits = s.get(at..at + 4)?;
        u32::from_str_radix(digits, 16).ok()
    };
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => return (out, i + 1, true),
            b'\\' => {
                let Some(&e) = b.get(i + 1) else { break };
                let simple = match e {
                    b'"' => Some('"'),
                    b'\\' => Some('\\'),
                    b'/' => Some('/'),
                    b'b' => Some('\u{08}'),
                    b'f' => Some('\u{0c}'),
                    b'n' => Some('\n'),
                    b'r' => Some('\r'),
                    b't' => Some('\t'),
                    _ => None,
                };
                if let Some(c) = simple {
                    out.push(c);
                    i += 2;
                    continue;
                }
                if e != b'u' {
                    // Not JSON; the grammar never writes it. Keep it as written.
                    out.push('\\');
                    i += 1;
                    continue;
                }
                let Some(code) = hex(i + 2) else {
                    if s.len() < i + 6 {
                        break;
                    }
                    out.push('\u{fffd}');
                    i += 2;
                    continue;
                };
                if (0xD800..0xDC00).contains(&code) {
                    // A high surrogate: its low half is the next escape.
                    if s.len() < i + 12 {
                        break;
                    }
                    let low = (s.get(i + 6..i + 8) == Some("\\u"))
                        .then(|| hex(i + 8))
                        .flatten()
                        .filter(|l| (0xDC00..0xE000).contains(l));
                    if let Some(low) = low {
                        let c = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                        out.push(char::from_u32(c).unwrap_or('\u{fffd}'));
                        i += 12;
                    } else {
                        out.push('\u{fffd}');
                        i += 6;
                    }
                    continue;
                }
                out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                i += 6;
            }
            _ => {
                let c = s[i..].chars().next().unwrap_or('\u{fffd}');
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    (out, i, false)
}

/// An assistant turn that called tools, as the conversation holds it: in the reply format, so
/// the model sees its own earlier calls as it wrote them.
pub fn calls_message(content: &str, calls: &[(String, Value)]) -> ChatMessage {
    let list: Vec<Value> = calls
        .iter()
        .map(|(name, arguments)| json!({"name": name, "arguments": arguments}))
        .collect();
    let mut text = content.to_string();
    if !text.is_empty() {
        text.push('\n');
    }
    text.push_str(&compact(&json!({ "tool_calls": list })));
    ChatMessage::assistant(text)
}

/// A tool's result as the conversation holds it. A result that is JSON goes in as JSON.
pub fn result_message(name: &str, content: &str) -> ChatMessage {
    let value = match serde_json::from_str::<Value>(content) {
        Ok(v @ (Value::Object(_) | Value::Array(_))) => v,
        _ => Value::String(content.to_string()),
    };
    ChatMessage::new(
        "tool",
        compact(&json!({"tool_response": {"name": name, "content": value}})),
    )
}

/// JSON in the layout replies are written in: one line, a space after `,` and `:`.
fn compact(value: &Value) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, SpacedFormatter);
    if serde::Serialize::serialize(value, &mut ser).is_err() {
        return value.to_string();
    }
    String::from_utf8(out).unwrap_or_else(|_| value.to_string())
}

struct SpacedFormatter;

fn item_separator<W: ?Sized + std::io::Write>(writer: &mut W, first: bool) -> std::io::Result<()> {
    if first {
        Ok(())
    } else {
        writer.write_all(b", ")
    }
}

impl serde_json::ser::Formatter for SpacedFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        item_separator(writer, first)
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        item_separator(writer, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Tool {
        Tool {
            name: "get_weather".into(),
            description: Some("The weather in a city".into()),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"]}),
        }
    }

    fn tools(choice: ToolChoice, parallel: bool) -> Tools {
        Tools {
            tools: vec![
                weather(),
                Tool {
                    name: "now".into(),
                    description: None,
                    parameters: json!({"type": "object", "properties": {}}),
                },
            ],
            choice,
            parallel,
            response: json!({"type": "string"}),
        }
    }

    #[test]
    fn schema_follows_the_choice() {
        let auto = tools(ToolChoice::Auto, false).schema();
        assert_eq!(auto["anyOf"].as_array().unwrap().len(), 2);
        let calls = &auto["anyOf"][0]["properties"]["tool_calls"];
        assert_eq!(calls["maxItems"], 1);
        assert_eq!(
            calls["items"]["anyOf"][0]["properties"]["name"]["const"],
            "get_weather"
        );
        assert_eq!(
            calls["items"]["anyOf"][1]["properties"]["name"]["const"],
            "now"
        );
        assert_eq!(auto["anyOf"][1]["properties"]["response"]["type"], "string");

        let required = tools(ToolChoice::Required, true).schema();
        assert!(required.get("anyOf").is_none());
        assert!(
            required["properties"]["tool_calls"]
                .get("maxItems")
                .is_none()
        );

        // Arguments a tool does not define are refused, unless its schema allows others.
        let args = &calls["items"]["anyOf"][0]["properties"]["arguments"];
        assert_eq!(args["additionalProperties"], false);
        let mut open = tools(ToolChoice::Auto, false);
        open.tools[0].parameters = json!({"type": "object", "properties": {
            "a": {"type": "object", "properties": {}},
            "b": {"type": "array", "items": {"properties": {}}},
            "c": {"anyOf": [{"properties": {}}, {"type": "string"}]}},
            "additionalProperties": {"type": "object", "properties": {}},
            "$defs": {"d": {"properties": {}, "patternProperties": {}}}});
        let s = open.schema();
        let args = &s["anyOf"][0]["properties"]["tool_calls"]["items"]["anyOf"][0]["properties"]["arguments"];
        assert_eq!(args["properties"]["a"]["additionalProperties"], false);
        assert_eq!(
            args["properties"]["b"]["items"]["additionalProperties"],
            false
        );
        assert_eq!(
            args["properties"]["c"]["anyOf"][0]["additionalProperties"],
            false
        );
        assert_eq!(args["additionalProperties"]["additionalProperties"], false);
        assert!(args["$defs"]["d"].get("additionalProperties").is_none());
        // Combined schemas stay open: closing each part would refuse the others' properties.
        open.tools[0].parameters = json!({"type": "object",
            "allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}],
            "properties": {"c": {"type": "object", "properties": {},
                "anyOf": [{"properties": {}}]}}});
        let s = open.schema();
        let args = &s["anyOf"][0]["properties"]["tool_calls"]["items"]["anyOf"][0]["properties"]["arguments"];
        assert!(args.get("additionalProperties").is_none(), "{args}");
        assert!(args["allOf"][0].get("additionalProperties").is_none());
        assert!(
            args["properties"]["c"]
                .get("additionalProperties")
                .is_none()
        );
        // Alternatives beside the object's own properties stay open.
        assert!(
            args["properties"]["c"]["anyOf"][0]
                .get("additionalProperties")
                .is_none()
        );
        open.tools[0].parameters = json!({"anyOf": [
            {"properties": {"x": {"type": "object", "properties": {}}}},
            {"type": "string"}]});
        let s = open.schema();
        let args = &s["anyOf"][0]["properties"]["tool_calls"]["items"]["anyOf"][0]["properties"]["arguments"];
        // A plain union's alternatives are whole objects: they close, and so do their insides.
        assert_eq!(args["anyOf"][0]["additionalProperties"], false);
        assert_eq!(
            args["anyOf"][0]["properties"]["x"]["additionalProperties"],
            false
        );
        // The prompt shows the schema as given.
        assert!(
            !open
                .system_prompt()
                .contains("additionalProperties\":false")
        );

        let named = tools(ToolChoice::Function("now".into()), false).schema();
        let item = &named["properties"]["tool_calls"]["items"];
        assert_eq!(item["properties"]["name"]["const"], "now");
        let prompt = tools(ToolChoice::Function("now".into()), false).system_prompt();
        assert!(
            prompt.contains("\"now\"") && !prompt.contains("get_weather"),
            "{prompt}"
        );
    }

    #[test]
    fn schemas_that_refer_into_themselves_move_under_defs() {
        let mut t = tools(ToolChoice::Required, false);
        t.tools[0].parameters = json!({
            "$id": "https://example.com/place.json",
            "type": "object",
            "properties": {"place": {"$ref": "#/$defs/Place"}},
            "$defs": {"Place": {"type": "object", "properties": {"near": {"$ref": "#"}}}},
        });
        let s = t.schema();
        let item = &s["properties"]["tool_calls"]["items"]["anyOf"][0];
        assert_eq!(item["properties"]["arguments"]["$ref"], "#/$defs/tool_0");
        let moved = &s["$defs"]["tool_0"];
        assert!(moved.get("$id").is_none());
        assert_eq!(
            moved["properties"]["place"]["$ref"],
            "#/$defs/tool_0/$defs/Place"
        );
        assert_eq!(
            moved["$defs"]["Place"]["properties"]["near"]["$ref"],
            "#/$defs/tool_0"
        );
        // A schema without references stays inline.
        assert!(s["$defs"].get("tool_1").is_none());
    }

    #[test]
    fn conversation_gets_the_tools_in_its_system_prompt() {
        let t = tools(ToolChoice::Auto, false);
        let mut c = vec![ChatMessage::user("hi")];
        t.add_to(&mut c);
        assert_eq!(c[0].role, "system");
        assert!(c[0].content.contains("get_weather"));
        let mut c = vec![ChatMessage::system("Be brief."), ChatMessage::user("hi")];
        t.add_to(&mut c);
        assert_eq!(c.len(), 2);
        assert!(c[0].content.starts_with("Be brief.\n\nYou can call"));
    }

    #[test]
    fn replies_read_back_as_calls_or_text() {
        let t = tools(ToolChoice::Auto, true);
        let mut p = ReplyParser::new(&t);
        let raw = r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "now", "arguments": {}}]}"#;
        assert_eq!(p.push(raw), "");
        let (reply, unsent) = p.finish();
        assert_eq!(reply.content, None);
        assert_eq!(unsent, "");
        let names: Vec<_> = reply.tool_calls.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["get_weather", "now"]);
        assert_eq!(reply.tool_calls[0].arguments, r#"{"city":"Paris"}"#);
        assert_ne!(reply.tool_calls[0].id, reply.tool_calls[1].id);
        assert!(reply.tool_calls[0].id.starts_with("call_"));

        // A direct reply streams in pieces cut anywhere, escapes and surrogate pairs included.
        let text = "Caf\u{e9} \"ok\"\n\\ \u{1f355}\u{7f}";
        let raw = format!(
            "{}{}\"}}",
            RESPONSE_PREFIX, r#"Caf\u00e9 \"ok\"\n\\ \ud83c\udf55\u007f"#
        );
        for cut in 1..raw.len() {
            let mut p = ReplyParser::new(&t);
            let mut streamed = String::new();
            let mut i = 0;
            while i < raw.len() {
                let mut j = (i + cut).min(raw.len());
                while !raw.is_char_boundary(j) {
                    j += 1;
                }
                streamed.push_str(&p.push(&raw[i..j]));
                i = j;
            }
            let (reply, unsent) = p.finish();
            assert_eq!(streamed, text, "cut {cut}");
            assert_eq!(unsent, "");
            assert_eq!(reply.content.as_deref(), Some(text));
            assert!(reply.tool_calls.is_empty());
        }

        // Cut short by the token limit: what was written.
        let mut p = ReplyParser::new(&t);
        assert_eq!(p.push(r#"{"response": "Hel"#), "Hel");
        assert_eq!(p.push(r#"lo \u00"#), "lo ");
        let (reply, unsent) = p.finish();
        assert_eq!(reply.content.as_deref(), Some("Hello "));
        assert_eq!(unsent, "");
        let mut p = ReplyParser::new(&t);
        p.push(r#"{"tool_calls": [{"name": "get_"#);
        let (reply, unsent) = p.finish();
        assert_eq!(
            reply.content.as_deref(),
            Some(r#"{"tool_calls": [{"name": "get_"#)
        );
        assert_eq!(unsent, r#"{"tool_calls": [{"name": "get_"#);

        // A reply held to a JSON schema arrives whole, as JSON text.
        let mut t = tools(ToolChoice::Auto, false);
        t.response = json!({"type": "object"});
        let mut p = ReplyParser::new(&t);
        assert_eq!(p.push(r#"{"response": {"a": 1}}"#), "");
        let (reply, unsent) = p.finish();
        assert_eq!(reply.content.as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(unsent, r#"{"a":1}"#);
        let mut p = ReplyParser::new(&t);
        p.push(r#"{"response": {"a": [1, "#);
        assert_eq!(p.finish().0.content.as_deref(), Some(r#"{"a": [1, "#));
    }

    #[test]
    fn history_is_written_in_the_reply_format() {
        let m = calls_message("", &[("get_weather".into(), json!({"city": "Paris"}))]);
        assert_eq!(m.role, "assistant");
        assert_eq!(
            m.content,
            r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}"#
        );
        let m = result_message("get_weather", r#"{"temp":21}"#);
        assert_eq!(
            m.content,
            r#"{"tool_response": {"name": "get_weather", "content": {"temp": 21}}}"#
        );
        let m = result_message("now", "12:00");
        assert_eq!(
            m.content,
            r#"{"tool_response": {"name": "now", "content": "12:00"}}"#
        );
    }
}
