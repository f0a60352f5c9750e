//! `sovereign serve` as a client sees it: the built binary on a free port with the test model.
//! The bad-request set is checked here with raw HTTP; generation, streaming, concurrency,
//! cancellation and the prefix cache are checked by the official `openai` Python client
//! (`tests/server/*.py`), which must be installed (`python3 -m pip install openai`): these
//! tests fail without it, they never skip.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const API_KEY: &str = "test-key-1234";
const MODEL: &str = "test-model";
/// The context the server runs with: small, so an over-long prompt is cheap to send.
const CTX: u32 = 1024;
const MAX_BODY: usize = 100_000;

/// A running `sovereign serve`, killed on drop.
struct Server {
    child: Mutex<Child>,
    port: u16,
    log: PathBuf,
}

impl Server {
    fn start(name: &str, args: &[&str]) -> Server {
        let port = free_port();
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("server-{name}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        let model = common::model_path();
        let child = Command::new(env!("CARGO_BIN_EXE_sovereign"))
            .arg("-v")
            .arg("serve")
            .arg("-m")
            .arg(&model)
            .args(["-c", &CTX.to_string(), "--port", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("cannot start the sovereign binary");
        let server = Server {
            child: Mutex::new(child),
            port,
            log,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.lock().unwrap().try_wait() {
                panic!("the server exited ({status}):\n{}", self.log_tail());
            }
            if let Ok(r) = try_http(self.port, &raw("GET", "/health", &[], None))
                && r.status == 200
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the server did not come up:\n{}", self.log_tail());
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(mut child) = self.child.lock() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One server shared by the tests that run at the same time, started again if every test that
/// used it has finished (as with `--test-threads=1`).
fn shared(slot: &Mutex<Weak<Server>>, start: impl FnOnce() -> Server) -> Arc<Server> {
    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(server) = slot.upgrade() {
        return server;
    }
    let server = Arc::new(start());
    *slot = Arc::downgrade(&server);
    server
}

/// The server most tests talk to: an API key, an alias, one CORS origin, one extra host.
fn main_server() -> Arc<Server> {
    static SLOT: Mutex<Weak<Server>> = Mutex::new(Weak::new());
    shared(&SLOT, || {
        Server::start(
            "main",
            &[
                "--api-key",
                API_KEY,
                "--alias",
                MODEL,
                "--cors-origin",
                "http://allowed.example",
                "--allowed-host",
                "api.test",
                "--max-body-bytes",
                &MAX_BODY.to_string(),
                // 32 streams decode together; their pages come from a pool of a quarter of
                // their contexts (f16: 384 bytes per position and layer for K and for V).
                "--parallel",
                "32",
                "--kv-tokens",
                "8192",
            ],
        )
    })
}

/// A server of one sequence slot and no queue, with every other setting at its default; each
/// test that fills it has its own, so that no other test frees or takes its slot.
fn full_server(name: &str) -> Server {
    Server::start(
        name,
        &["--alias", MODEL, "--max-queue", "0", "--parallel", "1"],
    )
}

/// Starts a long streamed completion and returns its connection once the first token has come:
/// the request holds a sequence slot until the connection is dropped.
fn hold_a_slot(port: u16) -> TcpStream {
    // It must not end on its own while the test runs: no end-of-generation token stops it.
    let body = json!({
        "model": MODEL, "prompt": "Once upon a time", "max_tokens": 900, "stream": true,
        "temperature": 0, "ignore_eos": true,
    });
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    stream
        .write_all(&raw(
            "POST",
            "/v1/completions",
            &[],
            Some(&body.to_string()),
        ))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\ndata: {") {
        let n = stream.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the stream ended: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&seen);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stream
}

/// Tests that read the engine's gauges or time it must not share it with each other.
fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// An HTTP/1.1 request. `headers` may replace the defaults (Host, Authorization, Content-Type).
fn raw(method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Vec<u8> {
    let mut all: Vec<(String, String)> = vec![
        ("Host".into(), "localhost".into()),
        ("Authorization".into(), format!("Bearer {API_KEY}")),
    ];
    if body.is_some() {
        all.push(("Content-Type".into(), "application/json".into()));
    }
    for (k, v) in headers {
        all.retain(|(name, _)| !name.eq_ignore_ascii_case(k));
        if !v.is_empty() {
            all.push((k.to_string(), v.to_string()));
        }
    }
    let mut out = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in &all {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        out.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body.unwrap_or("").as_bytes());
    bytes
}

fn parse_response(bytes: &[u8]) -> Response {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        let mut rest = body;
        let mut out = String::new();
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n.min(tail.len())]);
            rest = tail.get(n + 2..).unwrap_or("");
        }
        out
    } else {
        body.to_string()
    };
    Response {
        status,
        headers,
        body,
    }
}

fn try_http(port: u16, request: &[u8]) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.write_all(request)?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes)?;
    Ok(parse_response(&bytes))
}

fn http(port: u16, request: &[u8]) -> Response {
    try_http(port, request).unwrap_or_else(|e| panic!("request failed: {e}"))
}

/// Asserts an OpenAI-shaped error: the status, `type`, `code`, `param` (when given) and a
/// message, with nothing missing.
#[track_caller]
fn assert_error(
    what: &str,
    r: &Response,
    status: u16,
    kind: &str,
    code: Option<&str>,
    param: Option<&str>,
) {
    assert_eq!(r.status, status, "{what}: status; body {}", r.body);
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{what}: content type {:?}",
        r.header("content-type")
    );
    let v = r.json();
    let e = &v["error"];
    for key in ["message", "type", "param", "code"] {
        assert!(e.get(key).is_some(), "{what}: no error.{key} in {v}");
    }
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {v}"
    );
    assert_eq!(e["type"], kind, "{what}: type in {v}");
    if let Some(code) = code {
        assert_eq!(e["code"], code, "{what}: code in {v}");
    }
    if let Some(param) = param {
        assert_eq!(e["param"], param, "{what}: param in {v}");
    }
}

fn post(port: u16, path: &str, body: &Value) -> Response {
    http(port, &raw("POST", path, &[], Some(&body.to_string())))
}

fn chat(extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4,
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

fn metric(port: u16, name: &str) -> f64 {
    let r = http(port, &raw("GET", "/metrics", &[], None));
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{}", r.body))
}

#[test]
fn bad_requests_get_openai_errors_and_never_reach_the_engine() {
    let server = main_server();
    let _engine = exclusive();
    let port = server.port;
    let submitted = metric(port, "sovereign_requests_submitted_total");

    // API key: /health is open, everything else needs the key.
    let r = http(port, &raw("GET", "/health", &[("Authorization", "")], None));
    assert_eq!(r.status, 200);
    for (what, auth) in [
        ("no key", ""),
        ("wrong key", "Bearer nope"),
        ("no scheme", API_KEY),
    ] {
        let r = http(
            port,
            &raw("GET", "/v1/models", &[("Authorization", auth)], None),
        );
        assert_error(
            what,
            &r,
            401,
            "authentication_error",
            Some("invalid_api_key"),
            None,
        );
        let r = http(
            port,
            &raw(
                "POST",
                "/v1/chat/completions",
                &[("Authorization", auth)],
                Some(&chat(json!({})).to_string()),
            ),
        );
        assert_eq!(r.status, 401, "{what}");
    }
    let r = http(
        port,
        &raw(
            "GET",
            "/v1/models",
            &[("Authorization", "Basic dXNlcg==")],
            None,
        ),
    );
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not of the Bearer scheme"))
    );
    // The scheme's name is case-insensitive.
    let upper = format!("BEARER {API_KEY}");
    let r = http(
        port,
        &raw("GET", "/v1/models", &[("Authorization", &upper)], None),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = http(port, &raw("GET", "/v1/models", &[], None));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"][0]["id"], MODEL);
    let r = http(port, &raw("GET", &format!("/v1/models/{MODEL}"), &[], None));
    assert_eq!(r.status, 200);

    // Host allow-list: loopback names with any port and --allowed-host pass; others do not.
    for host in [
        "localhost:8080",
        "127.0.0.1",
        &format!("127.0.0.1:{port}"),
        "[::1]:1",
        "api.test",
        "API.test:443",
    ] {
        let r = http(port, &raw("GET", "/v1/models", &[("Host", host)], None));
        assert_eq!(r.status, 200, "Host {host}: {}", r.body);
    }
    for host in ["evil.example", "localhost.evil.example", "127.0.0.2:8080"] {
        let r = http(port, &raw("GET", "/v1/models", &[("Host", host)], None));
        assert_error(
            host,
            &r,
            403,
            "permission_error",
            Some("host_not_allowed"),
            None,
        );
        // Even where no key is needed.
        let r = http(port, &raw("GET", "/health", &[("Host", host)], None));
        assert_eq!(r.status, 403, "{host}");
    }

    // CORS: only the configured origin is let in, preflight included (it carries no key).
    let preflight = |origin: &str| {
        http(
            port,
            &raw(
                "OPTIONS",
                "/v1/chat/completions",
                &[
                    ("Authorization", ""),
                    ("Origin", origin),
                    ("Access-Control-Request-Method", "POST"),
                    (
                        "Access-Control-Request-Headers",
                        "authorization,content-type",
                    ),
                ],
                None,
            ),
        )
    };
    let r = preflight("http://allowed.example");
    assert!(r.status < 300, "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://allowed.example")
    );
    let r = preflight("http://evil.example");
    assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");
    let r = http(
        port,
        &raw(
            "GET",
            "/v1/models",
            &[("Origin", "http://allowed.example")],
            None,
        ),
    );
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://allowed.example")
    );

    // Body limit: by declared length (nothing sent), and counted for a chunked body.
    let mut big = raw("POST", "/v1/chat/completions", &[], None);
    big.truncate(big.len() - 2);
    big.extend_from_slice(b"Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n");
    let r = http(port, &big);
    assert_error(
        "declared too large",
        &r,
        413,
        "invalid_request_error",
        None,
        None,
    );
    let mut chunked = raw(
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        None,
    );
    chunked.truncate(chunked.len() - 2);
    chunked.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
    let piece = format!("{{\"pad\": \"{}\"", "x".repeat(MAX_BODY));
    chunked.extend_from_slice(format!("{:x}\r\n{piece}\r\n", piece.len()).as_bytes());
    let r = http(port, &chunked);
    assert_error(
        "chunked too large",
        &r,
        413,
        "invalid_request_error",
        None,
        None,
    );

    // Not JSON, malformed JSON, not an object.
    let r = http(
        port,
        &raw(
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "text/plain")],
            Some(&chat(json!({})).to_string()),
        ),
    );
    assert_error("text/plain", &r, 415, "invalid_request_error", None, None);
    for (what, body) in [
        ("malformed", "{\"model\": "),
        ("trailing garbage", "{} x"),
        ("empty", ""),
    ] {
        let r = http(port, &raw("POST", "/v1/chat/completions", &[], Some(body)));
        assert_error(
            what,
            &r,
            400,
            "invalid_request_error",
            Some("invalid_json"),
            None,
        );
    }
    let r = http(port, &raw("POST", "/v1/completions", &[], Some("[1, 2]")));
    assert_error("array body", &r, 400, "invalid_request_error", None, None);

    // Missing fields, wrong types, values out of range, unsupported features: each named.
    let chat_cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"messages": [{"role": "user", "content": "Hi"}]}),
            "model",
            "missing_required_parameter",
        ),
        (
            json!({"model": MODEL}),
            "messages",
            "missing_required_parameter",
        ),
        (chat(json!({"model": 5})), "model", "invalid_type"),
        (chat(json!({"messages": "Hi"})), "messages", "invalid_type"),
        (chat(json!({"messages": []})), "messages", "invalid_value"),
        (
            chat(json!({"messages": [{"role": "user"}]})),
            "messages[0].content",
            "missing_required_parameter",
        ),
        (
            chat(json!({"messages": [{"role": "robot", "content": "x"}]})),
            "messages[0].role",
            "invalid_value",
        ),
        (
            chat(json!({"messages": [{"role": "user", "content": 7}]})),
            "messages[0].content",
            "invalid_type",
        ),
        (
            chat(json!({"temperature": "hot"})),
            "temperature",
            "invalid_type",
        ),
        (
            chat(json!({"temperature": 2.5})),
            "temperature",
            "invalid_value",
        ),
        (chat(json!({"top_p": -0.1})), "top_p", "invalid_value"),
        (chat(json!({"top_p": 1.5})), "top_p", "invalid_value"),
        (chat(json!({"min_p": -0.5})), "min_p", "invalid_value"),
        (chat(json!({"top_k": -1})), "top_k", "invalid_value"),
        (
            chat(json!({"repeat_penalty": 0})),
            "repeat_penalty",
            "invalid_value",
        ),
        (
            chat(json!({"presence_penalty": 3})),
            "presence_penalty",
            "invalid_value",
        ),
        (
            chat(json!({"frequency_penalty": -3})),
            "frequency_penalty",
            "invalid_value",
        ),
        (
            chat(json!({"max_tokens": 0})),
            "max_tokens",
            "invalid_value",
        ),
        (
            chat(json!({"max_tokens": "4"})),
            "max_tokens",
            "invalid_type",
        ),
        (
            chat(json!({"max_tokens": 1.5})),
            "max_tokens",
            "invalid_type",
        ),
        (
            chat(json!({"max_completion_tokens": -1})),
            "max_completion_tokens",
            "invalid_value",
        ),
        (chat(json!({"n": 2})), "n", "invalid_value"),
        (chat(json!({"seed": "x"})), "seed", "invalid_type"),
        (chat(json!({"stop": 5})), "stop", "invalid_type"),
        (chat(json!({"stop": ["a", 5]})), "stop[1]", "invalid_type"),
        (chat(json!({"stop": ""})), "stop", "invalid_value"),
        (chat(json!({"stream": "yes"})), "stream", "invalid_type"),
        (
            chat(json!({"stream_options": {"include_usage": true}})),
            "stream_options",
            "invalid_value",
        ),
        (chat(json!({"logprobs": 1})), "logprobs", "invalid_type"),
        (
            chat(json!({"top_logprobs": 2})),
            "top_logprobs",
            "invalid_value",
        ),
        (
            chat(json!({"logprobs": true, "top_logprobs": 21})),
            "top_logprobs",
            "invalid_value",
        ),
        (
            chat(json!({"tools": [{"type": "function"}]})),
            "tools[0].function",
            "missing_required_parameter",
        ),
        (
            chat(json!({"tools": [{"type": "function", "function": {"name": "a b"}}]})),
            "tools[0].function.name",
            "invalid_value",
        ),
        (
            chat(
                json!({"tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}}}),
            ),
            "tool_choice.function.name",
            "invalid_value",
        ),
        (
            chat(json!({"tool_choice": "required"})),
            "tool_choice",
            "invalid_value",
        ),
        (
            chat(json!({"messages": [{"role": "tool", "tool_call_id": "x", "content": "1"}]})),
            "messages[0].tool_call_id",
            "invalid_value",
        ),
        (
            chat(json!({"functions": [{"name": "f"}]})),
            "functions",
            "unsupported_parameter",
        ),
        (
            chat(json!({"grammar": "root ::= \"a\"", "response_format": {"type": "json_object"}})),
            "grammar",
            "invalid_value",
        ),
        (
            chat(json!({"grammar": "root ::= \"a\"",
                "tools": [{"type": "function", "function": {"name": "f"}}]})),
            "grammar",
            "invalid_value",
        ),
        (
            chat(json!({"grammar": "root ::= [z-a]"})),
            "grammar",
            "invalid_value",
        ),
        (
            chat(json!({"json_schema": 5})),
            "json_schema",
            "invalid_type",
        ),
        // A tool's schema that the grammar engine cannot read names the tools.
        (
            chat(
                json!({"tools": [{"type": "function", "function": {"name": "f",
                "parameters": {"type": "strnig"}}}]}),
            ),
            "tools",
            "invalid_value",
        ),
        (
            chat(json!({"logit_bias": {"x": 1}})),
            "logit_bias",
            "invalid_value",
        ),
        (
            chat(json!({"logit_bias": {"5": 101}})),
            "logit_bias.5",
            "invalid_value",
        ),
        (
            chat(json!({"logit_bias": {"5": "1"}})),
            "logit_bias.5",
            "invalid_type",
        ),
        (
            chat(json!({"logit_bias": {"4000000": 1}})),
            "logit_bias",
            "invalid_value",
        ),
        (
            chat(json!({"response_format": {"type": "xml"}})),
            "response_format.type",
            "invalid_value",
        ),
        (
            chat(json!({"response_format": {"type": "json_schema"}})),
            "response_format.json_schema",
            "missing_required_parameter",
        ),
        (
            chat(json!({"response_format": {"type": "json_schema",
                "json_schema": {"name": "x", "schema": "{}"}}})),
            "response_format.json_schema.schema",
            "invalid_type",
        ),
        // Compiled against the vocabulary at submit: a schema llguidance cannot read is the
        // request's fault, and nothing is queued.
        (
            chat(json!({"response_format": {"type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "strnig"}}}})),
            "response_format",
            "invalid_value",
        ),
    ];
    for (body, param, code) in chat_cases {
        let r = post(port, "/v1/chat/completions", &body);
        assert_error(
            &body.to_string(),
            &r,
            400,
            "invalid_request_error",
            Some(code),
            Some(param),
        );
    }
    let completion_cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"model": MODEL}),
            "prompt",
            "missing_required_parameter",
        ),
        (
            json!({"model": MODEL, "prompt": 5}),
            "prompt",
            "invalid_type",
        ),
        (
            json!({"model": MODEL, "prompt": ["a", "b"]}),
            "prompt",
            "invalid_value",
        ),
        (
            json!({"model": MODEL, "prompt": [1, -2]}),
            "prompt[1]",
            "invalid_type",
        ),
        (
            json!({"model": MODEL, "prompt": [4_000_000_000u64]}),
            "prompt",
            "invalid_value",
        ),
        (
            json!({"model": MODEL, "prompt": ""}),
            "prompt",
            "invalid_value",
        ),
        (
            json!({"model": MODEL, "prompt": "x", "logprobs": true}),
            "logprobs",
            "invalid_type",
        ),
        (
            json!({"model": MODEL, "prompt": "x", "logprobs": 50}),
            "logprobs",
            "invalid_value",
        ),
        (
            json!({"model": MODEL, "prompt": "x", "echo": true}),
            "echo",
            "unsupported_parameter",
        ),
        (
            json!({"model": MODEL, "prompt": "x", "best_of": 3}),
            "best_of",
            "invalid_value",
        ),
    ];
    for (body, param, code) in completion_cases {
        let r = post(port, "/v1/completions", &body);
        assert_error(
            &body.to_string(),
            &r,
            400,
            "invalid_request_error",
            Some(code),
            Some(param),
        );
    }

    // A model that is not the served one.
    for path in ["/v1/chat/completions", "/v1/completions"] {
        let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "prompt": "Hi"});
        let r = post(port, path, &body);
        assert_error(
            path,
            &r,
            404,
            "not_found_error",
            Some("model_not_found"),
            Some("model"),
        );
    }
    let r = http(port, &raw("GET", "/v1/models/gpt-4o", &[], None));
    assert_error(
        "retrieve",
        &r,
        404,
        "not_found_error",
        Some("model_not_found"),
        None,
    );

    // A prompt longer than the context.
    let long = "hello ".repeat(CTX as usize + 50);
    let r = post(
        port,
        "/v1/chat/completions",
        &chat(json!({"messages": [{"role": "user", "content": long}]})),
    );
    assert_error(
        "long chat",
        &r,
        400,
        "invalid_request_error",
        Some("context_length_exceeded"),
        Some("messages"),
    );
    let r = post(
        port,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": long}),
    );
    assert_error(
        "long prompt",
        &r,
        400,
        "invalid_request_error",
        Some("context_length_exceeded"),
        Some("prompt"),
    );

    // Unknown routes and methods.
    let r = http(port, &raw("GET", "/v1/nothing", &[], None));
    assert_error("unknown path", &r, 404, "not_found_error", None, None);
    let r = http(port, &raw("GET", "/v1/chat/completions", &[], None));
    assert_error(
        "GET on a POST route",
        &r,
        405,
        "invalid_request_error",
        None,
        None,
    );

    assert_eq!(
        metric(port, "sovereign_requests_submitted_total"),
        submitted,
        "a bad request reached the engine"
    );
    let counted = metric(port, "sovereign_http_responses_total{code=\"400\"}");
    assert!(counted >= 40.0, "400s counted: {counted}");
}

/// `logit_bias` bans a token (-100) and forces one (+100), greedy or not.
#[test]
fn logit_bias_bans_and_forces_tokens() {
    let server = main_server();
    let _engine = exclusive();
    let file = sovereign::format::GgufFile::open(common::model_path()).unwrap();
    let tokenizer = sovereign::tokenizer::Tokenizer::from_gguf(file.metadata()).unwrap();
    let id = |text: &str| tokenizer.encode(text, false).unwrap()[0];
    let complete = |bias: Value, temperature: f64| {
        let r = post(
            server.port,
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 1,
                "temperature": temperature, "seed": 1, "logit_bias": bias}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["choices"][0]["text"].as_str().unwrap().to_string()
    };
    assert_eq!(complete(json!({}), 0.0), " Paris");
    let banned = complete(json!({ id(" Paris").to_string(): -100 }), 0.0);
    assert!(!banned.is_empty() && banned != " Paris", "{banned:?}");
    for temperature in [0.0, 1.0] {
        assert_eq!(
            complete(json!({ id(" banana").to_string(): 100 }), temperature),
            " banana"
        );
    }
}

/// Tools: a call with arguments valid against the tool's schema, whole or streamed; the
/// result of a call answered in words; a named tool called even where another fits better.
#[test]
fn tools_are_called_and_their_results_answered() {
    let server = main_server();
    let _engine = exclusive();
    let port = server.port;
    let weather = json!({"type": "function", "function": {"name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 30},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"]}}});
    let time = json!({"type": "function", "function": {"name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 30}},
            "required": ["zone"]}}});
    let ask = json!([{"role": "user", "content": "What is the weather like in Paris?"}]);
    let body = |choice: Value, stream: bool| {
        chat(
            json!({"messages": ask, "tools": [weather, time], "tool_choice": choice,
            "temperature": 0, "max_tokens": 60, "stream": stream}),
        )
    };
    let check_call = |call: &Value, name: &str| -> Value {
        assert_eq!(call["type"], "function", "{call}");
        assert!(
            call["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("call_")),
            "{call}"
        );
        assert_eq!(call["function"]["name"], name, "{call}");
        let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("arguments are not JSON ({e}): {call}"));
        args
    };

    let r = post(
        port,
        "/v1/chat/completions",
        &body(json!("required"), false),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    assert!(choice["message"]["content"].is_null(), "{v}");
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{v}");
    let args = check_call(&calls[0], "get_weather");
    let keys: Vec<&String> = args.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["city", "unit"], "{args}");
    assert!(args["city"].as_str().unwrap().contains("Paris"), "{args}");
    assert!(["celsius", "fahrenheit"].contains(&args["unit"].as_str().unwrap()));

    // Streamed: the same call in one delta with its index, then the finish reason.
    let r = post(port, "/v1/chat/completions", &body(json!("required"), true));
    assert_eq!(r.status, 200, "{}", r.body);
    let chunks: Vec<Value> = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let deltas: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(deltas.len(), 1, "{}", r.body);
    assert_eq!(deltas[0]["index"], 0);
    assert_eq!(check_call(deltas[0], "get_weather"), args);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
    let streamed_text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed_text, "", "{}", r.body);

    // A named tool is the one called.
    let named = json!({"type": "function", "function": {"name": "get_time"}});
    let r = post(port, "/v1/chat/completions", &body(named, false));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    let args = check_call(call, "get_time");
    assert!(args["zone"].is_string(), "{v}");

    // The call and its result go back; the model answers in words, streamed as it comes, and
    // the stream's text is the whole reply's.
    let mut messages = ask.as_array().unwrap().clone();
    messages.push(
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
        "type": "function", "function": {"name": "get_weather",
        "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]}),
    );
    messages.push(json!({"role": "tool", "tool_call_id": "call_1",
        "content": "{\"temperature\": 21, \"sky\": \"sunny\"}"}));
    let answer = |stream: bool| {
        post(
            port,
            "/v1/chat/completions",
            &chat(
                json!({"messages": messages, "tools": [weather, time], "temperature": 0,
                "max_tokens": 60, "stream": stream}),
            ),
        )
    };
    let r = answer(false);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let message = &v["choices"][0]["message"];
    assert!(message.get("tool_calls").is_none(), "{v}");
    let text = message["content"].as_str().unwrap();
    assert!(!text.is_empty() && !text.contains("\"response\""), "{v}");
    assert!(text.contains("21"), "the result is not in the answer: {v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    let r = answer(true);
    let streamed: Vec<String> = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| {
            let c: Value = serde_json::from_str(d).unwrap();
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .filter(|t| !t.is_empty())
        .collect();
    assert!(streamed.len() > 1, "not streamed: {}", r.body);
    assert_eq!(streamed.concat(), text);
}

/// llama.cpp's `/tokenize`, `/detokenize` and `/apply-template`: the engine's own tokens and
/// prompt, and OpenAI-shaped errors.
#[test]
fn tokenize_detokenize_and_apply_template() {
    let server = main_server();
    let port = server.port;
    let file = sovereign::format::GgufFile::open(common::model_path()).unwrap();
    let tokenizer = sovereign::tokenizer::Tokenizer::from_gguf(file.metadata()).unwrap();
    let text = "Hello <|im_start|> wörld 🍕";
    let want = tokenizer.encode(text, false).unwrap();

    let r = post(port, "/tokenize", &json!({"content": text}));
    assert_eq!(r.status, 200, "{}", r.body);
    let ids: Vec<u32> = serde_json::from_value(r.json()["tokens"].clone()).unwrap();
    assert_eq!(ids, want);
    assert!(ids.contains(&tokenizer.token_to_id("<|im_start|>").unwrap()));

    // Pieces: text where the token is whole UTF-8, its bytes where it is part of a character,
    // and a control token's name.
    let r = post(
        port,
        "/tokenize",
        &json!({"content": text, "with_pieces": true}),
    );
    let pieces = r.json()["tokens"].as_array().unwrap().clone();
    assert_eq!(pieces.len(), want.len());
    let mut bytes = Vec::new();
    for (p, &id) in pieces.iter().zip(&want) {
        assert_eq!(p["id"], id);
        match &p["piece"] {
            Value::String(s) if s == "<|im_start|>" => {}
            Value::String(s) => bytes.extend_from_slice(s.as_bytes()),
            Value::Array(b) => bytes.extend(b.iter().map(|x| x.as_u64().unwrap() as u8)),
            other => panic!("piece {other}"),
        }
    }
    assert_eq!(String::from_utf8(bytes).unwrap(), "Hello  wörld 🍕");

    let r = post(port, "/detokenize", &json!({"tokens": want}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["content"], tokenizer.decode(&want).unwrap());

    // The prompt a chat request becomes, tools included.
    let messages = json!([{"role": "user", "content": "Hi"}]);
    let r = post(port, "/apply-template", &json!({"messages": messages}));
    assert_eq!(r.status, 200, "{}", r.body);
    let prompt = r.json()["prompt"].as_str().unwrap().to_string();
    assert_eq!(
        prompt,
        tokenizer
            .apply_chat_template(&[sovereign::tokenizer::ChatMessage::user("Hi")], true)
            .unwrap()
    );
    let r = post(
        port,
        "/apply-template",
        &json!({"messages": messages, "tools": [{"type": "function",
            "function": {"name": "get_weather"}}]}),
    );
    let with_tools = r.json()["prompt"].as_str().unwrap().to_string();
    assert!(with_tools.contains("get_weather") && with_tools.ends_with("assistant\n"));

    for (path, body, param) in [
        ("/tokenize", json!({}), "content"),
        ("/tokenize", json!({"content": 5}), "content"),
        ("/detokenize", json!({"tokens": [1, "x"]}), "tokens[1]"),
        ("/detokenize", json!({"tokens": [99_999_999]}), "tokens"),
        ("/apply-template", json!({"messages": []}), "messages"),
    ] {
        let r = post(port, path, &body);
        assert_error(
            &format!("{path} {body}"),
            &r,
            400,
            "invalid_request_error",
            None,
            Some(param),
        );
    }
}

/// Byte-level tokens that hold part of a character: their `bytes` rebuild the text, and the
/// legacy offsets count characters of the text.
#[test]
fn logprobs_keep_the_bytes_of_characters_split_across_tokens() {
    let server = main_server();
    let _engine = exclusive();
    let port = server.port;
    let r = post(
        port,
        "/v1/chat/completions",
        &chat(json!({
            "messages": [{"role": "user", "content": "Reply with only emoji: 🎉🎉🎉"}],
            "max_tokens": 4, "temperature": 0, "logprobs": true,
        })),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    let tokens: Vec<Vec<u8>> = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| serde_json::from_value(t["bytes"].clone()).unwrap())
        .collect();
    assert!(
        tokens.iter().any(|b| std::str::from_utf8(b).is_err()),
        "no token holds part of a character: {content:?}"
    );
    assert_eq!(String::from_utf8_lossy(&tokens.concat()), content);

    let prompt = "Party time! 🎉🎉🎉🎉 Pizza! 🍕🍕🍕🍕🍕 Yes! 🎉🎉🎉";
    let r = post(
        port,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": prompt, "max_tokens": 6, "temperature": 0, "logprobs": 1}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let text: Vec<char> = v["choices"][0]["text"].as_str().unwrap().chars().collect();
    let lp = &v["choices"][0]["logprobs"];
    let offsets: Vec<usize> = serde_json::from_value(lp["text_offset"].clone()).unwrap();
    let pieces: Vec<String> = serde_json::from_value(lp["tokens"].clone()).unwrap();
    assert!(
        pieces.iter().any(|p| p.contains('\u{fffd}')),
        "no token holds part of a character: {pieces:?}"
    );
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
    for (piece, &at) in pieces.iter().zip(&offsets) {
        assert!(
            at < text.len(),
            "offset {at} past {} characters",
            text.len()
        );
        // A whole token's text is found at its offset.
        if !piece.contains('\u{fffd}') {
            let found: String = text[at..].iter().take(piece.chars().count()).collect();
            assert_eq!(&found, piece, "at {at} of {text:?}");
        }
    }
}

#[test]
fn a_full_queue_answers_429_and_defaults_are_closed() {
    let server = full_server("full");
    let port = server.port;
    // No queue, but a free slot: the first request runs.
    let held = hold_a_slot(port);
    let r = post(port, "/v1/chat/completions", &chat(json!({})));
    assert_error(
        "queue full",
        &r,
        429,
        "rate_limit_error",
        Some("rate_limit_exceeded"),
        None,
    );
    assert!(r.header("retry-after").is_some(), "{r:?}");
    let r = post(
        port,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "Hi", "stream": true}),
    );
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(metric(port, "sovereign_requests_total{outcome=\"rejected\"}") >= 2.0);
    // Closing the held stream cancels it, and its slot takes the next request.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = post(
            port,
            "/v1/chat/completions",
            &chat(json!({"max_tokens": 2})),
        );
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 429, "{}", r.body);
        assert!(Instant::now() < deadline, "the slot was not given back");
        std::thread::sleep(Duration::from_millis(100));
    }
    // No key configured: none needed.
    let r = http(
        port,
        &raw("GET", "/v1/models", &[("Authorization", "")], None),
    );
    assert_eq!(r.status, 200);
    // No --cors-origin: no origin gets in.
    let r = http(
        port,
        &raw(
            "GET",
            "/v1/models",
            &[("Origin", "http://allowed.example")],
            None,
        ),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    // No --allowed-host: only the loopback names.
    let r = http(
        port,
        &raw("GET", "/v1/models", &[("Host", "api.test")], None),
    );
    assert_eq!(r.status, 403);
}

/// Runs `tests/server/<script>.py` against the main server; a non-zero exit fails the test.
fn python(script: &str, extra: &[&str]) {
    let server = main_server();
    let _engine = exclusive();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/server");
    let check = Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .unwrap_or_else(|e| {
            panic!("python3 is needed for the server tests and cannot be run ({e})")
        });
    assert!(
        check.status.success(),
        "the server tests need the openai package: python3 -m pip install openai\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let started = Instant::now();
    let out = Command::new("python3")
        .arg(dir.join(format!("{script}.py")))
        .args(["--base-url", &server.url()])
        .args(["--api-key", API_KEY, "--model", MODEL])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "{script}.py ({:.1} s):\n{stdout}{stderr}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "{script}.py failed ({}):\n{stdout}{stderr}\nserver log:\n{}",
        out.status,
        server.log_tail()
    );
}

#[test]
fn openai_client_chat_and_completions() {
    python("basic", &[]);
}

#[test]
fn openai_client_error_classes() {
    let full = full_server("full-python");
    python("errors", &["--full-base-url", &full.url()]);
}

#[test]
fn openai_client_concurrent_streams_match_solo_runs() {
    python("concurrency", &[]);
}

#[test]
fn openai_client_structured_outputs() {
    python("structured", &[]);
}

#[test]
fn openai_client_tool_calls() {
    python("tools", &[]);
}

#[test]
fn llama_cpp_completion_api() {
    python("llama_cpp", &[]);
}

#[test]
fn openai_ollama_and_llama_cpp_embeddings() {
    python("embeddings", &[]);
}

#[test]
fn ollama_client_chat_generate_and_tools() {
    python("ollama_api", &[]);
}

#[test]
fn openai_client_cancel_frees_the_sequence() {
    python("cancel", &[]);
}

#[test]
fn openai_client_shared_prefix_hits_the_cache() {
    python("prefix_cache", &[]);
}
