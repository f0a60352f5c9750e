//! The engine as an in-process service: submit, stream events, cancel.

mod common;

use common::{gpu, greedy_cases, model_path};
use sovereign::engine::service::{Engine, EngineOptions, Event, Prompt, Request};
use sovereign::engine::{GenerateParams, Model, SamplingParams, StopReason};
use sovereign::format::GgufFile;
use sovereign::gpu::GpuOptions;
use sovereign::model::LoadOptions;

fn engine(options: EngineOptions) -> Engine {
    let file = GgufFile::open(model_path()).unwrap();
    let load = LoadOptions {
        n_ctx: Some(1024),
        ..Default::default()
    };
    let model = pollster::block_on(Model::load(
        gpu(GpuOptions::default()),
        &file,
        &load,
        &mut |_| {},
    ))
    .unwrap();
    Engine::start(model, options).unwrap()
}

fn greedy(n: u32) -> GenerateParams {
    GenerateParams {
        max_tokens: Some(n),
        sampling: SamplingParams::greedy(),
        ..Default::default()
    }
}

/// Collects a stream: the text, the tokens and the final event.
fn collect(mut stream: sovereign::engine::service::RequestStream) -> (String, Vec<u32>, Event) {
    let mut text = String::new();
    let mut tokens = Vec::new();
    loop {
        match pollster::block_on(stream.next()).expect("stream ended without Finished") {
            Event::Started { .. } => {}
            Event::Delta { token, text: t, .. } => {
                text.push_str(&t);
                tokens.extend(token);
            }
            end => return (text, tokens, end),
        }
    }
}

#[test]
fn streams_the_reference_text_and_reuses_the_prompt_cache() {
    let engine = engine(EngineOptions::default());
    let h = engine.handle();
    let case = &greedy_cases()[0];
    let n = case["n_stable"].as_u64().unwrap() as u32;
    let request = Request {
        prompt: Prompt::Text(case["prompt"].as_str().unwrap().into()),
        params: greedy(n),
        logprobs: Some(2),
    };
    let (text, tokens, end) = collect(h.submit(request.clone()).unwrap());
    assert_eq!(text, case["text_stable"].as_str().unwrap());
    // The reference's 30th token is the end-of-turn token: it ends the stream and is not output.
    let want: Vec<u32> = case["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .take(n as usize)
        .map(|t| t.as_u64().unwrap() as u32)
        .filter(|&t| t != 2)
        .collect();
    assert_eq!(tokens, want);
    let Event::Finished { stop, usage, .. } = end else {
        panic!("{end:?}")
    };
    assert_eq!(stop, StopReason::EndOfGeneration);
    assert_eq!(usage.completion_tokens, want.len());
    assert_eq!(usage.prompt_tokens, 5);

    // The same prompt again: its K/V are still cached.
    let (text2, _, end) = collect(h.submit(request).unwrap());
    assert_eq!(text2, text);
    let Event::Finished { usage, .. } = end else {
        panic!("{end:?}")
    };
    assert_eq!(usage.cached_tokens, 4);
    let m = h.metrics();
    assert_eq!(m.requests_finished, 2);
    assert!(m.prefix_cache_hits >= 1);
    assert_eq!(m.generated_tokens, 2 * want.len() as u64);
}

#[test]
fn cancelling_stops_generation_and_bad_requests_fail_at_submit() {
    let engine = engine(EngineOptions { max_queue: 1 });
    let h = engine.handle();
    let mut stream = h
        .submit(Request {
            prompt: Prompt::Text("Once upon a time".into()),
            params: greedy(500),
            logprobs: None,
        })
        .unwrap();
    // Wait for two tokens, then cancel.
    let mut seen = 0;
    while seen < 2 {
        if let Some(Event::Delta { token: Some(_), .. }) = pollster::block_on(stream.next()) {
            seen += 1;
        }
    }
    stream.cancel();
    let (_, tokens, end) = collect(stream);
    let Event::Finished { stop, usage, .. } = end else {
        panic!("{end:?}")
    };
    assert_eq!(stop, StopReason::Cancelled);
    assert!(
        usage.completion_tokens < 20,
        "{usage:?} after cancel ({} more tokens)",
        tokens.len()
    );

    let long = "word ".repeat(2000);
    let e = h
        .submit(Request {
            prompt: Prompt::Text(long),
            ..Default::default()
        })
        .err()
        .unwrap();
    assert!(e.to_string().contains("context holds only 1024"), "{e}");
    let e = h
        .submit(Request {
            prompt: Prompt::Text(String::new()),
            ..Default::default()
        })
        .err()
        .unwrap();
    assert!(e.to_string().contains("empty"), "{e}");
    let bad = Request {
        prompt: Prompt::Text("hi".into()),
        params: GenerateParams {
            sampling: SamplingParams {
                top_p: 2.0,
                ..Default::default()
            },
            ..Default::default()
        },
        logprobs: None,
    };
    assert!(h.submit(bad).err().unwrap().to_string().contains("top_p"));
    let e = h
        .submit(Request {
            prompt: Prompt::Tokens(vec![1, 999_999]),
            ..Default::default()
        })
        .err()
        .unwrap();
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
}
