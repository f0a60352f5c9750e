//! Sessions, sampling and generation on top of a loaded model: the small API every surface
//! (CLI, server, apps) talks to.

pub mod sampler;

use std::ops::ControlFlow;
use std::sync::Arc;

use web_time::{Duration, Instant};

pub use sampler::{Sampler, SamplingParams};

use crate::Result;
use crate::format::GgufFile;
use crate::gpu::GpuContext;
use crate::model::llama::{Forward, LoadProgress};
use crate::model::{LlamaConfig, LlamaGpu, LoadOptions, Output};
use crate::tokenizer::{ChatMessage, StreamDecoder, Tokenizer};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid {name}: {message}")]
    InvalidParameter { name: String, message: String },
    #[error("no token can be sampled: every logit is NaN or infinite")]
    NoCandidates,
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error(
        "the prompt has {n_prompt} tokens but the context holds only {n_ctx} (raise it with --ctx-size)"
    )]
    PromptTooLong { n_prompt: usize, n_ctx: u32 },
}

/// A model on the GPU with its tokenizer.
pub struct Model {
    llama: LlamaGpu,
    tokenizer: Tokenizer,
    name: String,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("name", &self.name).finish()
    }
}

impl Model {
    /// Reads the configuration and the tokenizer from `file` and checks that they describe a
    /// model this build can run: every tensor present with its shape and a supported type, head
    /// counts that divide, special tokens inside a vocabulary that matches the embedding.
    pub fn check(file: &GgufFile) -> Result<(LlamaConfig, Tokenizer)> {
        let cfg = LlamaConfig::from_metadata(file.metadata(), file)?;
        let tokenizer = Tokenizer::from_gguf(file.metadata())?;
        if tokenizer.n_vocab() as u64 != u64::from(cfg.n_vocab) {
            return Err(crate::model::ModelError::Invalid(format!(
                "the tokenizer has {} tokens but {} has {} rows",
                tokenizer.n_vocab(),
                crate::model::arch::TOKEN_EMBD,
                cfg.n_vocab
            ))
            .into());
        }
        Ok((cfg, tokenizer))
    }

    /// Checks `file` (see [`check`](Self::check)) and uploads its weights.
    pub async fn load(
        ctx: Arc<GpuContext>,
        file: &GgufFile,
        options: &LoadOptions,
        on_progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let (cfg, tokenizer) = Self::check(file)?;
        let name = file
            .metadata()
            .get_str("general.name")
            .unwrap_or(cfg.arch.as_str())
            .to_string();
        let llama = LlamaGpu::load(ctx, cfg, file, options, on_progress).await?;
        Ok(Model {
            llama,
            tokenizer,
            name,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn config(&self) -> &LlamaConfig {
        self.llama.config()
    }

    pub fn llama(&self) -> &LlamaGpu {
        &self.llama
    }

    pub fn llama_mut(&mut self) -> &mut LlamaGpu {
        &mut self.llama
    }

    /// Raw text to tokens: the model's BOS/EOS flags apply, special tokens written in the text
    /// are parsed as such.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.tokenizer.encode(text, true)?)
    }

    /// A conversation through the model's chat template, ending where the assistant speaks.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let text = self.tokenizer.apply_chat_template(messages, true)?;
        // Templates that write the BOS token themselves must not get a second one.
        let bos_written = self
            .tokenizer
            .bos()
            .and_then(|b| self.tokenizer.token_text(b))
            .is_some_and(|b| !b.is_empty() && text.starts_with(b));
        Ok(self.tokenizer.encode(&text, !bos_written)?)
    }
}

/// What one generation is allowed to do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerateParams {
    /// Most tokens to generate; `None`: until end of generation or a full context.
    pub max_tokens: Option<u32>,
    pub sampling: SamplingParams,
    /// Generation stops before any of these strings; they are not part of the output.
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    EndOfGeneration,
    /// `max_tokens` were generated.
    MaxTokens,
    /// One of the stop strings appeared.
    StopString(String),
    /// The KV cache is full.
    ContextFull,
    /// The caller's callback asked to stop.
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct Completion {
    pub text: String,
    /// Generated tokens (an end-of-generation token that stopped the run is not among them).
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    pub n_prompt: usize,
    /// Prompt tokens whose K/V were already in the cache from the previous request.
    pub n_reused: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

/// One sequence in the model's KV cache. Tokens it has already run stay cached: a request that
/// extends them (the next turn of a chat) only runs what is new.
#[derive(Debug, Default)]
pub struct Session {
    /// Tokens whose K/V occupy positions 0.. of the cache.
    cached: Vec<u32>,
}

impl Session {
    pub fn new() -> Self {
        Session::default()
    }

    /// Forgets the cached tokens (the next request runs its whole prompt).
    pub fn reset(&mut self) {
        self.cached.clear();
    }

    /// Tokens currently in the cache.
    pub fn cached(&self) -> &[u32] {
        &self.cached
    }

    /// Runs `prompt`, then generates, handing each piece of text to `on_text` as soon as it is
    /// final (text that could still become a stop string is held back). `on_text` returns
    /// `ControlFlow::Break` to cancel.
    pub async fn generate(
        &mut self,
        model: &mut Model,
        prompt: &[u32],
        params: &GenerateParams,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Completion> {
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt.into());
        }
        let n_ctx = model.llama.n_ctx();
        if prompt.len() > n_ctx as usize {
            return Err(EngineError::PromptTooLong {
                n_prompt: prompt.len(),
                n_ctx,
            }
            .into());
        }
        let mut sampler = Sampler::new(params.sampling.clone())?;
        if let Some(empty) = params.stop.iter().find(|s| s.is_empty()) {
            return Err(EngineError::InvalidParameter {
                name: "stop".into(),
                message: format!("{empty:?}: stop strings must not be empty"),
            }
            .into());
        }
        // On the GPU, greedy decoding reads back one token id instead of the logits.
        let output = if params.sampling.is_greedy() && !params.sampling.has_penalties() {
            Output::Argmax
        } else {
            Output::LastLogits
        };

        // Reuse the cached prefix, but always run at least the last prompt token: its logits
        // give the first generated token.
        let reuse = self
            .cached
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len() - 1);
        self.cached.truncate(reuse);

        let start = Instant::now();
        let max_batch = model.llama.max_batch() as usize;
        let mut pos = reuse;
        let mut result = Forward::Nothing;
        for chunk in prompt[reuse..].chunks(max_batch) {
            let last = pos + chunk.len() == prompt.len();
            result = model
                .llama
                .forward(
                    chunk,
                    pos as u32,
                    if last { output } else { Output::Nothing },
                )
                .await?;
            self.cached.extend_from_slice(chunk);
            pos += chunk.len();
        }
        let prefill_time = start.elapsed();

        let start = Instant::now();
        let mut history = prompt.to_vec();
        let mut tokens = Vec::new();
        // Generated text continues the prompt: a SentencePiece leading space is real here.
        let mut decoder = StreamDecoder::after_prompt();
        let mut text = String::new();
        let mut sent = 0;
        let stop = loop {
            let token = match &result {
                Forward::Token(t) => *t,
                Forward::Logits(l) => sampler.sample(l, &history)?,
                Forward::Nothing => return Err(EngineError::NoCandidates.into()),
            };
            if !params.ignore_eos && model.tokenizer.is_end_of_generation(token) {
                text.push_str(&decoder.finish());
                break StopReason::EndOfGeneration;
            }
            history.push(token);
            tokens.push(token);
            text.push_str(&decoder.push(&model.tokenizer, token)?);

            if let Some((at, s)) = find_stop(&text, sent, &params.stop) {
                text.truncate(at);
                if at > sent && on_text(&text[sent..]).is_break() {
                    break StopReason::Cancelled;
                }
                sent = text.len();
                break StopReason::StopString(s.to_string());
            }
            let safe = text.len() - partial_stop_suffix(&text[sent..], &params.stop);
            if safe > sent {
                let piece = &text[sent..safe];
                sent = safe;
                if on_text(piece).is_break() {
                    break StopReason::Cancelled;
                }
            }
            if params
                .max_tokens
                .is_some_and(|m| tokens.len() >= m as usize)
            {
                break StopReason::MaxTokens;
            }
            if pos >= n_ctx as usize {
                break StopReason::ContextFull;
            }
            result = model.llama.forward(&[token], pos as u32, output).await?;
            self.cached.push(token);
            pos += 1;
        };
        // Text held back as a possible stop-string prefix is real output once generation ends.
        if sent < text.len() && !matches!(stop, StopReason::Cancelled | StopReason::StopString(_)) {
            let _ = on_text(&text[sent..]);
        }
        Ok(Completion {
            text,
            tokens,
            stop,
            n_prompt: prompt.len(),
            n_reused: reuse,
            prefill_time,
            decode_time: start.elapsed(),
        })
    }
}

/// The first stop string that ends in `text[from..]`: its start, and the string. Stop strings
/// that straddle `from` count (`from` is where unsent text begins).
fn find_stop<'a>(text: &str, from: usize, stops: &'a [String]) -> Option<(usize, &'a str)> {
    stops
        .iter()
        .filter_map(|s| {
            let search_from = floor_char_boundary(text, from.saturating_sub(s.len()));
            text[search_from..]
                .find(s.as_str())
                .map(|i| (search_from + i, s.as_str()))
        })
        .min_by_key(|(at, _)| *at)
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Length of the longest suffix of `text` that is a proper prefix of some stop string: text that
/// must wait for the next token before it can be shown.
fn partial_stop_suffix(text: &str, stops: &[String]) -> usize {
    let mut longest = 0;
    for s in stops {
        for (i, _) in s.char_indices().skip(1) {
            if i > longest && text.ends_with(&s[..i]) {
                longest = i;
            }
        }
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_found_across_pieces() {
        let stops = vec!["\n\n".to_string(), "User:".to_string()];
        assert_eq!(find_stop("abc\n\nd", 4, &stops), Some((3, "\n\n")));
        assert_eq!(find_stop("hello User: x", 0, &stops), Some((6, "User:")));
        assert_eq!(find_stop("hello", 0, &stops), None);
        assert_eq!(partial_stop_suffix("hello Us", &stops), 2);
        assert_eq!(partial_stop_suffix("hello\n", &stops), 1);
        assert_eq!(partial_stop_suffix("hello", &stops), 0);
        // Multi-byte characters: suffixes are cut at character boundaries.
        let stops = vec!["é!".to_string()];
        assert_eq!(partial_stop_suffix("caf\u{e9}", &stops), 2);
        assert_eq!(find_stop("caf\u{e9}!", 4, &stops), Some((3, "é!")));
    }
}
