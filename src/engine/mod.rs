//! Sessions, sampling and generation on top of a loaded model: the small API every surface
//! (CLI, server, apps) talks to.

mod draft;
pub mod embed;
pub mod gbnf;
mod grammar;
pub mod sampler;
pub mod sequence;
#[cfg(any(feature = "native", target_arch = "wasm32"))]
pub mod service;
mod window;

use std::ops::ControlFlow;
use std::sync::Arc;

use web_time::{Duration, Instant};

pub use embed::{Embedding, Normalize, Pooling};
pub use grammar::{Constraint, GrammarState, Grammars};
pub use sampler::{Sampler, SamplingParams};
pub use sequence::{Advance, Logits, SequenceState, TokenLogprob, TopToken};
pub use window::{FittedConversation, fit_conversation};

use crate::Result;
use crate::format::GgufFile;
use crate::gpu::GpuContext;
use crate::model::llama::{Forward, LoadProgress};
use crate::model::{LlamaConfig, LlamaGpu, LoadOptions, Output};
use crate::tokenizer::{ChatMessage, Tokenizer};

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
    #[error("the queue is full ({running} requests running, {max} waiting); try again later")]
    QueueFull { max: usize, running: usize },
    #[error("{0}")]
    Stopped(String),
    #[error("invalid grammar: {0}")]
    Grammar(String),
    /// A request the engine took failed while it ran (not for want of capacity: trying again
    /// will not help).
    #[error("{0}")]
    Failed(String),
}

/// How many leading tokens `a` and `b` share: what a cache holding `a` keeps of `b`.
pub(crate) fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A model on the GPU with its tokenizer.
pub struct Model {
    llama: LlamaGpu,
    tokenizer: Arc<Tokenizer>,
    grammars: Arc<Grammars>,
    name: String,
    /// How embeddings are pooled unless a request says otherwise (the file's choice).
    pooling: Pooling,
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
        let pooling = Pooling::of_model(file.metadata(), &cfg.arch);
        let llama = LlamaGpu::load(ctx, cfg, file, options, on_progress).await?;
        let tokenizer = Arc::new(tokenizer);
        Ok(Model {
            llama,
            grammars: Arc::new(Grammars::new(Arc::clone(&tokenizer))),
            tokenizer,
            name,
            pooling,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The tokenizer, to share with threads that prepare requests.
    pub fn shared_tokenizer(&self) -> Arc<Tokenizer> {
        Arc::clone(&self.tokenizer)
    }

    /// Compiles the grammars of constrained requests against this model's vocabulary.
    pub fn grammars(&self) -> Arc<Grammars> {
        Arc::clone(&self.grammars)
    }

    pub fn config(&self) -> &LlamaConfig {
        self.llama.config()
    }

    /// The pooling the model's file names for embeddings (mean where it names none).
    pub fn pooling(&self) -> Pooling {
        self.pooling
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
        Ok(self.tokenizer.encode_chat(messages)?)
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
    /// Keep going past end-of-generation tokens (benchmarks). A complete grammar still ends
    /// generation.
    pub ignore_eos: bool,
    /// What the generated text must be (JSON, a grammar); `None` leaves the model free.
    pub constraint: Option<Constraint>,
    /// Most tokens to draft per step (by prompt lookup, or by a [`DraftModel`] where one is
    /// given), checked all in one step (0: none). The
    /// output is what it would be without drafts: a draft is kept only where the token sampled
    /// before it, with the sampler's own draw, is that token.
    pub draft: usize,
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
    /// Tokens drafted (by prompt lookup or a draft model), and how many of them the model went
    /// on to sample.
    pub n_drafted: usize,
    pub n_draft_accepted: usize,
}

/// A smaller model that shares the main model's vocabulary, drafting for it: at each step it
/// runs greedily a few tokens ahead, and the main model checks them all in one step (kept only
/// where it samples them itself, so the output does not change). Its cache follows the
/// session's tokens; what it ran past a rejected guess is overwritten.
pub struct DraftModel {
    model: Model,
    /// Tokens whose K/V occupy positions 0.. of the draft model's cache.
    cached: Vec<u32>,
}

impl std::fmt::Debug for DraftModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DraftModel")
            .field("model", &self.model.name)
            .field("cached", &self.cached.len())
            .finish()
    }
}

impl DraftModel {
    /// `draft` to draft for `target`: their vocabularies must be the same token for token, and
    /// the draft's context at least as long as the target's.
    pub fn new(draft: Model, target: &Model) -> Result<DraftModel> {
        let (d, t) = (draft.tokenizer(), target.tokenizer());
        let mismatch = |message: String| EngineError::InvalidParameter {
            name: "model-draft".into(),
            message,
        };
        if d.n_vocab() != t.n_vocab() {
            return Err(mismatch(format!(
                "the draft model has {} tokens, the model {}: they must share a vocabulary",
                d.n_vocab(),
                t.n_vocab()
            ))
            .into());
        }
        if let Some(id) = (0..t.n_vocab() as u32).find(|&id| d.token_text(id) != t.token_text(id)) {
            return Err(mismatch(format!(
                "token {id} is {:?} in the draft model and {:?} in the model: they must share a vocabulary",
                d.token_text(id).unwrap_or_default(),
                t.token_text(id).unwrap_or_default()
            ))
            .into());
        }
        let (n_draft, n_target) = (draft.llama.n_ctx(), target.llama.n_ctx());
        if n_draft < n_target {
            return Err(mismatch(format!(
                "the draft model's context ({n_draft}) is shorter than the model's ({n_target})"
            ))
            .into());
        }
        Ok(DraftModel {
            model: draft,
            cached: Vec::new(),
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The draft model itself, checked against its model.
    pub fn into_model(self) -> Model {
        self.model
    }

    /// Runs what of `tokens` the draft model's cache lacks (a prompt, with the main model's).
    async fn catch_up(&mut self, tokens: &[u32]) -> Result<()> {
        let llama = &mut self.model.llama;
        if tokens.len() > llama.n_ctx() as usize {
            return Ok(());
        }
        let common = common_prefix(&self.cached, tokens);
        self.cached.truncate(common);
        let max_batch = llama.max_batch() as usize;
        for chunk in tokens[common..].chunks(max_batch) {
            llama
                .forward(chunk, self.cached.len() as u32, Output::Nothing)
                .await?;
            self.cached.extend_from_slice(chunk);
        }
        Ok(())
    }

    /// Up to `n` tokens that the draft model, greedy, writes after `history`, ending at its
    /// first end-of-generation token. It first runs what of `history` its cache lacks.
    async fn propose(&mut self, history: &[u32], n: usize) -> Result<Vec<u32>> {
        let llama = &mut self.model.llama;
        let n_ctx = llama.n_ctx() as usize;
        if n == 0 || history.is_empty() || history.len() >= n_ctx {
            return Ok(Vec::new());
        }
        // Always run the last token: its output is the first guess.
        let common = common_prefix(&self.cached, history).min(history.len() - 1);
        self.cached.truncate(common);
        let max_batch = llama.max_batch() as usize;
        let mut pos = common;
        let mut next = None;
        for chunk in history[common..].chunks(max_batch) {
            let last = pos + chunk.len() == history.len();
            let out = if last {
                Output::Argmax
            } else {
                Output::Nothing
            };
            let result = llama.forward(chunk, pos as u32, out).await?;
            self.cached.extend_from_slice(chunk);
            pos += chunk.len();
            if let Forward::Token(t) = result {
                next = Some(t);
            }
        }
        let mut drafts = Vec::with_capacity(n);
        while let Some(token) = next {
            drafts.push(token);
            // Past an end the main model would stop, or go on past a token it did not write.
            if drafts.len() == n
                || pos + 1 >= n_ctx
                || self.model.tokenizer.is_end_of_generation(token)
            {
                break;
            }
            next = match llama.forward(&[token], pos as u32, Output::Argmax).await? {
                Forward::Token(t) => Some(t),
                _ => None,
            };
            self.cached.push(token);
            pos += 1;
        }
        Ok(drafts)
    }
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

    /// The embedding of `tokens`: the final norm's output at every position, pooled and
    /// normalized. It runs in this session's cache positions, so the cached tokens are
    /// forgotten.
    pub async fn embed(
        &mut self,
        model: &mut Model,
        tokens: &[u32],
        pooling: Pooling,
        normalize: Normalize,
    ) -> Result<Embedding> {
        let n_ctx = model.llama.n_ctx() as usize;
        if tokens.is_empty() {
            return Err(EngineError::EmptyPrompt.into());
        }
        if tokens.len() > n_ctx {
            return Err(EngineError::PromptTooLong {
                n_prompt: tokens.len(),
                n_ctx: n_ctx as u32,
            }
            .into());
        }
        self.cached.clear();
        let mut pooler = embed::Pooler::new(pooling, model.config().n_embd as usize);
        let max_batch = model.llama.max_batch() as usize;
        for (i, chunk) in tokens.chunks(max_batch).enumerate() {
            let pos0 = (i * max_batch) as u32;
            match model.llama.forward(chunk, pos0, Output::AllHidden).await? {
                Forward::Hidden(rows) => pooler.add(&rows),
                _ => {
                    return Err(
                        EngineError::Failed("the step returned no hidden rows".into()).into(),
                    );
                }
            }
        }
        Ok(Embedding {
            values: pooler.finish(normalize),
            n_tokens: tokens.len(),
        })
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
        self.run(model, prompt, params, None, &mut |step| {
            if step.text.is_empty() {
                ControlFlow::Continue(())
            } else {
                on_text(&step.text)
            }
        })
        .await
    }

    /// As [`generate`](Self::generate), reporting every step (token, released text, logprobs
    /// with `logprobs` alternatives) to `on_step`.
    pub async fn run(
        &mut self,
        model: &mut Model,
        prompt: &[u32],
        params: &GenerateParams,
        logprobs: Option<usize>,
        on_step: &mut dyn FnMut(&Advance) -> ControlFlow<()>,
    ) -> Result<Completion> {
        self.run_drafted(model, None, prompt, params, logprobs, on_step)
            .await
    }

    /// As [`run`](Self::run), with the drafts (up to `params.draft` a step) written by
    /// `draft` instead of found by prompt lookup, where it is given.
    pub async fn run_drafted(
        &mut self,
        model: &mut Model,
        mut draft: Option<&mut DraftModel>,
        prompt: &[u32],
        params: &GenerateParams,
        logprobs: Option<usize>,
        on_step: &mut dyn FnMut(&Advance) -> ControlFlow<()>,
    ) -> Result<Completion> {
        let n_ctx = model.llama.n_ctx() as usize;
        if prompt.len() > n_ctx {
            return Err(EngineError::PromptTooLong {
                n_prompt: prompt.len(),
                n_ctx: n_ctx as u32,
            }
            .into());
        }
        let mut seq = SequenceState::new(prompt, params.clone(), logprobs, &model.grammars)?;
        // On the GPU, greedy decoding reads back one token id instead of the logits.
        let output = if seq.argmax_suffices() {
            Output::Argmax
        } else {
            Output::LastLogits
        };

        // Reuse the cached prefix, but always run at least the last prompt token: its logits
        // give the first generated token.
        let reuse = common_prefix(&self.cached, prompt).min(prompt.len() - 1);
        self.cached.truncate(reuse);

        let start = Instant::now();
        let max_batch = model.llama.max_batch() as usize;
        let mut pos = reuse;
        let mut result = Forward::Nothing;
        for chunk in prompt[reuse..].chunks(max_batch) {
            let last = pos + chunk.len() == prompt.len();
            let out = if last { output } else { Output::Nothing };
            result = model.llama.forward(chunk, pos as u32, out).await?;
            self.cached.extend_from_slice(chunk);
            pos += chunk.len();
        }
        // The draft model runs the prompt too, counted with it (not with the first token).
        if let Some(d) = draft.as_deref_mut()
            && params.draft > 0
            && params.max_tokens != Some(0)
        {
            d.catch_up(prompt).await?;
        }
        let prefill_time = start.elapsed();

        let start = Instant::now();
        // A step with drafted tokens wants an output row for each of them.
        let output_all = if output == Output::Argmax {
            Output::AllArgmax
        } else {
            Output::AllLogits
        };
        // A drafted step stays as short as the kernels keep exact (the logits of one-token steps).
        let max_run = model
            .llama
            .max_logit_rows()
            .min(model.llama.max_batch())
            .min(model.llama.max_exact_run())
            .min(model.llama.max_exact_step()) as usize;
        let vocab = model.config().n_vocab as usize;
        // Tokens the last step ran after its first, as guesses: row j of its output comes
        // after drafts[..j].
        let mut drafts: Vec<u32> = Vec::new();
        // The next step's tokens: the sampled one and its drafts (one buffer for every step).
        let mut run = Vec::new();
        // What a draft model drafts after (one buffer for every step).
        let mut history = Vec::new();
        let (mut n_drafted, mut n_draft_accepted) = (0, 0);
        // -n 0 runs the prompt (into the cache) and samples nothing, as in llama.cpp.
        let stop = if params.max_tokens == Some(0) {
            StopReason::MaxTokens
        } else {
            'steps: loop {
                let mut next = None;
                let mut accepted = 0;
                for j in 0..=drafts.len() {
                    let logits =
                        Logits::of_row(&result, j, vocab).ok_or(EngineError::NoCandidates)?;
                    // Row j's token would be run at `pos`: the accepted drafts before it moved
                    // `pos` on.
                    let step = seq.advance(&model.tokenizer, logits, pos < n_ctx)?;
                    // Row j checks draft j (if any) against its token; rows after an end check
                    // nothing.
                    if step.finished.is_none() {
                        n_drafted += usize::from(j < drafts.len());
                    }
                    if on_step(&step).is_break() {
                        break 'steps StopReason::Cancelled;
                    }
                    let (None, Some(token)) = (step.finished.clone(), step.token) else {
                        break 'steps step.finished.unwrap_or(StopReason::EndOfGeneration);
                    };
                    match drafts.get(j) {
                        // The draft was what the model sampled: its K/V are already in place.
                        Some(&d) if d == token => {
                            self.cached.push(d);
                            pos += 1;
                            accepted += 1;
                            n_draft_accepted += 1;
                        }
                        _ => {
                            next = Some(token);
                            break;
                        }
                    }
                }
                let Some(token) = next else {
                    return Err(EngineError::NoCandidates.into());
                };
                seq.drafts_checked(drafts.len(), accepted);
                let room = n_ctx.saturating_sub(pos + 1).min(max_run.saturating_sub(1));
                drafts = match draft.as_deref_mut() {
                    Some(d) => {
                        let budget = seq.draft_budget(room);
                        if budget == 0 {
                            Vec::new()
                        } else {
                            // What the session holds, then the token this step runs first.
                            history.clear();
                            history.extend_from_slice(&self.cached);
                            history.push(token);
                            d.propose(&history, budget).await?
                        }
                    }
                    None => seq.draft(room),
                };
                run.clear();
                run.push(token);
                run.extend_from_slice(&drafts);
                let out = if drafts.is_empty() {
                    output
                } else {
                    output_all
                };
                result = model.llama.forward(&run, pos as u32, out).await?;
                self.cached.push(token);
                pos += 1;
            }
        };
        Ok(Completion {
            text: seq.text().to_string(),
            tokens: seq.generated().to_vec(),
            stop,
            n_prompt: prompt.len(),
            n_reused: reuse,
            prefill_time,
            decode_time: start.elapsed(),
            n_drafted,
            n_draft_accepted,
        })
    }
}
