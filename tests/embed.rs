//! Embeddings: the pooled final norm against the float64 layer dump, through a session and
//! through the service beside generation.

mod common;

use common::{gpu, model_path, reference_path};
use sovereign::engine::service::{EmbedRequest, Engine, EngineOptions, Event, Prompt, Request};
use sovereign::engine::{GenerateParams, Model, Normalize, Pooling, SamplingParams, Session};
use sovereign::format::GgufFile;
use sovereign::gpu::GpuOptions;
use sovereign::model::LoadOptions;

fn load(max_batch: u32, n_seq: u32, kv_tokens: Option<u32>) -> Model {
    load_ctx(1024, max_batch, n_seq, kv_tokens)
}

fn load_ctx(n_ctx: u32, max_batch: u32, n_seq: u32, kv_tokens: Option<u32>) -> Model {
    let options = LoadOptions {
        n_ctx: Some(n_ctx),
        max_batch,
        n_seq,
        kv_tokens,
        ..Default::default()
    };
    let file = GgufFile::open(model_path()).unwrap();
    pollster::block_on(Model::load(
        gpu(GpuOptions::default()),
        &file,
        &options,
        &mut |_| {},
    ))
    .unwrap()
}

/// The reference prompt's tokens and its `output_norm` rows (float64 forward pass).
fn reference_rows() -> (Vec<u32>, Vec<Vec<f32>>) {
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(reference_path("smollm2-135m-instruct-q4_1.layers.json")).unwrap(),
    )
    .unwrap();
    let raw = std::fs::read(reference_path("smollm2-135m-instruct-q4_1.layers.f32")).unwrap();
    let tokens: Vec<u32> = meta["prompt_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    let t = meta["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "output_norm")
        .unwrap();
    let (rows, width) = (
        t["shape"][0].as_u64().unwrap() as usize,
        t["shape"][1].as_u64().unwrap() as usize,
    );
    assert_eq!((rows, width), (tokens.len(), 576));
    let offset = t["offset"].as_u64().unwrap() as usize;
    let values: Vec<f32> = raw[offset..offset + 4 * rows * width]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (tokens, values.chunks(width).map(<[f32]>::to_vec).collect())
}

/// What llama.cpp's embedding mode computes from those rows: pooled, then unit length.
fn expected(rows: &[Vec<f32>], pooling: Pooling) -> Vec<f32> {
    let pooled: Vec<f64> = match pooling {
        Pooling::Mean => (0..rows[0].len())
            .map(|i| rows.iter().map(|r| f64::from(r[i])).sum::<f64>() / rows.len() as f64)
            .collect(),
        Pooling::Cls => rows[0].iter().map(|&x| f64::from(x)).collect(),
        Pooling::Last => rows[rows.len() - 1].iter().map(|&x| f64::from(x)).collect(),
    };
    let norm = pooled.iter().map(|x| x * x).sum::<f64>().sqrt();
    pooled.iter().map(|x| (x / norm) as f32).collect()
}

fn assert_near(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: width");
    let err = got
        .iter()
        .zip(want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    let cos: f32 = got.iter().zip(want).map(|(a, b)| a * b).sum();
    assert!(
        err < 2e-3 && cos > 0.9999,
        "{what}: max error {err}, cosine {cos}"
    );
}

#[test]
fn session_embeddings_match_the_layer_dump() {
    let (tokens, rows) = reference_rows();
    // 512: the prompt in one step; 2: in three steps, the pooling carried across them.
    for max_batch in [512, 2] {
        let mut model = load(max_batch, 1, None);
        let mut session = Session::new();
        for pooling in [Pooling::Mean, Pooling::Cls, Pooling::Last] {
            let e = pollster::block_on(session.embed(
                &mut model,
                &tokens,
                pooling,
                Normalize::EUCLIDEAN,
            ))
            .unwrap();
            assert_eq!(e.n_tokens, tokens.len());
            assert_near(
                &format!("max_batch {max_batch}, {pooling:?}"),
                &e.values,
                &expected(&rows, pooling),
            );
        }
        // Unnormalized, the mean row is the rows' mean itself.
        let raw =
            pollster::block_on(session.embed(&mut model, &tokens, Pooling::Mean, Normalize::NONE))
                .unwrap();
        let mean: Vec<f32> = (0..576)
            .map(|i| rows.iter().map(|r| r[i]).sum::<f32>() / rows.len() as f32)
            .collect();
        let scale = mean.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let err = raw
            .values
            .iter()
            .zip(&mean)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= 2e-3 * scale.max(1.0), "unnormalized mean: {err}");
        assert!(
            pollster::block_on(session.embed(&mut model, &[], Pooling::Mean, Normalize::EUCLIDEAN))
                .is_err()
        );
    }
    // A generative model's file names no pooling: mean.
    assert_eq!(load(16, 1, None).pooling(), Pooling::Mean);
}

#[test]
fn the_service_embeds_beside_generation() {
    let (tokens, rows) = reference_rows();
    // A small pool (4 slots, 256 positions) and batch, so inputs take several steps and pages
    // run short.
    let engine = Engine::start(
        load(64, 4, Some(256)),
        EngineOptions {
            prefill_chunk: 16,
            ..Default::default()
        },
    )
    .unwrap();
    let h = engine.handle();
    assert_eq!(h.model_info().n_embd, 576);
    let greedy = |n: u32| Request {
        prompt: Prompt::Text("Write a long story about a lighthouse keeper.".into()),
        params: GenerateParams {
            max_tokens: Some(n),
            sampling: SamplingParams::greedy(),
            ignore_eos: true,
            ..Default::default()
        },
        logprobs: None,
    };
    let text_of = |mut s: sovereign::engine::service::RequestStream| {
        let mut text = String::new();
        loop {
            match pollster::block_on(s.next()).unwrap() {
                Event::Delta { text: t, .. } => text.push_str(&t),
                Event::Finished { .. } => return text,
                Event::Started { .. } => {}
                Event::Failed(e) => panic!("{e}"),
            }
        }
    };
    let alone = text_of(h.submit(greedy(48)).unwrap());

    // A long input (four times the prefill chunk) while the same generation runs.
    let long: Vec<u32> = tokens.iter().cycle().take(70).copied().collect();
    let stream = h.submit(greedy(48)).unwrap();
    let pending = h
        .embed(EmbedRequest {
            inputs: vec![
                Prompt::Tokens(tokens.clone()),
                Prompt::Tokens(long.clone()),
                Prompt::Tokens(tokens.clone()),
            ],
            pooling: Some(Pooling::Last),
            ..Default::default()
        })
        .unwrap();
    let got = pollster::block_on(pending.wait()).unwrap();
    assert_eq!(
        text_of(stream),
        alone,
        "generation beside an embedding changed"
    );
    assert_eq!(got.len(), 3);
    assert_eq!(
        got.iter().map(|e| e.n_tokens).collect::<Vec<_>>(),
        [5, 70, 5]
    );
    assert_near(
        "service, last",
        &got[0].values,
        &expected(&rows, Pooling::Last),
    );
    assert_eq!(got[0].values, got[2].values, "the same input twice");
    // The long input's last token is the reference's 70 % 5 = 0th token, seen after more text.
    assert_ne!(got[1].values, got[0].values);

    // The model's pooling (mean) where the request names none, against the session's.
    let mean = pollster::block_on(
        h.embed(EmbedRequest {
            inputs: vec![Prompt::Tokens(tokens.clone())],
            ..Default::default()
        })
        .unwrap()
        .wait(),
    )
    .unwrap();
    assert_near(
        "service, mean",
        &mean[0].values,
        &expected(&rows, Pooling::Mean),
    );

    // Bad inputs fail at once and name the input.
    let err = |inputs: Vec<Prompt>, truncate: bool| {
        h.embed(EmbedRequest {
            inputs,
            truncate,
            ..Default::default()
        })
        .err()
        .map(|e| e.to_string())
    };
    let none = err(vec![], false).unwrap();
    assert!(none.contains("no inputs"), "{none}");
    let empty = err(
        vec![Prompt::Tokens(tokens.clone()), Prompt::Text(String::new())],
        false,
    )
    .unwrap();
    assert!(
        empty.contains("input[1]") && empty.contains("no tokens"),
        "{empty}"
    );
    let too_long: Vec<u32> = tokens.iter().cycle().take(1025).copied().collect();
    let long_err = err(vec![Prompt::Tokens(too_long.clone())], false).unwrap();
    assert!(
        long_err.contains("1025 tokens") && long_err.contains("1024"),
        "{long_err}"
    );
    let out_of_range = err(vec![Prompt::Tokens(vec![49152])], false).unwrap();
    assert!(out_of_range.contains("49152"), "{out_of_range}");

    // Truncated, the input keeps its first n_ctx tokens: the pool is held for one context
    // however small it is asked to be, so it fits.
    let truncated = pollster::block_on(
        h.embed(EmbedRequest {
            inputs: vec![Prompt::Tokens(too_long)],
            truncate: true,
            ..Default::default()
        })
        .unwrap()
        .wait(),
    )
    .unwrap();
    assert_eq!(truncated[0].n_tokens, 1024);
    let norm: f32 = truncated[0].values.iter().map(|x| x * x).sum();
    assert!((norm - 1.0).abs() < 1e-4, "squared norm {norm}");
    assert_eq!(text_of(h.submit(greedy(48)).unwrap()), alone);
    let m = h.metrics();
    assert_eq!((m.embedding_requests, m.embedded_inputs), (3, 5));
    assert_eq!(m.kv_pages_used, 0, "an embedding kept pages");
}

/// A pool that one generation nearly fills: an embedding that arrives after it waits for its
/// pages instead of preempting it, and both come out as they would alone. A request dropped
/// while it runs, or while it is queued, gives back its slot, pages and queue place.
#[test]
fn embeddings_wait_for_pages_and_cancel_cleanly() {
    let (tokens, _) = reference_rows();
    // 256 positions of pool (16 pages of 16), one context.
    let engine = Engine::start(load_ctx(256, 64, 4, Some(256)), EngineOptions::default()).unwrap();
    let h = engine.handle();
    let prompt: Vec<u32> = tokens.iter().cycle().take(40).copied().collect();
    let generation = || {
        h.submit(Request {
            prompt: Prompt::Tokens(prompt.clone()),
            params: GenerateParams {
                max_tokens: Some(150),
                sampling: SamplingParams::greedy(),
                ignore_eos: true,
                ..Default::default()
            },
            logprobs: None,
        })
        .unwrap()
    };
    let drain = |mut s: sovereign::engine::service::RequestStream, first: usize| {
        let mut out = Vec::new();
        loop {
            match pollster::block_on(s.next()).unwrap() {
                Event::Delta { token, .. } => {
                    out.extend(token);
                    if out.len() == first {
                        return (out, Some(s));
                    }
                }
                Event::Finished { .. } => return (out, None),
                Event::Started { .. } => {}
                Event::Failed(e) => panic!("{e}"),
            }
        }
    };
    let (alone, _) = drain(generation(), usize::MAX);
    assert_eq!(alone.len(), 150);
    let long: Vec<u32> = tokens.iter().cycle().take(200).copied().collect();
    let embed_alone = pollster::block_on(
        h.embed(EmbedRequest {
            inputs: vec![Prompt::Tokens(long.clone())],
            ..Default::default()
        })
        .unwrap()
        .wait(),
    )
    .unwrap();

    // The generation holds 12 of the 16 pages by its end; the 200-token input needs 13.
    let (mut got, rest) = drain(generation(), 20);
    let pending = h
        .embed(EmbedRequest {
            inputs: vec![Prompt::Tokens(long.clone())],
            ..Default::default()
        })
        .unwrap();
    let (more, _) = drain(rest.unwrap(), usize::MAX);
    got.extend(more);
    let beside = pollster::block_on(pending.wait()).unwrap();
    assert_eq!(got, alone, "the generation changed beside an embedding");
    assert_eq!(beside[0].values, embed_alone[0].values);
    let m = h.metrics();
    assert_eq!(m.requests_preempted, 0, "an older generation was preempted");

    // Dropped while running (a batch of six inputs, larger than the slots) and while queued.
    let batch = || {
        h.embed(EmbedRequest {
            inputs: vec![Prompt::Tokens(long[..100].to_vec()); 6],
            ..Default::default()
        })
        .unwrap()
    };
    let cancelled_before = m.requests_cancelled;
    let (running, queued) = (batch(), batch());
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(queued);
    drop(running);
    let after = pollster::block_on(
        h.embed(EmbedRequest {
            inputs: vec![Prompt::Tokens(tokens.clone())],
            ..Default::default()
        })
        .unwrap()
        .wait(),
    )
    .unwrap();
    assert_eq!(after[0].n_tokens, tokens.len());
    let m = h.metrics();
    assert_eq!(m.requests_cancelled - cancelled_before, 2);
    assert_eq!((m.kv_pages_used, m.running_sequences), (0, 0));
    // Every place in the queue came back: as many requests as slots and queue allow still fit.
    let held: Vec<_> = (0..4 + 64).map(|_| batch()).collect();
    assert!(
        h.embed(EmbedRequest {
            inputs: vec![Prompt::Tokens(tokens.clone())],
            ..Default::default()
        })
        .is_err()
    );
    drop(held);
}
