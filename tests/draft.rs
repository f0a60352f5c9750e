//! Drafting by prompt lookup: drafted tokens are checked in the same step, and whatever is
//! accepted or thrown away, the output and the cache are those of a run without drafts.

mod common;

use std::ops::ControlFlow;

use common::{gpu, model_path};
use sovereign::engine::service::{Engine, EngineOptions, Event, Prompt, Request, RequestStream};
use sovereign::engine::{
    Completion, Constraint, GenerateParams, Model, SamplingParams, Session, StopReason,
};
use sovereign::format::GgufFile;
use sovereign::gpu::GpuOptions;
use sovereign::model::LoadOptions;
use sovereign::tokenizer::ChatMessage;

fn model(n_seq: u32) -> Model {
    model_with(n_seq, 512)
}

/// `n_seq` sequence slots sharing a KV pool of one context of `n_ctx` positions.
fn model_with(n_seq: u32, n_ctx: u32) -> Model {
    let file = GgufFile::open(model_path()).unwrap();
    let load = LoadOptions {
        n_ctx: Some(n_ctx),
        n_seq,
        kv_tokens: Some(n_ctx),
        ..Default::default()
    };
    pollster::block_on(Model::load(
        gpu(GpuOptions::default()),
        &file,
        &load,
        &mut |_| {},
    ))
    .unwrap()
}

/// A prompt whose answer copies it: long runs of drafts are right.
const COPY: &str = "Repeat this list exactly: apples, pears, plums, cherries, grapes, lemons, \
                    limes, oranges, peaches, apricots, melons, figs, dates, kiwis.";

fn chat(model: &Model, text: &str) -> Vec<u32> {
    model
        .encode_chat(&[ChatMessage::new("user", text)])
        .unwrap()
}

fn params(draft: usize, sampling: SamplingParams, n: u32) -> GenerateParams {
    GenerateParams {
        max_tokens: Some(n),
        sampling,
        draft,
        ..Default::default()
    }
}

fn sampled(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 0.7,
        seed: Some(seed),
        ..Default::default()
    }
}

fn run(
    model: &mut Model,
    session: &mut Session,
    prompt: &[u32],
    params: &GenerateParams,
) -> Completion {
    pollster::block_on(session.run(model, prompt, params, Some(2), &mut |_| {
        ControlFlow::Continue(())
    }))
    .unwrap()
}

#[test]
fn drafts_change_nothing_but_the_number_of_steps() {
    let mut model = model(1);
    let copy = chat(&model, COPY);
    // 16 asks for more than a step keeps exact: the engine drafts at most max_exact_run - 1.
    for sampling in [SamplingParams::greedy(), sampled(3), sampled(11)] {
        let plain = run(
            &mut model,
            &mut Session::new(),
            &copy,
            &params(0, sampling.clone(), 64),
        );
        let drafted = run(
            &mut model,
            &mut Session::new(),
            &copy,
            &params(16, sampling.clone(), 64),
        );
        assert_eq!(drafted.text, plain.text, "{sampling:?}");
        assert_eq!(drafted.tokens, plain.tokens);
        assert_eq!(drafted.stop, plain.stop);
        assert_eq!(plain.n_drafted, 0);
        if !sampling.is_greedy() {
            continue;
        }
        // The greedy answer copies the list: most drafts are taken.
        assert!(
            drafted.n_draft_accepted * 2 > drafted.n_drafted && drafted.n_draft_accepted >= 20,
            "{} of {} drafts taken: {:?}",
            drafted.n_draft_accepted,
            drafted.n_drafted,
            drafted.text
        );
    }

    // The reference's greedy texts with drafts: tests/cli.rs (`run --draft`).

    // A stop string, a grammar and a token limit inside runs of drafts end where they would.
    let mut stopped = params(8, SamplingParams::greedy(), 64);
    // The greedy answer loops on "Pearls, ", drafted whole after its first rounds.
    stopped.stop = vec!["Pearls, Pearls, Pearls, Pearls".into()];
    let plain_stop = GenerateParams {
        draft: 0,
        ..stopped.clone()
    };
    let a = run(&mut model, &mut Session::new(), &copy, &stopped);
    let b = run(&mut model, &mut Session::new(), &copy, &plain_stop);
    assert_eq!((a.text.as_str(), &a.stop), (b.text.as_str(), &b.stop));
    assert!(matches!(a.stop, StopReason::StopString(_)), "{:?}", a.text);
    for n in [1, 2, 7, 13] {
        let a = run(
            &mut model,
            &mut Session::new(),
            &copy,
            &params(8, SamplingParams::greedy(), n),
        );
        assert_eq!(a.tokens.len(), n as usize, "{:?}", a.text);
        assert_eq!(a.stop, StopReason::MaxTokens);
    }
    let fruit = Constraint::JsonSchema(serde_json::json!({
        "type": "object",
        "properties": {"fruits": {"type": "array", "items": {"type": "string", "maxLength": 12},
            "maxItems": 14}},
        "required": ["fruits"], "additionalProperties": false
    }));
    let json = |draft| GenerateParams {
        constraint: Some(fruit.clone()),
        ..params(draft, SamplingParams::greedy(), 120)
    };
    let list = chat(&model, &format!("{COPY} Answer in JSON."));
    let a = run(&mut model, &mut Session::new(), &list, &json(8));
    let b = run(&mut model, &mut Session::new(), &list, &json(0));
    assert_eq!(a.text, b.text);
    assert!(a.n_draft_accepted > 0, "{a:?}");
    serde_json::from_str::<serde_json::Value>(&a.text).unwrap();
}

/// Drafts thrown away leave nothing behind: the next turn of a drafted conversation, which
/// reuses its cache, answers as a conversation without drafts.
#[test]
fn the_cache_after_drafts_serves_the_next_turn() {
    let mut model = model(1);
    let turns = [COPY, "Now repeat it backwards.", "Which of them is yellow?"];
    let mut answers: Vec<Vec<String>> = Vec::new();
    for draft in [0, 8] {
        let mut session = Session::new();
        let mut messages = Vec::new();
        let mut texts = Vec::new();
        for turn in turns {
            messages.push(ChatMessage::new("user", turn));
            let prompt = model.encode_chat(&messages).unwrap();
            let c = run(
                &mut model,
                &mut session,
                &prompt,
                &params(draft, SamplingParams::greedy(), 48),
            );
            if draft > 0 && turn != turns[0] {
                assert!(c.n_reused > 0, "the turn ran its whole prompt again");
            }
            messages.push(ChatMessage::new("assistant", &c.text));
            texts.push(c.text);
        }
        answers.push(texts);
    }
    assert_eq!(answers[1], answers[0]);
}

/// The batching engine drafts for each sequence in the room the batch leaves, and every
/// stream, drafted or beside drafted ones, is its solo run on an engine without drafts.
#[test]
fn batched_drafts_keep_every_stream_exact() {
    let requests = |own_draft: bool| -> Vec<Request> {
        [
            (COPY, SamplingParams::greedy(), 0),
            ("Tell me about the sea.", SamplingParams::greedy(), 0),
            // A request's own number wins over the engine's.
            (COPY, sampled(5), 2),
            (
                "Repeat: one two three four five six seven eight.",
                sampled(9),
                0,
            ),
        ]
        .into_iter()
        .map(|(text, sampling, draft)| Request {
            prompt: Prompt::Chat(vec![ChatMessage::new("user", text)]),
            params: params(if own_draft { draft } else { 0 }, sampling, 40),
            logprobs: Some(1),
        })
        .collect()
    };
    let collect = |mut stream: RequestStream| {
        let mut text = String::new();
        let mut ids = Vec::new();
        loop {
            match pollster::block_on(stream.next()).unwrap() {
                Event::Delta {
                    text: t, logprob, ..
                } => {
                    text.push_str(&t);
                    ids.extend(logprob.map(|l| l.id));
                }
                Event::Finished { stop, .. } => return (text, ids, stop),
                Event::Failed(e) => panic!("{e}"),
                Event::Started { .. } => {}
            }
        }
    };
    let solo: Vec<_> = {
        let plain = Engine::start(model(4), EngineOptions::default()).unwrap();
        let h = plain.handle();
        let solo = requests(false)
            .into_iter()
            .map(|r| collect(h.submit(r).unwrap()))
            .collect();
        assert_eq!(h.metrics().draft_tokens, 0);
        solo
    };
    // Drafted by prompt lookup, then by a draft model (the test model drafting for itself).
    for draft_model in [false, true] {
        let options = EngineOptions {
            draft: 6,
            ..Default::default()
        };
        let draft = draft_model.then(|| model(4));
        let engine = Engine::start_with_draft(model(4), draft, options).unwrap();
        let h = engine.handle();
        let streams: Vec<_> = requests(true)
            .into_iter()
            .map(|r| h.submit(r).unwrap())
            .collect();
        let together: Vec<_> = streams.into_iter().map(collect).collect();
        assert_eq!(together, solo, "draft model: {draft_model}");
        let m = h.metrics();
        assert!(
            m.draft_tokens_accepted >= 20 && m.draft_tokens_accepted <= m.draft_tokens,
            "draft model {draft_model}: {} of {} drafts taken",
            m.draft_tokens_accepted,
            m.draft_tokens
        );
        if draft_model {
            // Sampled requests reject guesses; the greedy ones keep nearly all.
            assert!(
                m.draft_tokens_accepted < m.draft_tokens,
                "nothing was rejected"
            );
            assert!(m.draft_tokens_accepted * 2 > m.draft_tokens);
        }
        assert_eq!(m.running_sequences, 0);
        assert_eq!(m.kv_pages_used, 0, "finished sequences still hold pages");
    }
    // A draft model of fewer sequences than the model is refused.
    let err = Engine::start_with_draft(model(4), Some(model(2)), EngineOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("sequences"), "{err}");
}

/// With the pages short, drafts take only what is free: they preempt no one, and every page
/// taken for a draft that was not kept goes back.
#[test]
fn drafts_take_no_page_another_sequence_needs() {
    let run_all = |draft: usize| {
        let engine = Engine::start(
            model_with(2, 128),
            EngineOptions {
                draft,
                ..Default::default()
            },
        )
        .unwrap();
        let h = engine.handle();
        let prompts = [COPY, COPY];
        let streams: Vec<RequestStream> = prompts
            .iter()
            .map(|p| {
                h.submit(Request {
                    prompt: Prompt::Chat(vec![ChatMessage::new("user", *p)]),
                    params: params(0, SamplingParams::greedy(), 40),
                    logprobs: None,
                })
                .unwrap()
            })
            .collect();
        let mut texts = Vec::new();
        for mut stream in streams {
            let mut text = String::new();
            loop {
                match pollster::block_on(stream.next()).unwrap() {
                    Event::Delta { text: t, .. } => text.push_str(&t),
                    Event::Finished { .. } => break,
                    Event::Failed(e) => panic!("{e}"),
                    Event::Started { .. } => {}
                }
            }
            texts.push(text);
        }
        let m = h.metrics();
        assert_eq!(m.kv_pages_used, 0, "finished sequences still hold pages");
        (texts, m.requests_preempted, m.draft_tokens_accepted)
    };
    let (plain, preempted_plain, _) = run_all(0);
    let (drafted, preempted, accepted) = run_all(6);
    assert_eq!(drafted, plain);
    // Two sequences of about 90 positions (the first 3 pages shared) in 8 pages of 16: they
    // take turns either way.
    assert!(preempted_plain > 0, "the pool was not short");
    assert!(
        preempted <= preempted_plain,
        "drafts preempted: {preempted} against {preempted_plain}"
    );
    assert!(accepted > 0);
}

/// A draft model: the test model drafting for itself guesses every greedy token (the check
/// keeps them all); sampled, it guesses wrong often, and the text is the undrafted run's
/// either way. Across turns its cache follows the session's. A model of another vocabulary is
/// refused.
#[test]
fn a_draft_model_changes_nothing_but_the_number_of_steps() {
    use sovereign::engine::DraftModel;
    let mut target = model(1);
    let mut draft = DraftModel::new(model(1), &target).unwrap();
    let mut session = Session::new();
    let drafted = |target: &mut Model,
                   draft: &mut DraftModel,
                   session: &mut Session,
                   prompt: &[u32],
                   params: &GenerateParams| {
        pollster::block_on(session.run_drafted(
            target,
            Some(draft),
            prompt,
            params,
            Some(2),
            &mut |_| ControlFlow::Continue(()),
        ))
        .unwrap()
    };
    let cases = common::greedy_cases();
    for case in &cases {
        let prompt: Vec<u32> = case["prompt_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect();
        let n = case["n_stable"].as_u64().unwrap() as usize;
        let want: Vec<u32> = case["tokens"].as_array().unwrap()[..n]
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect();
        let p = params(6, SamplingParams::greedy(), n as u32);
        let got = drafted(&mut target, &mut draft, &mut session, &prompt, &p);
        // The reference's end-of-turn token (2) ends the run and is not among its tokens.
        let want: Vec<u32> = want.into_iter().take_while(|&t| t != 2).collect();
        assert_eq!(got.tokens, want);
        assert!(got.n_drafted > 0);
        assert!(
            got.n_draft_accepted * 10 >= got.n_drafted * 9,
            "a model drafting for itself: {} of {} kept",
            got.n_draft_accepted,
            got.n_drafted
        );
    }

    // Sampled: the draft's greedy guesses often miss, and nothing changes.
    let prompt = chat(&target, "Write a short poem about the sea.");
    let mut rejected = 0;
    for seed in [1, 2] {
        let p = params(6, sampled(seed), 40);
        let alone = run(
            &mut target,
            &mut Session::new(),
            &prompt,
            &params(0, sampled(seed), 40),
        );
        // A fresh session: a cached prompt would run its last token in a step of its own,
        // whose logits differ from the prompt step's in their last bits. The draft model's
        // cache still holds the earlier runs.
        let got = drafted(&mut target, &mut draft, &mut Session::new(), &prompt, &p);
        assert_eq!(got.tokens, alone.tokens, "seed {seed}");
        assert_eq!(got.text, alone.text);
        rejected += got.n_drafted - got.n_draft_accepted;
    }
    assert!(
        rejected > 0,
        "no draft was ever rejected: the check was not exercised"
    );

    // The next turn extends the last: the draft model runs only what it has not seen.
    let first = drafted(
        &mut target,
        &mut draft,
        &mut session,
        &prompt,
        &params(6, SamplingParams::greedy(), 12),
    );
    let mut next = prompt.clone();
    next.extend(&first.tokens);
    next.extend(chat(&target, "Another one.").iter().skip(1));
    let turn = drafted(
        &mut target,
        &mut draft,
        &mut session,
        &next,
        &params(6, SamplingParams::greedy(), 12),
    );
    let fresh = run(
        &mut target,
        &mut Session::new(),
        &next,
        &params(0, SamplingParams::greedy(), 12),
    );
    assert_eq!(turn.tokens, fresh.tokens);
    // Its cache followed: the guesses after the new turn are the model's own.
    assert!(
        turn.n_drafted > 0 && turn.n_draft_accepted * 10 >= turn.n_drafted * 9,
        "next turn: {} of {} kept",
        turn.n_draft_accepted,
        turn.n_drafted
    );

    // Another vocabulary.
    use sovereign::model::synthetic::{SyntheticSpec, synthetic_llama};
    let bytes = synthetic_llama(&SyntheticSpec::default())
        .unwrap()
        .to_bytes();
    let file = GgufFile::from_bytes(bytes).unwrap();
    let other = pollster::block_on(Model::load(
        gpu(GpuOptions::default()),
        &file,
        &LoadOptions::default(),
        &mut |_| {},
    ))
    .unwrap();
    let err = DraftModel::new(other, &target).unwrap_err().to_string();
    assert!(
        err.contains("model-draft") && err.contains("vocabulary"),
        "{err}"
    );
    // A shorter context than the model's.
    let err = DraftModel::new(model_with(1, 256), &target)
        .unwrap_err()
        .to_string();
    assert!(err.contains("context"), "{err}");
}
