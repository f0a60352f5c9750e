//! The engine as an in-process service: submit, stream events, cancel.

mod common;

use common::{gpu, greedy_cases, model_path};
use sovereign::engine::service::{
    Engine, EngineHandle, EngineOptions, Event, Prompt, Request, RequestStream,
};
use sovereign::engine::{Constraint, GenerateParams, Model, SamplingParams, StopReason};
use sovereign::format::GgufFile;
use sovereign::gpu::GpuOptions;
use sovereign::model::LoadOptions;

fn engine(options: EngineOptions) -> Engine {
    engine_with(options, 8, None)
}

/// An engine with `n_seq` sequence slots and a KV pool of `kv_tokens` positions (default: one
/// full context).
fn engine_with(options: EngineOptions, n_seq: u32, kv_tokens: Option<u32>) -> Engine {
    let load = LoadOptions {
        n_ctx: Some(1024),
        n_seq,
        kv_tokens,
        ..Default::default()
    };
    start(&GgufFile::open(model_path()).unwrap(), &load, options)
}

fn start(file: &GgufFile, load: &LoadOptions, options: EngineOptions) -> Engine {
    let model = pollster::block_on(Model::load(
        gpu(GpuOptions::default()),
        file,
        load,
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
fn collect(mut stream: RequestStream) -> (String, Vec<u32>, Event) {
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
fn streams_the_reference_text_twice() {
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

    // The same prompt again: the same output from a fresh sequence.
    let (text2, _, end) = collect(h.submit(request).unwrap());
    assert_eq!(text2, text);
    let Event::Finished { usage, .. } = end else {
        panic!("{end:?}")
    };
    // Five prompt tokens: no full 16-position page to share (and the last token is always run).
    assert_eq!(usage.cached_tokens, 0);
    let m = h.metrics();
    assert_eq!(m.requests_finished, 2);
    assert_eq!(m.prefix_cache_hits, 0);
    assert_eq!(m.generated_tokens, 2 * want.len() as u64);
}

#[test]
fn cancelling_stops_generation_and_bad_requests_fail_at_submit() {
    let engine = engine(EngineOptions {
        max_queue: 1,
        ..Default::default()
    });
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

/// The queue bound counts requests beside the running ones: with no queue, requests that find
/// a free slot run, the next is refused, and a slot given back takes a request again.
#[test]
fn a_queue_of_none_runs_as_many_requests_as_there_are_slots() {
    let engine = engine_with(
        EngineOptions {
            max_queue: 0,
            ..Default::default()
        },
        2,
        None,
    );
    let h = engine.handle();
    let long = || Request {
        prompt: Prompt::Text("Once upon a time".into()),
        params: greedy(500),
        logprobs: None,
    };
    let first = h.submit(long()).unwrap();
    let second = h.submit(long()).unwrap();
    let e = h.submit(long()).err().unwrap();
    assert!(
        e.to_string()
            .contains("queue is full (2 requests running, 0 waiting)"),
        "{e}"
    );
    first.cancel();
    let (_, _, end) = collect(first);
    assert!(
        matches!(
            end,
            Event::Finished {
                stop: StopReason::Cancelled,
                ..
            }
        ),
        "{end:?}"
    );
    // The cancelled request's slot is free by the time its stream ends.
    let third = h.submit(long()).unwrap();
    second.cancel();
    third.cancel();
    for stream in [second, third] {
        let (_, _, end) = collect(stream);
        assert!(matches!(end, Event::Finished { .. }), "{end:?}");
    }
    assert_eq!(h.metrics().requests_rejected, 1);
}

fn prompts() -> Vec<String> {
    [
        "The capital of France is",
        "Once upon a time, there was a little robot who",
        "def fibonacci(n):\n",
        "The three primary colors are",
        "In 1969, the first humans",
        "Water boils at",
        "My favourite recipe for pancakes starts with",
        "The quick brown fox",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run_alone(h: &EngineHandle, prompt: &str, n: u32) -> String {
    let request = Request {
        prompt: Prompt::Text(prompt.into()),
        params: greedy(n),
        logprobs: None,
    };
    collect(h.submit(request).unwrap()).0
}

/// Sequences batched together (and joining while others decode) produce exactly what each
/// produces alone.
#[test]
fn concurrent_requests_match_their_solo_runs() {
    let engine = engine(EngineOptions::default());
    let h = engine.handle();
    let prompts = prompts();
    let alone: Vec<String> = prompts.iter().map(|p| run_alone(&h, p, 12)).collect();
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| {
            h.submit(Request {
                prompt: Prompt::Text(p.clone()),
                params: greedy(12),
                logprobs: None,
            })
            .unwrap()
        })
        .collect();
    let together: Vec<String> = streams.into_iter().map(|s| collect(s).0).collect();
    assert_eq!(together, alone);
    let m = h.metrics();
    assert_eq!(m.running_sequences, 0);
    assert_eq!(m.kv_pages_used, 0, "finished sequences still hold pages");
}

/// An engine on a small random model (fast on any adapter) with `n_seq` slots and a KV pool of
/// `kv_tokens` positions.
fn synthetic_engine(n_seq: u32, n_ctx: u32, kv_tokens: u32) -> Engine {
    use sovereign::model::synthetic::{SyntheticSpec, synthetic_llama};
    let bytes = synthetic_llama(&SyntheticSpec::default())
        .unwrap()
        .to_bytes();
    let file = GgufFile::from_bytes(bytes).unwrap();
    let load = LoadOptions {
        n_ctx: Some(n_ctx),
        n_seq,
        kv_tokens: Some(kv_tokens),
        ..Default::default()
    };
    start(&file, &load, EngineOptions::default())
}

/// Distinct token prompts (no shared first page) of `len` tokens.
fn token_prompts(n: usize, len: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|i| {
            (0..len)
                .map(|k| 3 + ((i * 7919 + k * 104_729 + k * k * 31) % 509) as u32)
                .collect()
        })
        .collect()
}

fn run_tokens(h: &EngineHandle, prompt: &[u32], n: u32) -> RequestStream {
    h.submit(Request {
        prompt: Prompt::Tokens(prompt.to_vec()),
        params: GenerateParams {
            ignore_eos: true,
            ..greedy(n)
        },
        logprobs: None,
    })
    .unwrap()
}

/// A pool too small for every sequence at once: the newest are preempted and recomputed, and
/// the outputs do not change.
#[test]
fn preemption_keeps_outputs_exact() {
    // 256 positions of pool (16 pages of 16) for 6 sequences of 100 positions (7 pages) each.
    let engine = synthetic_engine(6, 256, 256);
    let h = engine.handle();
    let prompts = token_prompts(6, 60);
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| collect(run_tokens(&h, p, 40)).1)
        .collect();
    assert!(alone.iter().all(|t| t.len() == 40));
    let streams: Vec<_> = prompts.iter().map(|p| run_tokens(&h, p, 40)).collect();
    let together: Vec<Vec<u32>> = streams.into_iter().map(|s| collect(s).1).collect();
    let m = h.metrics();
    assert!(m.requests_preempted > 0, "no preemption happened: {m:?}");
    assert_eq!(together, alone);
    assert_eq!(m.kv_pages_used, 0);
    assert_eq!(m.running_sequences, 0);
}

/// Many more streams than the real model's tests can afford, each equal to its solo run; a
/// cancelled stream's pages return to the pool while the others go on.
#[test]
fn many_streams_match_their_solo_runs_and_cancel_frees_pages() {
    let engine = synthetic_engine(32, 256, 32 * 128);
    let h = engine.handle();
    let prompts = token_prompts(32, 20);
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| collect(run_tokens(&h, p, 24)).1)
        .collect();
    let mut streams: Vec<_> = prompts.iter().map(|p| run_tokens(&h, p, 24)).collect();
    let victim = run_tokens(&h, &token_prompts(33, 40)[32], 200);
    let mut victim = Some(victim);
    let mut together = Vec::new();
    for s in streams.drain(..) {
        if let Some(v) = victim.take() {
            drop(v);
        }
        together.push(collect(s).1);
    }
    assert_eq!(together, alone);
    let m = h.metrics();
    assert_eq!(m.kv_pages_used, 0, "{m:?}");
    assert!(m.requests_cancelled >= 1, "{m:?}");
}

/// A long shared prefix is served from cached pages the second time.
#[test]
fn a_shared_prefix_hits_the_prefix_cache() {
    let engine = engine(EngineOptions::default());
    let h = engine.handle();
    let prefix = "The following is a list of facts about the solar system. ".repeat(8);
    let run = |suffix: &str| {
        let request = Request {
            prompt: Prompt::Text(format!("{prefix}{suffix}")),
            params: greedy(2),
            logprobs: None,
        };
        let (_, _, end) = collect(h.submit(request).unwrap());
        let Event::Finished { usage, .. } = end else {
            panic!("{end:?}")
        };
        usage
    };
    let first = run("Mercury is");
    assert_eq!(first.cached_tokens, 0);
    let second = run("Venus is");
    assert!(
        second.cached_tokens >= first.prompt_tokens - 20,
        "{second:?} after {first:?}"
    );
    assert!(h.metrics().prefix_cache_hits >= 1);
    assert!(h.metrics().kv_pages_cached > 0);
}

/// A request held to a JSON schema answers in it, batched beside free ones that still produce
/// exactly their solo runs (the step reads back logits rather than argmax ids for all of them).
#[test]
fn a_request_held_to_a_schema_beside_free_ones() {
    let engine = engine_with(EngineOptions::default(), 4, None);
    let h = engine.handle();
    let prompts = prompts();
    let alone: Vec<String> = prompts[..3].iter().map(|p| run_alone(&h, p, 12)).collect();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "country": {"type": "string"},
            // Unbounded, this model's digits never end.
            "population": {"type": "integer", "minimum": 0, "maximum": 100000000}
        },
        "required": ["city", "country", "population"],
        "additionalProperties": false
    });
    let constrained = Request {
        prompt: Prompt::Chat(vec![sovereign::tokenizer::ChatMessage::new(
            "user",
            "Describe the capital of France as JSON.",
        )]),
        params: GenerateParams {
            max_tokens: Some(60),
            constraint: Some(Constraint::JsonSchema(schema)),
            ..greedy(60)
        },
        logprobs: None,
    };
    let json_stream = h.submit(constrained).unwrap();
    let free: Vec<_> = prompts[..3]
        .iter()
        .map(|p| {
            h.submit(Request {
                prompt: Prompt::Text(p.clone()),
                params: greedy(12),
                logprobs: None,
            })
            .unwrap()
        })
        .collect();
    let (text, _, end) = collect(json_stream);
    let together: Vec<String> = free.into_iter().map(|s| collect(s).0).collect();
    assert_eq!(together, alone);
    assert!(
        matches!(
            end,
            Event::Finished {
                stop: StopReason::EndOfGeneration,
                ..
            }
        ),
        "{end:?}: {text:?}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["city", "country", "population"], "{text}");
    assert!(v["city"].is_string() && v["population"].is_i64(), "{text}");
    println!("{text}");

    // A schema the grammar engine cannot read fails the submit; nothing is queued.
    let bad = Request {
        prompt: Prompt::Text("x".into()),
        params: GenerateParams {
            constraint: Some(Constraint::JsonSchema(serde_json::json!({"type": 5}))),
            ..greedy(4)
        },
        logprobs: None,
    };
    let e = h.submit(bad).err().expect("a bad schema was queued");
    assert!(e.to_string().starts_with("invalid grammar: "), "{e}");
    assert_eq!(h.metrics().requests_submitted, 7);
}
