//! The engine in a real browser: headless Chromium (WebGPU on SwiftShader) opens the demo page
//! that `sovereign web` serves on 127.0.0.1, loads the test model from the same server, and
//! generates greedy tokens that must equal the native engine's; it runs the kernel checks on the
//! browser's adapter, refuses a bad request and a file that is not a model with OpenAI's error
//! fields (the loaded model keeps serving), and streams and stops a chat reply through the
//! page's own controls. A second Chromium without the WebGPU flag gets the page's notice.
//!
//! Needs the built page (`scripts/build-web`), Debian's `chromium` and `chromium-driver`, and the
//! `selenium` Python package (`scripts/setup --test` installs them). Without any of them the test
//! fails; it never skips.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sovereign::engine::{GenerateParams, Model, Normalize, SamplingParams, Session};
use sovereign::format::GgufFile;
use sovereign::gpu::GpuOptions;
use sovereign::model::LoadOptions;

const PROMPT: &str = "The capital of France is";
const N_TOKENS: u32 = 8;

struct WebServer(Child);

impl Drop for WebServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn native_tokens() -> Vec<u32> {
    let ctx = common::gpu(GpuOptions::default());
    let file = GgufFile::open(common::model_path()).unwrap();
    let options = LoadOptions {
        n_ctx: Some(256),
        ..Default::default()
    };
    let mut model =
        pollster::block_on(Model::load(Arc::clone(&ctx), &file, &options, &mut |_| {})).unwrap();
    let prompt = model.encode(PROMPT).unwrap();
    let params = GenerateParams {
        max_tokens: Some(N_TOKENS),
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    let done = pollster::block_on(Session::new().generate(
        &mut model,
        &prompt,
        &params,
        &mut |_| std::ops::ControlFlow::Continue(()),
    ))
    .unwrap();
    done.tokens
}

/// The texts tests/browser/demo.py embeds (`EMBED_TEXTS`), embedded natively.
fn native_embeddings() -> Vec<Vec<f32>> {
    let ctx = common::gpu(GpuOptions::default());
    let file = GgufFile::open(common::model_path()).unwrap();
    let mut model = pollster::block_on(Model::load(
        ctx,
        &file,
        &LoadOptions::default(),
        &mut |_| {},
    ))
    .unwrap();
    let mut session = Session::new();
    [
        "The cat sat on the mat.",
        "Quarterly revenue rose by eight percent.",
    ]
    .iter()
    .map(|text| {
        let tokens = model.encode(text).unwrap();
        let pooling = model.pooling();
        pollster::block_on(session.embed(&mut model, &tokens, pooling, Normalize::EUCLIDEAN))
            .unwrap()
            .values
    })
    .collect()
}

fn token_ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("no token ids in {value}"))
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn demo_page_in_chromium_matches_the_native_engine() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dist = root.join("web/dist");
    assert!(
        dist.join("pkg/sovereign_web_bg.wasm").is_file(),
        "the browser build is missing: run scripts/build-web"
    );
    let want = native_tokens();
    assert_eq!(want.len(), N_TOKENS as usize, "native run stopped early");

    let port = free_port();
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-server.log");
    let server = WebServer(
        Command::new(env!("CARGO_BIN_EXE_sovereign"))
            .args(["web", "--port", &port.to_string(), "--dir"])
            .arg(&dist)
            .arg("-m")
            .arg(common::model_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("cannot start the sovereign binary"),
    );
    let url = format!("http://127.0.0.1:{port}/");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "sovereign web did not come up:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("demo.png");
    let _ = std::fs::remove_file(&shot);
    let started = Instant::now();
    let out = Command::new("python3")
        .arg(root.join("tests/browser/demo.py"))
        .args(["--url", &url, "--prompt", PROMPT])
        .args(["--tokens", &N_TOKENS.to_string(), "--screenshot"])
        .arg(&shot)
        .output()
        .expect("python3 is needed for the browser test");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser run failed (chromium, chromium-driver and selenium are needed: \
         scripts/setup --test):\n{stderr}"
    );
    drop(server);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    println!(
        "browser run took {:.0} s:\n{}",
        started.elapsed().as_secs_f64(),
        serde_json::to_string_pretty(&report).unwrap()
    );

    // The page came up on a WebGPU adapter and loaded the model from the server.
    let ready = &report["ready"];
    assert_eq!(ready["error"], "", "the page showed an error");
    assert_eq!(ready["adapter"]["backend"], "BrowserWebGpu");
    // Headless Chromium's SwiftShader has subgroups, which the worker adds to the device request
    // behind wgpu's back: the greedy tokens and the kernel checks below run the subgroup kernels.
    assert_eq!(ready["adapter"]["subgroups"], true, "{}", ready["adapter"]);
    assert_eq!(ready["model"]["arch"], "llama");
    assert_eq!(ready["model"]["n_vocab"], 49152);

    // A file that is not a model is refused with a 400 naming the problem; the model loaded
    // before still serves (the greedy run below).
    let bad = &report["bad_model"];
    assert_eq!(bad["status"], 400, "{bad}");
    assert_eq!(bad["code"], "invalid_model");
    assert!(
        bad["__error"].as_str().unwrap().contains("not a GGUF file"),
        "{bad}"
    );

    // Greedy tokens equal the native engine's.
    let greedy = &report["greedy"];
    assert_eq!(token_ids(&greedy["token_ids"]), want, "browser: {greedy}");
    assert_eq!(greedy["usage"]["completion_tokens"], N_TOKENS);
    assert_eq!(greedy["finish_reason"], "length");

    // A bad request is refused with OpenAI's fields.
    let bad = &report["bad_request"];
    assert_eq!(bad["status"], 400, "{bad}");
    assert_eq!(bad["code"], "invalid_value");
    assert_eq!(bad["param"], "temperature");
    assert_eq!(bad["type"], "invalid_request_error");

    // Structured output in the browser: only the schema's JSON, ended by the grammar.
    let structured = &report["structured"];
    assert_eq!(structured["finish_reason"], "stop", "{structured}");
    let content = structured["content"].as_str().unwrap_or_default();
    assert!(
        content == r#"{"answer": "yes"}"# || content == r#"{"answer": "no"}"#,
        "{structured}"
    );
    // A tool call in the browser, gathered from the stream by the JS API.
    let tool_call = &report["tool_call"];
    assert_eq!(tool_call["finish_reason"], "tool_calls", "{tool_call}");
    assert!(tool_call["message"]["content"].is_null(), "{tool_call}");
    let call = &tool_call["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather", "{tool_call}");
    let args: serde_json::Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("arguments are not JSON ({e}): {tool_call}"));
    assert!(args["city"].is_string(), "{tool_call}");
    assert!(
        call["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("call_"))
    );
    let bad = &report["bad_schema"];
    assert_eq!(bad["status"], 400, "{bad}");
    assert_eq!(bad["param"], "response_format", "{bad}");

    // Embeddings in the browser (SwiftShader) against the native engine's (lavapipe).
    let embeddings = &report["embeddings"];
    assert_eq!(
        embeddings["indices"],
        serde_json::json!([0, 1]),
        "{embeddings}"
    );
    let native = native_embeddings();
    for (i, want) in native.iter().enumerate() {
        let got: Vec<f32> = serde_json::from_value(embeddings["vectors"][i].clone())
            .unwrap_or_else(|e| panic!("vector {i}: {e}"));
        assert_eq!(got.len(), want.len());
        let err = got
            .iter()
            .zip(want)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err < 2e-3, "embedding {i}: max difference {err}");
    }
    let bad = &report["bad_embedding"];
    assert_eq!(bad["status"], 400, "{bad}");
    assert_eq!(bad["param"], "dimensions", "{bad}");

    // The chat reply streamed in through the page and stopped at the Stop button.
    let before = report["streamed_before_stop"].as_str().unwrap();
    let after = report["reply_after_stop"].as_str().unwrap();
    assert!(before.split_whitespace().count() >= 4, "{before:?}");
    assert!(after.starts_with(before), "{before:?} then {after:?}");
    assert!(after.contains("stopped"), "{after:?}");
    assert_eq!(report["stats"]["requests_cancelled"], 1);
    assert_eq!(report["stats"]["running_sequences"], 0);
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);

    // A browser without a WebGPU adapter gets the page's notice, not a broken page.
    let without = &report["without_webgpu"];
    // This Chromium has WebGPU without the flag, but no adapter for it: the page says which,
    // and hides the chat it cannot run.
    assert_eq!(without["notice"], true, "{without}");
    assert_eq!(without["adapter"], "no GPU adapter", "{without}");
    assert_eq!(
        without["title"], "WebGPU has no GPU adapter here",
        "{without}"
    );
    assert_eq!(without["chat_hidden"], true, "{without}");

    // Every kernel check passed on the browser's adapter.
    let kernels = &report["kernels"];
    let checks = kernels["checks"]
        .as_array()
        .unwrap_or_else(|| panic!("kernel checks did not run: {kernels}"));
    assert!(checks.len() >= 25, "only {} checks", checks.len());
    // The 8-bit KV cache, which browsers without shader-f16 have too, and the tiled prefill
    // attention.
    for name in ["kv_store q8_0 K", "attention q8_0", "attention f32 tiled"] {
        assert!(
            checks
                .iter()
                .any(|c| c["name"].as_str().is_some_and(|n| n.starts_with(name))),
            "no {name} check in the browser"
        );
    }
    let failed: Vec<&Value> = checks.iter().filter(|c| c["passed"] != true).collect();
    assert!(
        failed.is_empty(),
        "kernel checks failed in the browser: {failed:#?}"
    );
}
