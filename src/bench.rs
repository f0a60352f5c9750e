//! Prefill and decode throughput measured the way llama-bench measures it, so the figures sit
//! beside llama.cpp's: pp = one batch of random tokens from an empty cache, tg = tokens decoded
//! one at a time from an empty cache, each after an unmeasured warm-up run.

use web_time::Instant;

use crate::Result;
use crate::engine::Model;
use crate::model::Output;

/// Tokens per second of each repetition of one test.
#[derive(Debug, Clone)]
pub struct BenchResult {
    /// `pp512`, `tg128`, ...
    pub test: String,
    pub n_tokens: u32,
    pub tokens_per_second: Vec<f64>,
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

/// Runs `pp{n_prompt}` (if > 0) and `tg{n_gen}` (if > 0), `repetitions` times each.
pub async fn run(
    model: &mut Model,
    n_prompt: u32,
    n_gen: u32,
    repetitions: u32,
) -> Result<Vec<BenchResult>> {
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
        };
        for _ in 0..repetitions {
            let start = Instant::now();
            prefill(model, &tokens).await?;
            r.tokens_per_second
                .push(f64::from(n_prompt) / start.elapsed().as_secs_f64());
        }
        results.push(r);
    }
    if n_gen > 0 {
        decode(model, n_gen.min(16), &mut source).await?;
        let mut r = BenchResult {
            test: format!("tg{n_gen}"),
            n_tokens: n_gen,
            tokens_per_second: Vec::new(),
        };
        for _ in 0..repetitions {
            let start = Instant::now();
            decode(model, n_gen, &mut source).await?;
            r.tokens_per_second
                .push(f64::from(n_gen) / start.elapsed().as_secs_f64());
        }
        results.push(r);
    }
    Ok(results)
}
