//! Prefill and decode throughput measured the way llama-bench measures it, so the figures sit
//! beside llama.cpp's: pp = one batch of random tokens from an empty cache, tg = tokens decoded
//! one at a time from an empty cache, each after an unmeasured warm-up run.

use web_time::Instant;

use crate::Result;
use crate::engine::Model;
use crate::kernels::profile::KernelTime;
use crate::model::{ModelError, Output, StepTimes};

/// Tokens per second of each repetition of one test.
#[derive(Debug, Clone)]
pub struct BenchResult {
    /// `pp512`, `tg128`, ...
    pub test: String,
    pub n_tokens: u32,
    pub tokens_per_second: Vec<f64>,
    /// The forward steps of all repetitions: how many, and their host and total time.
    pub steps: StepTimes,
    /// GPU time per kernel of one extra, profiled run (empty unless asked for).
    pub profile: Vec<KernelTime>,
}

impl BenchResult {
    pub fn mean(&self) -> f64 {
        self.tokens_per_second.iter().sum::<f64>() / self.tokens_per_second.len().max(1) as f64
    }

    /// Sample standard deviation, as llama-bench reports it.
    pub fn stddev(&self) -> f64 {
        let n = self.tokens_per_second.len();
        if n < 2 {
            return 0.0;
        }
        let mean = self.mean();
        let var = self
            .tokens_per_second
            .iter()
            .map(|v| (v - mean).powi(2))
            .sum::<f64>()
            / (n - 1) as f64;
        var.sqrt()
    }

    /// Host time per step (checking, writing the step buffer, encoding, submitting) and total
    /// time per step, in seconds.
    pub fn host_and_step_seconds(&self) -> (f64, f64) {
        let n = self.steps.steps.max(1) as f64;
        (
            self.steps.host.as_secs_f64() / n,
            self.steps.total.as_secs_f64() / n,
        )
    }
}

/// A fixed-seed generator for the benchmark's random tokens (llama-bench uses rand()).
struct TokenSource(u64);

impl TokenSource {
    fn next(&mut self, n_vocab: u32) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % u64::from(n_vocab)) as u32
    }
}

async fn prefill(model: &mut Model, tokens: &[u32]) -> Result<()> {
    let max_batch = model.llama().max_batch() as usize;
    let mut pos = 0;
    for chunk in tokens.chunks(max_batch) {
        let last = pos + chunk.len() == tokens.len();
        let output = if last {
            Output::Argmax
        } else {
            Output::Nothing
        };
        model.llama_mut().forward(chunk, pos as u32, output).await?;
        pos += chunk.len();
    }
    Ok(())
}

async fn decode(model: &mut Model, n: u32, source: &mut TokenSource) -> Result<()> {
    let n_vocab = model.config().n_vocab;
    for pos in 0..n {
        let token = source.next(n_vocab);
        model
            .llama_mut()
            .forward(&[token], pos, Output::Argmax)
            .await?;
    }
    Ok(())
}

/// Runs `pp{n_prompt}` (if > 0) and `tg{n_gen}` (if > 0), `repetitions` times each; with
/// `profile`, each test then runs once more with every dispatch timed on the GPU.
pub async fn run(
    model: &mut Model,
    n_prompt: u32,
    n_gen: u32,
    repetitions: u32,
    profile: bool,
) -> Result<Vec<BenchResult>> {
    if profile && !model.llama().context().timestamps() {
        return Err(ModelError::BadRequest(
            "this adapter cannot write GPU timestamps, which the profile needs".into(),
        )
        .into());
    }
    let n_ctx = model.llama().n_ctx();
    if n_prompt > n_ctx || n_gen > n_ctx {
        return Err(crate::model::ModelError::BadRequest(format!(
            "pp{n_prompt} / tg{n_gen} do not fit in the context of {n_ctx} tokens (raise --ctx-size)"
        ))
        .into());
    }
    let mut source = TokenSource(1234);
    let n_vocab = model.config().n_vocab;
    let mut results = Vec::new();
    if n_prompt > 0 {
        let tokens: Vec<u32> = (0..n_prompt).map(|_| source.next(n_vocab)).collect();
        prefill(model, &tokens).await?;
        let mut r = BenchResult {
            test: format!("pp{n_prompt}"),
            n_tokens: n_prompt,
            tokens_per_second: Vec::new(),
            steps: StepTimes::default(),
            profile: Vec::new(),
        };
        model.llama_mut().take_step_times();
        for _ in 0..repetitions {
            let start = Instant::now();
            prefill(model, &tokens).await?;
            r.tokens_per_second
                .push(f64::from(n_prompt) / start.elapsed().as_secs_f64());
        }
        r.steps = model.llama_mut().take_step_times();
        if profile {
            model.llama_mut().set_profiling(true);
            prefill(model, &tokens).await?;
            r.profile = model.llama_mut().take_profile();
            model.llama_mut().set_profiling(false);
        }
        results.push(r);
    }
    if n_gen > 0 {
        decode(model, n_gen.min(16), &mut source).await?;
        let mut r = BenchResult {
            test: format!("tg{n_gen}"),
            n_tokens: n_gen,
            tokens_per_second: Vec::new(),
            steps: StepTimes::default(),
            profile: Vec::new(),
        };
        model.llama_mut().take_step_times();
        for _ in 0..repetitions {
            let start = Instant::now();
            decode(model, n_gen, &mut source).await?;
            r.tokens_per_second
                .push(f64::from(n_gen) / start.elapsed().as_secs_f64());
        }
        r.steps = model.llama_mut().take_step_times();
        if profile {
            model.llama_mut().set_profiling(true);
            decode(model, n_gen, &mut source).await?;
            r.profile = model.llama_mut().take_profile();
            model.llama_mut().set_profiling(false);
        }
        results.push(r);
    }
    Ok(results)
}

/// Aggregate decode throughput of several sequences decoding together through the engine's
/// scheduler, and the KV memory their pages hold but do not use.
#[derive(Debug, Clone)]
pub struct StreamsResult {
    pub n_streams: usize,
    /// Tokens received across all streams while every stream was decoding.
    pub window_tokens: usize,
    pub window_seconds: f64,
    /// Positions of the pages the running sequences held, and of those holding K/V, summed over
    /// the samples taken in the window (one per step).
    pub kv_allocated: u64,
    pub kv_stored: u64,
    pub kv_samples: usize,
}

impl StreamsResult {
    pub fn tokens_per_second(&self) -> f64 {
        self.window_tokens as f64 / self.window_seconds
    }

    /// Allocated positions holding nothing, as a fraction of those allocated.
    pub fn kv_waste(&self) -> f64 {
        if self.kv_allocated == 0 {
            return 0.0;
        }
        (self.kv_allocated - self.kv_stored.min(self.kv_allocated)) as f64
            / self.kv_allocated as f64
    }
}

/// Submits `n_streams` requests of `n_prompt` distinct random tokens, each generating `n_gen`
/// (end-of-generation ignored), and measures the window in which all of them are decoding: from
/// the last stream's first token to the first stream's last. Prefill of late streams overlaps
/// the early ones' decoding (chunked prefill), so `n_gen` must outlast it.
pub async fn streams(
    engine: &crate::engine::service::EngineHandle,
    n_streams: usize,
    n_prompt: u32,
    n_gen: u32,
    seed: u64,
) -> Result<StreamsResult> {
    use crate::engine::service::{Event, Prompt, Request};
    use crate::engine::{GenerateParams, SamplingParams};
    let n_vocab = engine.model_info().n_vocab;
    let mut source = TokenSource(seed);
    let mut requests = Vec::with_capacity(n_streams);
    for _ in 0..n_streams {
        let tokens: Vec<u32> = (0..n_prompt).map(|_| source.next(n_vocab)).collect();
        requests.push(engine.submit(Request {
            prompt: Prompt::Tokens(tokens),
            params: GenerateParams {
                max_tokens: Some(n_gen),
                sampling: SamplingParams::greedy(),
                ignore_eos: true,
                ..Default::default()
            },
            logprobs: None,
        })?);
    }
    let page_tokens = engine.metrics().kv_page_tokens.max(1);
    // Each stream's token arrival times; stream 0 also samples the KV gauges at each of its
    // tokens (the engine publishes them after every step).
    let collectors = requests
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| async move {
            let mut times = Vec::with_capacity(n_gen as usize);
            let mut samples = Vec::new();
            loop {
                match s.next().await {
                    Some(Event::Delta { token: Some(_), .. }) => {
                        let now = Instant::now();
                        times.push(now);
                        if i == 0 {
                            let m = engine.metrics();
                            samples.push((now, m.kv_pages_used * page_tokens, m.kv_tokens_stored));
                        }
                    }
                    Some(Event::Finished { .. }) | None => return Ok((times, samples)),
                    Some(Event::Failed(message)) => {
                        return Err(crate::engine::EngineError::Stopped(message));
                    }
                    Some(_) => {}
                }
            }
        });
    let collected = futures_util::future::join_all(collectors).await;
    let mut times = Vec::with_capacity(n_streams);
    let mut samples = Vec::new();
    for c in collected {
        let (t, s) = c?;
        times.push(t);
        samples.extend(s);
    }
    let start = times.iter().filter_map(|t| t.first()).max().copied();
    let end = times.iter().filter_map(|t| t.last()).min().copied();
    let (Some(start), Some(end)) = (start, end) else {
        return Err(crate::model::ModelError::BadRequest("no tokens were generated".into()).into());
    };
    if end <= start {
        return Err(crate::model::ModelError::BadRequest(format!(
            "the first stream finished before the last one started: raise -n above {n_gen}"
        ))
        .into());
    }
    let window_tokens = times
        .iter()
        .flatten()
        .filter(|&&t| t > start && t <= end)
        .count();
    let in_window: Vec<_> = samples
        .iter()
        .filter(|(t, _, _)| *t >= start && *t <= end)
        .collect();
    Ok(StreamsResult {
        n_streams,
        window_tokens,
        window_seconds: (end - start).as_secs_f64(),
        kv_allocated: in_window.iter().map(|s| s.1).sum(),
        kv_stored: in_window.iter().map(|s| s.2).sum(),
        kv_samples: in_window.len(),
    })
}
