//! Perplexity of a model over a text, computed as llama.cpp's `llama-perplexity` computes it so
//! that the two figures compare: the tokens are cut into chunks of `n_ctx`, each chunk runs from
//! an empty cache (its first token replaced by BOS when the model adds one), and only the second
//! half of each chunk is scored, so that every scored token has at least `n_ctx / 2` tokens of
//! context. PPL = exp(mean negative log-likelihood of the scored tokens).

use web_time::Instant;

use crate::Result;
use crate::model::llama::Forward;
use crate::model::{LlamaGpu, ModelError, Output};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerplexityOptions {
    /// Tokens per chunk (llama-perplexity's `-c`, 512 by default there).
    pub n_ctx: u32,
    /// Score only the first this many chunks (`--chunks`); `None`: all of them.
    pub max_chunks: Option<u32>,
    /// Put this token first in every chunk (the model's BOS when it adds one).
    pub bos: Option<u32>,
}

/// The running estimate after a chunk, as llama-perplexity prints `[i]ppl`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChunkEstimate {
    /// 1-based.
    pub chunk: usize,
    pub n_chunks: usize,
    pub ppl: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perplexity {
    pub ppl: f64,
    /// Standard error of `ppl` (from the spread of the per-token log-likelihoods).
    pub ppl_stderr: f64,
    pub n_chunks: usize,
    /// Tokens scored: `n_chunks * (n_ctx - n_ctx / 2 - 1)`.
    pub n_scored: usize,
}

/// Negative log-likelihood of `target` under `logits`, through a log-sum-exp in f64.
fn nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&v| f64::from(v - max).exp()).sum();
    let logit = logits
        .get(target as usize)
        .copied()
        .unwrap_or(f32::NEG_INFINITY);
    sum.ln() - f64::from(logit - max)
}

/// The chunking and the running sums, shared by the GPU path and the tests that score the CPU
/// reference the same way.
#[derive(Debug, Clone)]
pub struct Scorer {
    options: PerplexityOptions,
    n_chunks: usize,
    sum: f64,
    sum_sq: f64,
    count: usize,
}

impl Scorer {
    /// Checks that `n_tokens` make at least two chunks (llama-perplexity's rule) that fit a
    /// context of `model_ctx`.
    pub fn new(options: PerplexityOptions, n_tokens: usize, model_ctx: u32) -> Result<Self> {
        let n_ctx = options.n_ctx as usize;
        let bad = |m: String| crate::Error::from(ModelError::BadRequest(m));
        if n_ctx < 4 {
            return Err(bad(format!(
                "a perplexity context of {n_ctx} tokens is too short (at least 4)"
            )));
        }
        if options.n_ctx > model_ctx {
            return Err(bad(format!(
                "chunks of {n_ctx} tokens do not fit the model's context of {model_ctx} (raise --ctx-size)"
            )));
        }
        if n_tokens < 2 * n_ctx {
            return Err(bad(format!(
                "the text is {n_tokens} tokens; perplexity with chunks of {n_ctx} needs at least {}",
                2 * n_ctx
            )));
        }
        let n_chunks =
            (n_tokens / n_ctx).min(options.max_chunks.map_or(usize::MAX, |c| c as usize));
        if n_chunks == 0 {
            return Err(bad("at least one chunk must be scored".into()));
        }
        Ok(Scorer {
            options,
            n_chunks,
            sum: 0.0,
            sum_sq: 0.0,
            count: 0,
        })
    }

    pub fn n_chunks(&self) -> usize {
        self.n_chunks
    }

    /// First position whose logits are scored: earlier ones only fill the cache.
    pub fn first_scored(&self) -> usize {
        self.options.n_ctx as usize / 2
    }

    /// Chunk `c` of `tokens` as it is run: BOS first where the model adds one.
    pub fn chunk_input(&self, tokens: &[u32], c: usize) -> Vec<u32> {
        let n_ctx = self.options.n_ctx as usize;
        let mut input = tokens[c * n_ctx..(c + 1) * n_ctx].to_vec();
        if let Some(bos) = self.options.bos {
            input[0] = bos;
        }
        input
    }

    /// Scores the logits of chunk `c`'s positions `pos0..` (rows of `n_vocab`): the logits
    /// after position j predict token j + 1; positions before `first_scored` and the last one
    /// are skipped.
    pub fn add(&mut self, tokens: &[u32], c: usize, pos0: usize, logits: &[f32], n_vocab: usize) {
        let n_ctx = self.options.n_ctx as usize;
        let original = &tokens[c * n_ctx..(c + 1) * n_ctx];
        let first = self.first_scored();
        for (i, row) in logits.chunks_exact(n_vocab.max(1)).enumerate() {
            let j = pos0 + i;
            if j >= first && j + 1 < n_ctx {
                let v = nll(row, original[j + 1]);
                self.sum += v;
                self.sum_sq += v * v;
                self.count += 1;
            }
        }
    }

    /// Perplexity of the tokens scored so far.
    pub fn ppl(&self) -> f64 {
        (self.sum / self.count.max(1) as f64).exp()
    }

    pub fn finish(&self) -> Perplexity {
        let count = self.count.max(1) as f64;
        let mean = self.sum / count;
        let ppl = mean.exp();
        let var = self.sum_sq / count - mean * mean;
        let ppl_stderr = if var > 0.0 && self.count > 1 {
            (var / (count - 1.0)).sqrt() * ppl
        } else {
            0.0
        };
        Perplexity {
            ppl,
            ppl_stderr,
            n_chunks: self.n_chunks,
            n_scored: self.count,
        }
    }
}

/// Scores `tokens` with `model`, calling `on_chunk` after each chunk.
pub async fn perplexity(
    model: &mut LlamaGpu,
    tokens: &[u32],
    options: PerplexityOptions,
    on_chunk: &mut dyn FnMut(ChunkEstimate),
) -> Result<Perplexity> {
    let mut scorer = Scorer::new(options, tokens.len(), model.n_ctx())?;
    let n_ctx = options.n_ctx as usize;
    let n_vocab = model.config().n_vocab as usize;
    let step = model.max_batch().min(model.max_logit_rows()).max(1) as usize;
    let first = scorer.first_scored();
    for c in 0..scorer.n_chunks() {
        let started = Instant::now();
        let input = scorer.chunk_input(tokens, c);
        let mut pos = 0;
        while pos < n_ctx {
            let end = (pos + step).min(n_ctx);
            let output = if end > first {
                Output::AllLogits
            } else {
                Output::Nothing
            };
            match model.forward(&input[pos..end], pos as u32, output).await? {
                Forward::Logits(logits) => scorer.add(tokens, c, pos, &logits, n_vocab),
                Forward::Nothing if output == Output::Nothing => {}
                _ => {
                    return Err(
                        ModelError::BadRequest("the model returned no logits".into()).into(),
                    );
                }
            }
            pos = end;
        }
        on_chunk(ChunkEstimate {
            chunk: c + 1,
            n_chunks: scorer.n_chunks(),
            ppl: scorer.ppl(),
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    Ok(scorer.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_is_the_negative_log_softmax() {
        let logits = [1.0f32, 2.0, 3.0];
        let z: f64 = logits.iter().map(|&v| f64::from(v).exp()).sum();
        for t in 0..3 {
            let want = -(f64::from(logits[t]).exp() / z).ln();
            assert!((nll(&logits, t as u32) - want).abs() < 1e-12);
        }
        // Uniform logits over n tokens: perplexity n.
        assert!((nll(&[0.5; 8], 3).exp() - 8.0).abs() < 1e-12);
    }
}
