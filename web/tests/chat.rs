//! The browser engine's request and chunk handling, run natively on a random synthetic model:
//! refused requests carry OpenAI's error fields, and a stream is the chunks an OpenAI client
//! expects, with the token ids and the usage.

use std::sync::Arc;

use serde_json::Value;
use sovereign::engine::Model;
use sovereign::engine::service::{Engine, EngineOptions};
use sovereign::format::GgufFile;
use sovereign::gpu::{GpuContext, GpuOptions};
use sovereign::model::LoadOptions;
use sovereign::model::synthetic::{SyntheticSpec, synthetic_llama};
use sovereign_web::chat::{Endpoint, submit};

fn engine() -> Engine {
    let bytes = synthetic_llama(&SyntheticSpec::default())
        .unwrap()
        .to_bytes();
    let file = GgufFile::from_bytes(bytes).unwrap();
    let ctx = match pollster::block_on(GpuContext::new(&GpuOptions::default())) {
        Ok(ctx) => Arc::new(ctx),
        Err(e) => panic!("no usable GPU adapter ({e}); GPU tests never skip"),
    };
    let options = LoadOptions {
        n_ctx: Some(128),
        ..Default::default()
    };
    let model = pollster::block_on(Model::load(ctx, &file, &options, &mut |_| {})).unwrap();
    Engine::start(model, EngineOptions::default()).unwrap()
}

#[test]
fn requests_are_checked_and_streams_have_openai_shape() {
    let engine = engine();
    let h = engine.handle();
    let name = h.model_info().name.clone();

    let refused = |body: &str| {
        submit(&h, body, Endpoint::Completions, "t".into())
            .err()
            .unwrap_or_else(|| panic!("{body} was accepted"))
    };
    let e = refused("{");
    assert_eq!((e.status, e.code), (400, Some("invalid_json")));
    let e = refused(r#"{"model": "another", "prompt": [5, 6]}"#);
    assert_eq!((e.status, e.code), (404, Some("model_not_found")));
    let e = refused(r#"{"prompt": [5, 6], "top_p": 3}"#);
    assert_eq!(e.param.as_deref(), Some("top_p"));
    let e = refused(r#"{"prompt": [5, 6], "max_tokens": 4, "temperature": 0, "seed": "x"}"#);
    assert_eq!((e.status, e.param.as_deref()), (400, Some("seed")));
    let e = refused(&format!(r#"{{"prompt": [{}]}}"#, vec!["5"; 200].join(",")));
    assert_eq!(e.code, Some("context_length_exceeded"));

    let body = format!(
        r#"{{"model": "{name}", "prompt": [5, 6, 7], "max_tokens": 4, "temperature": 0, "ignore_eos": true}}"#
    );
    let mut g = submit(&h, &body, Endpoint::Completions, "cmpl-1".into()).unwrap();
    let mut chunks: Vec<Value> = Vec::new();
    while let Some(next) = pollster::block_on(g.next_chunks()) {
        chunks.extend(next.unwrap());
    }
    assert_eq!(chunks.len(), 5, "{chunks:#?}");
    for c in &chunks {
        assert_eq!(c["object"], "text_completion");
        assert_eq!(c["id"], "cmpl-1");
        assert_eq!(c["model"], name.as_str());
    }
    let ids: Vec<u64> = chunks[..4]
        .iter()
        .map(|c| c["sovereign"]["token_ids"][0].as_u64().unwrap())
        .collect();
    assert!(ids.iter().all(|&t| t < 512), "{ids:?}");
    let last = &chunks[4];
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["usage"]["prompt_tokens"], 3);
    assert_eq!(last["usage"]["completion_tokens"], 4);
    assert!(last["sovereign"]["timings"]["total_ms"].as_f64().unwrap() > 0.0);

    // The same request again gives the same tokens (greedy), and a cancelled one ends at once
    // with its last chunk.
    let long = body.replace(r#""max_tokens": 4"#, r#""max_tokens": 100"#);
    let mut again = submit(&h, &long, Endpoint::Completions, "cmpl-2".into()).unwrap();
    let first = pollster::block_on(again.next_chunks()).unwrap().unwrap();
    assert_eq!(first[0]["sovereign"]["token_ids"][0], ids[0]);
    again.canceller().cancel();
    let mut rest = Vec::new();
    while let Some(next) = pollster::block_on(again.next_chunks()) {
        rest.extend(next.unwrap());
    }
    let end = rest.last().unwrap();
    assert_eq!(end["sovereign"]["cancelled"], true);
    assert!(end["usage"]["completion_tokens"].as_u64().unwrap() < 100);
}
