//! Chat templates: the model's Jinja template rendered with minijinja, as Hugging Face renders it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Value};

use super::{Tokenizer, TokenizerError};

/// ChatML, for models whose file carries no template.
pub(crate) const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (templates may know others, such as `tool`).
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

impl Tokenizer {
    /// Token ids of a conversation through the chat template, ending where the assistant
    /// speaks. A template that writes the BOS token itself does not get a second one.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, TokenizerError> {
        let text = self.apply_chat_template(messages, true)?;
        let bos_written = self
            .bos()
            .and_then(|b| self.token_text(b))
            .is_some_and(|b| !b.is_empty() && text.starts_with(b));
        self.encode(&text, !bos_written)
    }

    /// The prompt for `messages` in the model's chat format: the file's template, or ChatML when
    /// it has none. With `add_generation_prompt` the prompt ends where the assistant's reply
    /// begins. Special tokens appear as text (`<|im_start|>`), which `encode` parses back.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let text = |id: Option<u32>| id.and_then(|id| self.token_text(id)).unwrap_or("");
        render_chat_template(
            self.chat_template().unwrap_or(CHATML),
            messages,
            add_generation_prompt,
            text(self.bos()),
            text(self.eos()),
        )
    }
}

/// Renders a Hugging Face chat template. The environment matches `transformers`' own: blocks trim
/// their newline and leading whitespace, Python string and dict methods (`.strip()`, `.items()`)
/// work, `raise_exception` fails the render with its message, and `tojson` writes JSON the way
/// Python's `json.dumps` does.
pub fn render_chat_template(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String, TokenizerError> {
    let mut env = Environment::new();
    let syntax = SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .map_err(|e| TokenizerError::ChatTemplate(describe(&e)))?;
    env.set_syntax(syntax);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_filter("tojson", tojson);
    #[cfg(not(target_arch = "wasm32"))]
    env.add_function("strftime_now", strftime_now);

    let template = env
        .template_from_str(template)
        .map_err(|e| TokenizerError::ChatTemplate(describe(&e)))?;
    let render = |messages: &[ChatMessage], add_generation_prompt: bool| {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                let mut map = BTreeMap::new();
                map.insert("role", Value::from(m.role.as_str()));
                map.insert("content", Value::from(m.content.as_str()));
                Value::from(map)
            })
            .collect();
        let mut ctx = BTreeMap::new();
        ctx.insert("messages", Value::from(messages));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        ctx.insert("bos_token", Value::from(bos_token));
        ctx.insert("eos_token", Value::from(eos_token));
        // transformers passes these as None when the caller has none; templates test for that.
        ctx.insert("tools", Value::from(()));
        ctx.insert("documents", Value::from(()));
        template.render(Value::from(ctx))
    };
    // A template without a turn for tool results (it fails on the role, or leaves the message
    // out) gets them as the user's words, one message for consecutive results (templates that
    // want turns to alternate refuse two user messages in a row); one without a system turn
    // gets the system prompt at the start of the first user message.
    const MARK: &str = "SovereignRoleProbe";
    let renders = |role: &str| {
        let probe = match role {
            "system" => vec![ChatMessage::system(MARK), ChatMessage::user("?")],
            _ => vec![
                ChatMessage::user("?"),
                ChatMessage::assistant("!"),
                ChatMessage::new(role, MARK),
            ],
        };
        render(&probe, false).is_ok_and(|text| text.contains(MARK))
    };
    let mut messages: std::borrow::Cow<[ChatMessage]> = messages.into();
    if messages.iter().any(|m| m.role == "tool") && !renders("tool") {
        let mut merged: Vec<ChatMessage> = Vec::with_capacity(messages.len());
        let mut after_tool = false;
        for m in messages.iter() {
            match merged.last_mut() {
                Some(prev) if m.role == "tool" && after_tool => {
                    prev.content.push('\n');
                    prev.content.push_str(&m.content);
                }
                _ if m.role == "tool" => merged.push(ChatMessage::user(m.content.clone())),
                _ => merged.push(m.clone()),
            }
            after_tool = m.role == "tool";
        }
        messages = merged.into();
    }
    if messages.first().is_some_and(|m| m.role == "system") && !renders("system") {
        let mut rest = messages[1..].to_vec();
        let system = &messages[0].content;
        match rest.iter_mut().find(|m| m.role == "user") {
            Some(user) => user.content = format!("{system}\n\n{}", user.content),
            None => rest.insert(0, ChatMessage::user(system.clone())),
        }
        messages = rest.into();
    }
    render(&messages, add_generation_prompt).map_err(|e| TokenizerError::ChatTemplate(describe(&e)))
}

/// The error with its cause chain: minijinja keeps the interesting part (which filter, which
/// line) in the detail and the source.
fn describe(e: &Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let _ = write!(msg, ": {s}");
        source = s.source();
    }
    msg
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)` as `transformers` provides it: Llama 3.x templates put today's date in
/// the system prompt. UTC. In the browser `std` has no clock, so the function is left undefined
/// there and such templates use their own fallback date.
#[cfg(not(target_arch = "wasm32"))]
fn strftime_now(format: String) -> Result<Value, Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(Value::from(strftime(&format, now)))
}

/// The common `strftime` directives for a UTC time; others are copied through unchanged.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn strftime(format: &str, unix_secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
    ];
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    // Days to a civil date (Howard Hinnant's algorithm), March-based years.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let is_leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let before: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = before[(month - 1) as usize] + day + i64::from(is_leap && month > 2);
    let weekday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let month_name = MONTHS[(month - 1) as usize];

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('Y') => write!(out, "{year}"),
            Some('y') => write!(out, "{:02}", year.rem_euclid(100)),
            Some('m') => write!(out, "{month:02}"),
            Some('d') => write!(out, "{day:02}"),
            Some('j') => write!(out, "{yday:03}"),
            Some('H') => write!(out, "{:02}", secs / 3600),
            Some('M') => write!(out, "{:02}", secs / 60 % 60),
            Some('S') => write!(out, "{:02}", secs % 60),
            Some('B') => write!(out, "{month_name}"),
            Some('b') => write!(out, "{}", &month_name[..3]),
            Some('A') => write!(out, "{}", DAYS[weekday]),
            Some('a') => write!(out, "{}", &DAYS[weekday][..3]),
            Some('%') => write!(out, "%"),
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        };
    }
    out
}

/// `tojson` as `transformers` defines it: `json.dumps(x, ensure_ascii=False, indent=indent)`.
/// Python's separators are `", "` and `": "` without indent and `","` and `": "` with it; tool
/// definitions reach the model in this exact spelling, so it matters.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, value, indent, sort_keys.unwrap_or(false), 0, 0)?;
    Ok(Value::from(out))
}

/// Nesting beyond this is a cycle or an attack, not a tool schema.
const MAX_JSON_DEPTH: usize = 128;

fn write_json(
    out: &mut String,
    value: &Value,
    indent: Option<usize>,
    sort_keys: bool,
    level: usize,
    depth: usize,
) -> Result<(), Error> {
    if depth > MAX_JSON_DEPTH {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: value nested too deeply",
        ));
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', width * level));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = value.as_i64() {
                let _ = write!(out, "{i}");
            } else {
                let f = f64::try_from(value.clone()).unwrap_or(f64::NAN);
                if !f.is_finite() {
                    out.push_str(if f.is_nan() {
                        "NaN"
                    } else if f > 0.0 {
                        "Infinity"
                    } else {
                        "-Infinity"
                    });
                } else if f.fract() == 0.0 && f.abs() < 1e16 {
                    let _ = write!(out, "{f:.1}");
                } else {
                    let _ = write!(out, "{f}");
                }
            }
        }
        ValueKind::String => write_json_string(out, value.as_str().unwrap_or_default()),
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                match key.as_str() {
                    Some(k) => write_json_string(out, k),
                    None => write_json_string(out, &key.to_string()),
                }
                out.push_str(": ");
                let item = value.get_item(key)?;
                write_json(out, &item, indent, sort_keys, level + 1, depth + 1)?;
            }
            newline(out, level);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                write_json(out, item, indent, sort_keys, level + 1, depth + 1)?;
            }
            newline(out, level);
            out.push(']');
        }
        _ => write_json_string(out, &value.to_string()),
    }
    Ok(())
}

fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &str, messages: &[ChatMessage], gen_prompt: bool) -> String {
        render_chat_template(template, messages, gen_prompt, "<s>", "</s>").unwrap()
    }

    #[test]
    fn chatml_fallback() {
        let out = render(
            CHATML,
            &[ChatMessage::system("Be brief."), ChatMessage::user("Hi")],
            true,
        );
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let out = render(CHATML, &[ChatMessage::user("Hi")], false);
        assert_eq!(out, "<|im_start|>user\nHi<|im_end|>\n");
    }

    #[test]
    fn python_methods_and_block_trimming() {
        let template = "{{ bos_token }}\n{% for m in messages %}\n    {% if m.role.startswith('us') %}[{{ m['content'].strip().upper() }}]{% endif %}\n{% endfor %}{{ eos_token }}";
        let out = render(template, &[ChatMessage::user("  hi  ")], false);
        assert_eq!(out, "<s>\n[HI]</s>");
    }

    #[test]
    fn raise_exception_fails_with_its_message() {
        let template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}ok";
        let err = render_chat_template(template, &[ChatMessage::assistant("x")], false, "", "")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("Conversation must start with user"),
            "{err}"
        );
        assert_eq!(render(template, &[ChatMessage::user("x")], false), "ok");
    }

    #[test]
    fn tool_results_go_in_as_user_turns_where_the_template_has_none() {
        let conversation = [
            ChatMessage::user("weather?"),
            ChatMessage::assistant("call"),
            ChatMessage::new("tool", "21C"),
        ];
        // ChatML writes any role.
        let out = render(CHATML, &conversation, false);
        assert!(out.ends_with("<|im_start|>tool\n21C<|im_end|>\n"), "{out}");
        // A template that refuses other roles gets the result as the user's.
        let strict = "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m.role) }}{% endif %}[{{ m.role }}:{{ m.content }}]{% endfor %}";
        assert_eq!(
            render(strict, &conversation, false),
            "[user:weather?][assistant:call][user:21C]"
        );
        // So does one that would leave it out.
        let silent = "{% for m in messages %}{% if m.role in ['user', 'assistant'] %}[{{ m.role }}:{{ m.content }}]{% endif %}{% endfor %}";
        assert_eq!(
            render(silent, &conversation, false),
            "[user:weather?][assistant:call][user:21C]"
        );
        // Several results in a row are one user message there.
        let two = [
            ChatMessage::user("weather?"),
            ChatMessage::assistant("call"),
            ChatMessage::new("tool", "21C"),
            ChatMessage::new("tool", "sunny"),
        ];
        assert_eq!(
            render(strict, &two, false),
            "[user:weather?][assistant:call][user:21C\nsunny]"
        );
        // A template that writes tool content as JSON still shows it has a turn for it.
        let json_content =
            "{% for m in messages %}[{{ m.role }}:{{ m.content | tojson }}]{% endfor %}";
        assert_eq!(
            render(json_content, &conversation, false),
            "[user:\"weather?\"][assistant:\"call\"][tool:\"21C\"]"
        );
    }

    #[test]
    fn a_template_without_a_system_turn_gets_the_system_prompt_in_the_first_user_message() {
        let no_system = "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}[{{ m.role }}:{{ m.content }}]{% endfor %}";
        let conversation = [
            ChatMessage::system("Be brief."),
            ChatMessage::user("Hi"),
            ChatMessage::assistant("Hello"),
        ];
        assert_eq!(
            render(no_system, &conversation, false),
            "[user:Be brief.\n\nHi][assistant:Hello]"
        );
        // A template that writes the system turn keeps it.
        assert!(render(CHATML, &conversation, false).starts_with("<|im_start|>system\nBe brief."));
    }

    #[test]
    fn syntax_errors_are_reported() {
        let err = render_chat_template("{% for %}", &[], false, "", "").unwrap_err();
        assert!(matches!(err, TokenizerError::ChatTemplate(_)), "{err}");
    }

    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn strftime_dates() {
        assert_eq!(strftime("%d %b %Y", 0), "01 Jan 1970");
        assert_eq!(
            strftime("%A %a %B %b %d %m %y %Y %H:%M:%S %j %% %q", 1_700_000_000),
            "Tuesday Tue November Nov 14 11 23 2023 22:13:20 318 % %q"
        );
        // 2024-02-29, a leap day.
        assert_eq!(strftime("%Y-%m-%d %j", 1_709_164_800), "2024-02-29 060");
        assert_eq!(strftime("%Y-%m-%d %j", 1_735_603_200), "2024-12-31 366");
        let today = render("{{ strftime_now('%Y') }}", &[], false);
        assert!(today.parse::<u32>().unwrap() >= 2025, "{today}");
    }

    #[test]
    fn tools_are_none_like_in_transformers() {
        let out = render(
            "{% if tools is not none %}tools{% else %}none{% endif %}",
            &[],
            false,
        );
        assert_eq!(out, "none");
    }

    #[test]
    fn tojson_like_python() {
        let template = "{{ messages | tojson }}|{{ {'a': [1, 2.5, none, true], 'b': 'x\"\\n'} | tojson(indent=2) }}|{{ 'é' | tojson }}";
        let out = render(template, &[ChatMessage::user("hi")], false);
        assert_eq!(
            out,
            "[{\"content\": \"hi\", \"role\": \"user\"}]|{\n  \"a\": [\n    1,\n    2.5,\n    null,\n    true\n  ],\n  \"b\": \"x\\\"\\n\"\n}|\"é\""
        );
    }
}
