//! The engine as a service: requests are submitted from any thread, each returns an async stream
//! of events, and dropping or cancelling the stream stops its generation. One loop owns the model
//! and the GPU; on native targets it runs on its own thread.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_channel::mpsc;
use web_time::{Duration, Instant};

use super::embed::{Embedding, Normalize, Pooler, Pooling};
use super::sequence::{Logits, SequenceState, TokenLogprob};
use super::{EngineError, GenerateParams, Grammars, Model, StopReason};
use crate::Result;
use crate::kernels::StepInput;
use crate::kv::{KvCache, SeqId};
use crate::model::llama::{Forward, PageCopy, StepOutput};
use crate::tokenizer::{ChatMessage, Tokenizer};

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Raw text; special tokens written in it are parsed as such.
    Text(String),
    /// A conversation, through the model's chat template, ending where the assistant speaks.
    Chat(Vec<ChatMessage>),
    /// Token ids.
    Tokens(Vec<u32>),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Request {
    pub prompt: Prompt,
    pub params: GenerateParams,
    /// Report each token's log-probability with this many alternatives (0..=20).
    pub logprobs: Option<usize>,
}

/// Embeddings of one or more inputs, each pooled into its own vector.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EmbedRequest {
    pub inputs: Vec<Prompt>,
    /// `None`: the model's own (see [`Model::pooling`]).
    pub pooling: Option<Pooling>,
    pub normalize: Normalize,
    /// An input longer than the context keeps its first `n_ctx` tokens instead of failing the
    /// request.
    pub truncate: bool,
}

impl Default for Prompt {
    fn default() -> Self {
        Prompt::Text(String::new())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose K/V came from the cache instead of being computed.
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Timings {
    /// Submitted to started.
    pub queued: Duration,
    /// Submitted to the first generated token.
    pub time_to_first_token: Option<Duration>,
    /// Submitted to finished.
    pub total: Duration,
}

/// What a request's stream yields, in order: `Started`, any number of `Delta`s, then one of
/// `Finished` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Started {
        prompt_tokens: usize,
        cached_tokens: usize,
    },
    /// One step: the token generated (none when the step ended generation) and the text that
    /// became final (possibly empty while it could still turn into a stop string).
    Delta {
        token: Option<u32>,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    Finished {
        stop: StopReason,
        usage: Usage,
        timings: Timings,
    },
    Failed(String),
}

/// A snapshot of the engine's counters and gauges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    pub requests_submitted: u64,
    pub requests_finished: u64,
    pub requests_cancelled: u64,
    pub requests_failed: u64,
    pub requests_rejected: u64,
    pub queue_depth: u64,
    pub running_sequences: u64,
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub generated_tokens: u64,
    /// Tokens drafted by prompt lookup, and those of them the model sampled.
    pub draft_tokens: u64,
    pub draft_tokens_accepted: u64,
    pub prefix_cache_hits: u64,
    pub time_to_first_token_seconds_sum: f64,
    pub time_to_first_token_count: u64,
    pub inter_token_seconds_sum: f64,
    pub inter_token_count: u64,
    /// Embedding requests submitted, and the inputs they embedded.
    pub embedding_requests: u64,
    pub embedded_inputs: u64,
    /// Generated tokens per second over the last busy stretch.
    pub decode_tokens_per_second: f64,
    pub requests_preempted: u64,
    pub kv_pages_total: u64,
    /// Pages some running sequence holds.
    pub kv_pages_used: u64,
    /// Pages that only the prefix cache holds (reused on a hit, evicted when needed).
    pub kv_pages_cached: u64,
    /// Positions per page.
    pub kv_page_tokens: u64,
    /// Positions of running sequences held in used pages (the rest of those pages is waste).
    pub kv_tokens_stored: u64,
}

/// What the service knows about its model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub arch: String,
    pub n_ctx: u32,
    pub n_vocab: u32,
    pub adapter: String,
    pub backend: String,
    /// Bytes of GPU memory the model holds: weights and KV cache.
    pub gpu_bytes: u64,
    /// Width of the model's embeddings (its hidden size).
    pub n_embd: u32,
    /// How the model pools embeddings unless a request says otherwise.
    #[serde(serialize_with = "pooling_name")]
    pub pooling: Pooling,
}

fn pooling_name<S: serde::Serializer>(p: &Pooling, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(p.name())
}

#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Requests that may wait beside those the model's sequence slots run; more are refused
    /// with `QueueFull`.
    pub max_queue: usize,
    /// Most prompt tokens one step runs while other sequences are decoding, so a long prompt
    /// delays their next token by one chunk, not by the whole prompt. With nothing decoding a
    /// step takes as many as the model's batch allows.
    pub prefill_chunk: usize,
    /// Most tokens to draft per step by prompt lookup for requests that do not say
    /// (`GenerateParams::draft` 0); 0: none.
    pub draft: usize,
    /// How embeddings are pooled; `None`: as the model's file says (mean where it says
    /// nothing).
    pub pooling: Option<Pooling>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_queue: 64,
            prefill_chunk: 256,
            draft: 0,
            pooling: None,
        }
    }
}

struct Job {
    /// Prompt tokens, for the usage counts.
    n_prompt: usize,
    events: mpsc::UnboundedSender<Event>,
    cancelled: Arc<AtomicBool>,
    submitted: Instant,
    /// Counts the request as in flight until the engine lets go of it, however it ends.
    _in_flight: InFlight,
}

/// One request's share of [`Shared::in_flight`], given back on drop.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

enum Command {
    /// A checked request: its job and its sequence state, prompt included.
    Submit(Job, Box<SequenceState>, Vec<u32>),
    Embed(EmbedJob),
    Shutdown,
}

/// What an embedding request's waiter gets: a vector per input, or why there are none.
type EmbedReply = std::result::Result<Vec<Embedding>, String>;

/// A checked embedding request: every input's tokens.
struct EmbedJob {
    inputs: Vec<Vec<u32>>,
    pooling: Pooling,
    normalize: Normalize,
    reply: futures_channel::oneshot::Sender<EmbedReply>,
    /// Counts the request as in flight until the engine lets go of it.
    _in_flight: InFlight,
}

struct Shared {
    commands: mpsc::UnboundedSender<Command>,
    /// Requests submitted and not yet started (the queue depth of the metrics).
    queued: AtomicUsize,
    /// Requests submitted and not yet ended, running or waiting: the bound on them is the
    /// sequence slots plus `max_queue`, checked and counted in one atomic step, so a burst on
    /// an idle engine fills the free slots before anything counts as queued.
    in_flight: Arc<AtomicUsize>,
    /// Sequences the model runs at once.
    n_slots: usize,
    tokenizer: Arc<Tokenizer>,
    grammars: Arc<Grammars>,
    info: ModelInfo,
    options: EngineOptions,
    metrics: Mutex<Metrics>,
}

/// A cheap, cloneable handle for submitting requests from any thread.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("model", &self.shared.info.name)
            .finish()
    }
}

/// The running service; dropping it stops the loop once the running requests end.
pub struct Engine {
    handle: EngineHandle,
    #[cfg(not(target_arch = "wasm32"))]
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Engine {
    /// Starts the loop that owns `model`.
    pub fn start(model: Model, options: EngineOptions) -> Result<Engine> {
        Self::start_with_draft(model, None, options)
    }

    /// As [`start`](Self::start), with `draft` drafting for every request that drafts
    /// (`GenerateParams::draft`, or `options.draft` for those that do not say) instead of
    /// prompt lookup. It must share the model's vocabulary, hold as long a context and as many
    /// sequences.
    pub fn start_with_draft(
        model: Model,
        draft: Option<Model>,
        options: EngineOptions,
    ) -> Result<Engine> {
        let draft = match draft {
            None => None,
            Some(d) => {
                let (n_draft, n_seq) = (d.llama().n_seq(), model.llama().n_seq());
                if n_draft < n_seq {
                    return Err(EngineError::InvalidParameter {
                        name: "model-draft".into(),
                        message: format!(
                            "the draft model runs {n_draft} sequences at once, the model {n_seq}"
                        ),
                    }
                    .into());
                }
                Some(super::DraftModel::new(d, &model)?.into_model())
            }
        };
        let (tx, rx) = mpsc::unbounded();
        let llama = model.llama();
        let ctx = llama.context();
        let info = ModelInfo {
            name: model.name().to_string(),
            arch: model.config().arch.clone(),
            n_ctx: llama.n_ctx(),
            n_vocab: model.config().n_vocab,
            adapter: ctx.adapter_info().name.clone(),
            backend: format!("{:?}", ctx.adapter_info().backend),
            gpu_bytes: llama.weight_bytes() + llama.kv_bytes(),
            n_embd: model.config().n_embd,
            pooling: options.pooling.unwrap_or(model.pooling()),
        };
        let shared = Arc::new(Shared {
            commands: tx,
            queued: AtomicUsize::new(0),
            in_flight: Arc::new(AtomicUsize::new(0)),
            n_slots: llama.n_seq() as usize,
            tokenizer: model.shared_tokenizer(),
            grammars: model.grammars(),
            info,
            options,
            metrics: Mutex::new(Metrics::default()),
        });
        let handle = EngineHandle {
            shared: Arc::clone(&shared),
        };
        #[cfg(not(target_arch = "wasm32"))]
        {
            // The loop's future holds non-Send callbacks across awaits: build it on its thread.
            let thread = std::thread::Builder::new()
                .name("sovereign-engine".into())
                .spawn(move || pollster::block_on(run_loop(model, draft, rx, shared)))
                .map_err(|e| {
                    EngineError::Stopped(format!("cannot start the engine thread: {e}"))
                })?;
            Ok(Engine {
                handle,
                thread: Some(thread),
            })
        }
        #[cfg(target_arch = "wasm32")]
        {
            wasm_bindgen_futures::spawn_local(run_loop(model, draft, rx, shared));
            Ok(Engine { handle })
        }
    }

    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self
            .handle
            .shared
            .commands
            .unbounded_send(Command::Shutdown);
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl EngineHandle {
    pub fn model_info(&self) -> &ModelInfo {
        &self.shared.info
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.shared.tokenizer
    }

    /// Sequences the engine runs at once (its slots).
    pub fn n_slots(&self) -> usize {
        self.shared.n_slots
    }

    pub fn metrics(&self) -> Metrics {
        self.shared
            .metrics
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    fn update(&self, f: impl FnOnce(&mut Metrics)) {
        if let Ok(mut m) = self.shared.metrics.lock() {
            f(&mut m);
        }
    }

    /// The prompt's tokens, as the engine will run them.
    pub fn tokenize(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        let t = &self.shared.tokenizer;
        Ok(match prompt {
            Prompt::Text(text) => t.encode(text, true)?,
            Prompt::Chat(messages) => t.encode_chat(messages)?,
            Prompt::Tokens(ids) => {
                if let Some(&bad) = ids.iter().find(|&&id| id >= self.shared.info.n_vocab) {
                    return Err(crate::model::ModelError::TokenOutOfRange {
                        token: bad,
                        n_vocab: self.shared.info.n_vocab,
                    }
                    .into());
                }
                ids.clone()
            }
        })
    }

    /// Checks and queues a request. Fails at once, without queueing, on a bad request, a prompt
    /// longer than the context, or a full queue.
    pub fn submit(&self, request: Request) -> Result<RequestStream> {
        let tokens = self.tokenize(&request.prompt)?;
        let n_ctx = self.shared.info.n_ctx as usize;
        if tokens.is_empty() {
            return Err(EngineError::EmptyPrompt.into());
        }
        if tokens.len() >= n_ctx {
            return Err(EngineError::PromptTooLong {
                n_prompt: tokens.len(),
                n_ctx: n_ctx as u32,
            }
            .into());
        }
        // Sampling settings and stop strings are checked here so a bad one fails the call; the
        // state travels with the job.
        let mut params = request.params;
        if params.draft == 0 {
            params.draft = self.shared.options.draft;
        }
        let state = SequenceState::new(&tokens, params, request.logprobs, &self.shared.grammars)?;
        let in_flight = self.take_place()?;
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        let (events, rx) = mpsc::unbounded();
        let cancelled = Arc::new(AtomicBool::new(false));
        let job = Job {
            n_prompt: tokens.len(),
            events,
            cancelled: Arc::clone(&cancelled),
            submitted: Instant::now(),
            _in_flight: in_flight,
        };
        self.update(|m| {
            m.requests_submitted += 1;
            m.queue_depth = self.shared.queued.load(Ordering::Acquire) as u64;
        });
        self.shared
            .commands
            .unbounded_send(Command::Submit(job, Box::new(state), tokens))
            .map_err(|_| {
                self.shared.queued.fetch_sub(1, Ordering::AcqRel);
                EngineError::Stopped("the engine has stopped".into())
            })?;
        Ok(RequestStream { rx, cancelled })
    }
}

impl EngineHandle {
    /// Counts one more request in flight, or refuses it when the slots and the queue are full.
    fn take_place(&self) -> Result<InFlight> {
        let (max, running) = (self.shared.options.max_queue, self.shared.n_slots);
        let admitted =
            self.shared
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < running.saturating_add(max)).then_some(n + 1)
                });
        if admitted.is_err() {
            self.update(|m| m.requests_rejected += 1);
            return Err(EngineError::QueueFull { max, running }.into());
        }
        Ok(InFlight(Arc::clone(&self.shared.in_flight)))
    }

    /// Checks and queues an embedding request. Fails at once on an empty input, an input
    /// longer than the context (unless `truncate`), or a full queue. The embeddings come in
    /// the order of the inputs; dropping the returned waiter cancels the request.
    pub fn embed(&self, request: EmbedRequest) -> Result<PendingEmbeddings> {
        if request.inputs.is_empty() {
            return Err(EngineError::InvalidParameter {
                name: "input".into(),
                message: "no inputs to embed".into(),
            }
            .into());
        }
        let n_ctx = self.shared.info.n_ctx as usize;
        let numbered = request.inputs.len() > 1;
        let mut inputs = Vec::with_capacity(request.inputs.len());
        for (i, prompt) in request.inputs.iter().enumerate() {
            let mut tokens = self.tokenize(prompt)?;
            let fault = |message: String| EngineError::InvalidParameter {
                name: if numbered {
                    format!("input[{i}]")
                } else {
                    "input".into()
                },
                message,
            };
            if tokens.is_empty() {
                return Err(fault("it holds no tokens".into()).into());
            }
            if tokens.len() > n_ctx {
                if !request.truncate {
                    return Err(fault(format!(
                        "it has {} tokens but the context holds only {n_ctx}",
                        tokens.len()
                    ))
                    .into());
                }
                tokens.truncate(n_ctx);
            }
            inputs.push(tokens);
        }
        let in_flight = self.take_place()?;
        let (reply, rx) = futures_channel::oneshot::channel();
        let n_tokens: usize = inputs.iter().map(Vec::len).sum();
        let job = EmbedJob {
            pooling: request.pooling.unwrap_or(self.shared.info.pooling),
            normalize: request.normalize,
            inputs,
            reply,
            _in_flight: in_flight,
        };
        self.update(|m| {
            m.requests_submitted += 1;
            m.embedding_requests += 1;
            m.prompt_tokens += n_tokens as u64;
        });
        self.shared
            .commands
            .unbounded_send(Command::Embed(job))
            .map_err(|_| EngineError::Stopped("the engine has stopped".into()))?;
        Ok(PendingEmbeddings { rx })
    }
}

/// The embeddings of a request, once the engine has run it. Dropping it cancels the request.
pub struct PendingEmbeddings {
    rx: futures_channel::oneshot::Receiver<EmbedReply>,
}

impl PendingEmbeddings {
    /// The vectors, one per input in order.
    pub async fn wait(self) -> Result<Vec<Embedding>> {
        match self.rx.await {
            Ok(Ok(embeddings)) => Ok(embeddings),
            Ok(Err(message)) => Err(EngineError::Failed(message).into()),
            Err(_) => Err(EngineError::Stopped("the engine has stopped".into()).into()),
        }
    }
}

/// The events of one request. Dropping it cancels the request.
pub struct RequestStream {
    rx: mpsc::UnboundedReceiver<Event>,
    cancelled: Arc<AtomicBool>,
}

impl RequestStream {
    /// Stops generation; the stream then ends with `Finished { stop: Cancelled, .. }`.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// A handle that cancels this request from elsewhere while the stream is being read.
    pub fn canceller(&self) -> Canceller {
        Canceller(Arc::clone(&self.cancelled))
    }

    /// The next event, or `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Event> {
        futures_util::StreamExt::next(&mut self.rx).await
    }
}

/// Cancels one request, as [`RequestStream::cancel`] does.
#[derive(Debug, Clone)]
pub struct Canceller(Arc<AtomicBool>);

impl Canceller {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl futures_core::Stream for RequestStream {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        Pin::new(&mut self.rx).poll_next(cx)
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        self.cancel();
    }
}

async fn run_loop(
    model: Model,
    draft: Option<Model>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    shared: Arc<Shared>,
) {
    let handle = EngineHandle { shared };
    let mut scheduler = Scheduler::new(model, handle.shared.options.prefill_chunk, draft);
    loop {
        if scheduler.is_idle() {
            match futures_util::StreamExt::next(&mut commands).await {
                Some(Command::Submit(job, state, tokens)) => scheduler.enqueue(job, *state, tokens),
                Some(Command::Embed(job)) => scheduler.embeds.push_back(job),
                Some(Command::Shutdown) | None => return,
            }
        }
        while let Ok(cmd) = commands.try_recv() {
            match cmd {
                Command::Submit(job, state, tokens) => scheduler.enqueue(job, *state, tokens),
                Command::Embed(job) => scheduler.embeds.push_back(job),
                Command::Shutdown => return,
            }
        }
        scheduler.iteration(&handle).await;
    }
}

/// A request waiting for a slot: new, or preempted (its state kept, its K/V to recompute).
struct Waiting {
    job: Job,
    state: SequenceState,
    /// Tokens to have in the cache before generating: the prompt, plus what was generated
    /// before a preemption.
    tokens: Vec<u32>,
    progress: Progress,
}

/// What a request has done so far, kept across preemptions.
#[derive(Clone, Copy)]
struct Progress {
    started: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    cached_prompt: usize,
}

impl Progress {
    fn timings(&self, job: &Job) -> Timings {
        let total = job.submitted.elapsed();
        Timings {
            // Not started yet: all of it was queueing.
            queued: self.started.map_or(total, |s| s - job.submitted),
            time_to_first_token: self.first_token.map(|t| t - job.submitted),
            total,
        }
    }
}

struct Running {
    id: SeqId,
    slot: u32,
    job: Job,
    state: SequenceState,
    tokens: Vec<u32>,
    /// Leading `tokens` whose K/V are in the cache.
    n_cached: usize,
    /// A sampled token not yet run (the sequence is decoding).
    pending: Option<u32>,
    progress: Progress,
    /// Tokens whose K/V the draft model holds for this sequence (same id and slot as here).
    draft_cached: Vec<u32>,
}

/// One sequence's share of a step.
struct Entry {
    index: usize,
    tokens: Vec<u32>,
    start: usize,
    output: bool,
    /// Tokens after the first that are drafted guesses (a decoding sequence's); each of the
    /// entry's tokens then has an output row.
    drafted: usize,
}

/// Iteration-level scheduling over a paged KV cache: every step runs the next token of each
/// decoding sequence and a chunk of waiting prompts, new requests join between steps, finished
/// and cancelled ones leave at once, and when pages run out the newest sequence is preempted
/// (its pages freed, its K/V recomputed when it resumes).
struct Scheduler {
    model: Model,
    kv: KvCache,
    n_ctx: usize,
    max_batch: usize,
    max_out: usize,
    prefill_chunk: usize,
    free_slots: Vec<u32>,
    waiting: VecDeque<Waiting>,
    running: Vec<Running>,
    next_id: SeqId,
    /// Embedding requests not yet started, and the one running (a chunk of it each step).
    embeds: VecDeque<EmbedJob>,
    embedding: Option<EmbedRun>,
    /// The draft model, where one drafts instead of prompt lookup.
    drafter: Option<Drafter>,
}

/// A draft model in the scheduler: its own pool of KV pages, with a sequence for each running
/// one under the same id and in the same slot.
struct Drafter {
    model: Model,
    kv: KvCache,
}

/// One sequence's drafting in a step: what the draft model has yet to run, and its guesses.
struct Proposal {
    /// Index into the step's entries.
    entry: usize,
    id: SeqId,
    slot: u32,
    /// The sequence's tokens and the one the step runs first: what the guesses follow.
    history: Vec<u32>,
    /// Leading `history` the draft model has run.
    fed: usize,
    budget: usize,
    drafts: Vec<u32>,
}

impl Drafter {
    /// Up to `budgets[i]` greedy guesses of the draft model for each decoding entry: first the
    /// tokens its cache lacks (all sequences in steps of its batch), then a token a step.
    async fn propose(
        &mut self,
        running: &mut [Running],
        entries: &[Entry],
        budgets: &[usize],
    ) -> Result<Vec<Vec<u32>>> {
        let mut out = vec![Vec::new(); entries.len()];
        let llama = self.model.llama();
        let (max_batch, max_rows) = (
            llama.max_batch() as usize,
            llama.max_out_rows(StepOutput::Argmax) as usize,
        );
        let mut ps: Vec<Proposal> = Vec::new();
        for (i, (e, &budget)) in entries.iter().zip(budgets).enumerate() {
            if budget == 0 || ps.len() == max_rows {
                continue;
            }
            let r = &mut running[e.index];
            let mut history = r.tokens.clone();
            history.extend(r.pending);
            let fed = super::common_prefix(&r.draft_cached, &history)
                .min(history.len().saturating_sub(1));
            // Pages for the history and every guess but the last (which is never run); a
            // sequence they cannot be found for drafts nothing this step.
            if self.kv.reserve(r.id, history.len() + budget - 1).is_err() {
                continue;
            }
            r.draft_cached.truncate(fed);
            ps.push(Proposal {
                entry: i,
                id: r.id,
                slot: r.slot,
                history,
                fed,
                budget,
                drafts: Vec::new(),
            });
        }
        // Catching up: each sequence's last history token gives its first guess.
        while ps.iter().any(|p| p.fed < p.history.len()) {
            let mut step = StepRows::default();
            let mut finishing = Vec::new();
            for (k, p) in ps.iter_mut().enumerate() {
                let room = max_batch - step.tokens.len();
                if p.fed == p.history.len() || room == 0 {
                    continue;
                }
                let end = p.history.len().min(p.fed + room);
                step.add(
                    p.slot,
                    p.fed,
                    &p.history[p.fed..end],
                    end == p.history.len(),
                );
                if end == p.history.len() {
                    finishing.push(k);
                }
                p.fed = end;
            }
            let ids = self.run(&ps, &step).await?;
            for (&k, id) in finishing.iter().zip(ids) {
                ps[k].drafts.push(id);
            }
        }
        for p in &ps {
            running[entries[p.entry].index].draft_cached = p.history.clone();
        }
        // A token a step, for the sequences that want more.
        loop {
            let mut step = StepRows::default();
            let mut going = Vec::new();
            for (k, p) in ps.iter().enumerate() {
                // Past an end the model would stop, or go on past a token it did not write.
                if let Some(&last) = p.drafts.last()
                    && p.drafts.len() < p.budget
                    && !self.model.tokenizer().is_end_of_generation(last)
                {
                    step.add(p.slot, p.history.len() + p.drafts.len() - 1, &[last], true);
                    going.push(k);
                }
            }
            if going.is_empty() {
                break;
            }
            let ids = self.run(&ps, &step).await?;
            for (&k, id) in going.iter().zip(ids) {
                let p = &mut ps[k];
                if let Some(&last) = p.drafts.last() {
                    running[entries[p.entry].index].draft_cached.push(last);
                }
                p.drafts.push(id);
            }
        }
        for p in ps {
            out[p.entry] = p.drafts;
        }
        Ok(out)
    }

    /// Runs one step of the draft model; the argmax of each output row.
    async fn run(&mut self, ps: &[Proposal], step: &StepRows) -> Result<Vec<u32>> {
        let tables: Vec<(u32, &[u32])> = ps
            .iter()
            .map(|p| (p.slot, self.kv.pages(p.id).unwrap_or(&[])))
            .collect();
        let input = step.input(&tables);
        match self
            .model
            .llama_mut()
            .step(&input, &[], StepOutput::Argmax)
            .await?
        {
            Forward::Tokens(ids) if ids.len() == step.out_rows.len() => Ok(ids),
            _ => {
                Err(EngineError::Failed("the draft model's step returned no tokens".into()).into())
            }
        }
    }
}

/// What a step leaves for drafts: runs of up to `max_exact_run` tokens and a step of at most
/// `max_exact_step` (so that drafts change no logits), the logit rows, and the context.
struct DraftRoom {
    /// Drafts one sequence may add after its token.
    run: usize,
    /// Tokens the step may still take.
    step: usize,
    /// Output rows the step may still take.
    rows: usize,
    n_ctx: usize,
}

impl DraftRoom {
    /// Drafts a sequence whose token runs at `start` may add.
    fn of(&self, start: usize) -> usize {
        (self.n_ctx - 1)
            .saturating_sub(start)
            .min(self.run)
            .min(self.step)
            .min(self.rows)
    }

    /// `n` drafts went into the step.
    fn take(&mut self, n: usize) {
        self.step = self.step.saturating_sub(n);
        self.rows = self.rows.saturating_sub(n);
    }
}

/// The rows of a step being built.
#[derive(Default)]
struct StepRows {
    tokens: Vec<u32>,
    positions: Vec<u32>,
    slots: Vec<u32>,
    out_rows: Vec<u32>,
}

impl StepRows {
    /// `tokens` of the sequence in `slot` at positions `pos0..`, every row read.
    fn add_all(&mut self, slot: u32, pos0: usize, tokens: &[u32]) {
        let first = self.tokens.len() as u32;
        self.add(slot, pos0, tokens, false);
        self.out_rows.extend(first..self.tokens.len() as u32);
    }

    /// The step's input, with the page tables of its slots.
    fn input<'a>(&'a self, tables: &'a [(u32, &'a [u32])]) -> StepInput<'a> {
        StepInput {
            tokens: &self.tokens,
            positions: &self.positions,
            slots: &self.slots,
            out_rows: &self.out_rows,
            tables,
        }
    }

    /// `tokens` of the sequence in `slot` at positions `pos0..`; `output`: the last one's row
    /// is read.
    fn add(&mut self, slot: u32, pos0: usize, tokens: &[u32], output: bool) {
        for (k, &t) in tokens.iter().enumerate() {
            self.tokens.push(t);
            self.positions.push((pos0 + k) as u32);
            self.slots.push(slot);
        }
        if output {
            self.out_rows.push(self.tokens.len() as u32 - 1);
        }
    }
}

/// The embedding request being run: each input in a sequence of its own that ends with it,
/// as many at once as slots are free and a step's tokens allow.
struct EmbedRun {
    job: EmbedJob,
    /// Each input's vector, once pooled.
    done: Vec<Option<Embedding>>,
    n_done: usize,
    /// The first input not started.
    next_input: usize,
    active: Vec<EmbedSeq>,
    /// Generations from this id on were admitted after the request began: only they may be
    /// preempted for its pages.
    newer_than: SeqId,
}

struct EmbedSeq {
    input: usize,
    id: SeqId,
    slot: u32,
    pooler: Pooler,
    /// Leading tokens of the input already run.
    n_done: usize,
}

impl Scheduler {
    fn new(model: Model, prefill_chunk: usize, draft: Option<Model>) -> Self {
        let llama = model.llama();
        let page_size = llama.page_size();
        let pages_per_seq = llama.n_ctx().div_ceil(page_size);
        Scheduler {
            kv: KvCache::new(llama.n_pages(), page_size, pages_per_seq),
            n_ctx: llama.n_ctx() as usize,
            max_batch: llama.max_batch() as usize,
            max_out: llama.max_logit_rows() as usize,
            prefill_chunk: prefill_chunk.max(1),
            free_slots: (0..llama.n_seq()).rev().collect(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_id: 0,
            embeds: VecDeque::new(),
            embedding: None,
            drafter: draft.map(|model| {
                let l = model.llama();
                let kv = KvCache::new(
                    l.n_pages(),
                    l.page_size(),
                    l.n_ctx().div_ceil(l.page_size()),
                );
                Drafter { model, kv }
            }),
            model,
        }
    }

    fn is_idle(&self) -> bool {
        self.waiting.is_empty()
            && self.running.is_empty()
            && self.embeds.is_empty()
            && self.embedding.is_none()
    }

    fn enqueue(&mut self, job: Job, state: SequenceState, tokens: Vec<u32>) {
        self.waiting.push_back(Waiting {
            job,
            state,
            tokens,
            progress: Progress {
                started: None,
                first_token: None,
                last_token: None,
                cached_prompt: 0,
            },
        });
    }

    async fn iteration(&mut self, handle: &EngineHandle) {
        self.drop_cancelled(handle);
        // An embedding takes a free slot before waiting generations do, so a stream of those
        // cannot keep it waiting.
        self.embed_step(handle).await;
        self.admit(handle);
        self.publish(handle);
        let Some((mut entries, mut copies)) = self.plan(handle) else {
            return;
        };
        if self.drafter.is_some() {
            self.add_model_drafts(&mut entries, &mut copies).await;
        }
        let started = Instant::now();
        let result = self.step(handle, &entries, &copies).await;
        tracing::debug!(
            sequences = entries.len(),
            tokens = entries.iter().map(|e| e.tokens.len()).sum::<usize>(),
            page_copies = copies.len(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "step"
        );
        if let Err(e) = result {
            // The step's sequences cannot be trusted to continue: fail them, keep serving.
            let message = e.to_string();
            tracing::error!("step failed: {message}");
            let mut failed: Vec<usize> = entries.iter().map(|e| e.index).collect();
            failed.sort_unstable();
            for &i in failed.iter().rev() {
                let r = self.running.swap_remove(i);
                handle.update(|m| m.requests_failed += 1);
                // Slot, pages and queue place first: whoever sees the stream end sees them free.
                let events = r.job.events.clone();
                self.retire(r);
                let _ = events.unbounded_send(Event::Failed(message.clone()));
            }
        }
        self.publish(handle);
    }

    fn publish(&self, handle: &EngineHandle) {
        let s = self.kv.stats();
        handle.update(|m| {
            m.queue_depth = handle.shared.queued.load(Ordering::Acquire) as u64;
            m.running_sequences = self.running.len() as u64;
            m.kv_pages_total = s.pages_total as u64;
            m.kv_pages_used = s.pages_used as u64;
            m.kv_pages_cached = s.pages_cached as u64;
            m.kv_page_tokens = self.kv.page_size() as u64;
            m.kv_tokens_stored = s.tokens_stored as u64;
        });
    }

    /// Frees the slot and pages of a sequence that has left.
    fn retire(&mut self, r: Running) {
        let _ = self.kv.release(r.id);
        self.release_draft(r.id);
        self.free_slots.push(r.slot);
    }

    /// Gives back the draft model's pages of sequence `id`.
    fn release_draft(&mut self, id: SeqId) {
        if let Some(d) = self.drafter.as_mut() {
            let _ = d.kv.release(id);
        }
    }

    fn finish(&mut self, handle: &EngineHandle, r: Running, stop: StopReason) {
        let usage = Usage {
            prompt_tokens: r.job.n_prompt,
            completion_tokens: r.state.generated().len(),
            cached_tokens: r.progress.cached_prompt,
        };
        handle.update(|m| {
            if stop == StopReason::Cancelled {
                m.requests_cancelled += 1;
            } else {
                m.requests_finished += 1;
            }
        });
        let event = Event::Finished {
            stop,
            usage,
            timings: r.progress.timings(&r.job),
        };
        let events = r.job.events.clone();
        // Pages and gauges first: whoever sees the stream end sees its pages free.
        self.retire(r);
        self.publish(handle);
        let _ = events.unbounded_send(event);
    }

    fn drop_cancelled(&mut self, handle: &EngineHandle) {
        let gone = |job: &Job| job.cancelled.load(Ordering::Relaxed) || job.events.is_closed();
        let mut i = 0;
        while i < self.running.len() {
            if gone(&self.running[i].job) {
                let r = self.running.swap_remove(i);
                self.finish(handle, r, StopReason::Cancelled);
            } else {
                i += 1;
            }
        }
        let mut ended = Vec::new();
        self.waiting.retain(|w| {
            if !gone(&w.job) {
                return true;
            }
            if w.progress.started.is_none() {
                handle.shared.queued.fetch_sub(1, Ordering::AcqRel);
            }
            // Waiting (new, or preempted) requests end the way running ones do.
            ended.push((
                w.job.events.clone(),
                Event::Finished {
                    stop: StopReason::Cancelled,
                    usage: Usage {
                        prompt_tokens: w.job.n_prompt,
                        completion_tokens: w.state.generated().len(),
                        cached_tokens: w.progress.cached_prompt,
                    },
                    timings: w.progress.timings(&w.job),
                },
            ));
            false
        });
        // Embedding requests nobody waits for leave the queue (and their place in it) now.
        let before = self.embeds.len();
        self.embeds.retain(|job| !job.reply.is_canceled());
        let gone_embeds = (before - self.embeds.len()) as u64;
        if gone_embeds > 0 {
            handle.update(|m| m.requests_cancelled += gone_embeds);
        }
        // Sent once the jobs are dropped: whoever sees the stream end sees its place free.
        if !ended.is_empty() {
            handle.update(|m| m.requests_cancelled += ended.len() as u64);
            self.publish(handle);
        }
        for (events, event) in ended {
            let _ = events.unbounded_send(event);
        }
    }

    /// Moves waiting requests into free slots, sharing cached prefix pages.
    fn admit(&mut self, handle: &EngineHandle) {
        while !self.waiting.is_empty() {
            let Some(&slot) = self.free_slots.last() else {
                return;
            };
            let Some(w) = self.waiting.pop_front() else {
                return;
            };
            if w.progress.started.is_none() {
                handle.shared.queued.fetch_sub(1, Ordering::AcqRel);
            }
            let state = w.state;
            let id = self.next_id;
            self.next_id += 1;
            let cached = match self.kv.add_sequence(id, &w.tokens) {
                Ok(n) => n,
                Err(e) => {
                    handle.update(|m| m.requests_failed += 1);
                    let events = w.job.events.clone();
                    drop(w.job);
                    let _ = events.unbounded_send(Event::Failed(e.to_string()));
                    continue;
                }
            };
            self.free_slots.pop();
            let mut progress = w.progress;
            if progress.started.is_none() {
                progress.started = Some(Instant::now());
                progress.cached_prompt = cached;
                let _ = w.job.events.unbounded_send(Event::Started {
                    prompt_tokens: w.job.n_prompt,
                    cached_tokens: cached,
                });
                handle.update(|m| {
                    m.prompt_tokens += w.job.n_prompt as u64;
                    m.cached_prompt_tokens += cached as u64;
                    if cached > 0 {
                        m.prefix_cache_hits += 1;
                    }
                });
            }
            self.running.push(Running {
                id,
                slot,
                job: w.job,
                state,
                tokens: w.tokens,
                n_cached: cached,
                pending: None,
                progress,
                draft_cached: Vec::new(),
            });
            if let Some(d) = self.drafter.as_mut() {
                // Every position the draft model runs is its own: nothing to share.
                let _ = d.kv.add_sequence(id, &[]);
            }
        }
    }

    /// Runs the next step of the embedding request at the head of its queue, in a step of its
    /// own (its rows want the final norm, not logits), and answers the request once its last
    /// input is pooled.
    async fn embed_step(&mut self, handle: &EngineHandle) {
        if self.embedding.is_none() {
            while let Some(job) = self.embeds.pop_front() {
                if job.reply.is_canceled() {
                    handle.update(|m| m.requests_cancelled += 1);
                    continue;
                }
                let n = job.inputs.len();
                self.embedding = Some(EmbedRun {
                    job,
                    done: vec![None; n],
                    n_done: 0,
                    next_input: 0,
                    active: Vec::new(),
                    newer_than: self.next_id,
                });
                break;
            }
        }
        let Some(mut run) = self.embedding.take() else {
            return;
        };
        if run.job.reply.is_canceled() {
            handle.update(|m| m.requests_cancelled += 1);
            self.end_embedding(handle, run, None);
            return;
        }
        match self.embed_chunks(handle, &mut run).await {
            Ok(()) if run.n_done == run.job.inputs.len() => {
                handle.update(|m| {
                    m.requests_finished += 1;
                    m.embedded_inputs += run.n_done as u64;
                });
                let done = std::mem::take(&mut run.done)
                    .into_iter()
                    .flatten()
                    .collect();
                self.end_embedding(handle, run, Some(Ok(done)));
            }
            Ok(()) => self.embedding = Some(run),
            Err(e) => {
                tracing::warn!("embedding failed: {e}");
                handle.update(|m| m.requests_failed += 1);
                self.end_embedding(handle, run, Some(Err(e.to_string())));
            }
        }
    }

    /// Pages for `id` to hold `len` positions: generations admitted after the embedding
    /// began (`newer_than` on) are preempted for them, older ones never, so a stream of
    /// embeddings cannot keep one generation recomputing. `None`: not now (older generations,
    /// or the request's other inputs (`others`), hold the pages and will give them back).
    fn embed_pages(
        &mut self,
        handle: &EngineHandle,
        id: SeqId,
        len: usize,
        newer_than: SeqId,
        others: bool,
    ) -> Result<Option<Vec<PageCopy>>> {
        loop {
            match self.kv.reserve(id, len) {
                Ok(copies) => return Ok(Some(copies)),
                Err(crate::kv::KvError::OutOfPages { .. })
                    if self.running.iter().any(|r| r.id >= newer_than) =>
                {
                    if self.preempt_newest() {
                        handle.update(|m| m.requests_preempted += 1);
                    }
                }
                Err(crate::kv::KvError::OutOfPages { .. })
                    if others || !self.running.is_empty() =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(EngineError::Failed(e.to_string()).into()),
            }
        }
    }

    /// One step of `run`: the next chunk of each input it has started, and more inputs in the
    /// free slots, up to the step's budget of tokens.
    async fn embed_chunks(&mut self, handle: &EngineHandle, run: &mut EmbedRun) -> Result<()> {
        let fault = |e: crate::kv::KvError| EngineError::Failed(e.to_string());
        let budget = if self.running.is_empty() {
            self.max_batch
        } else {
            self.prefill_chunk.min(self.max_batch)
        };
        let n_embd = self.model.config().n_embd as usize;
        // (index into run.active, tokens of its input in this step)
        let mut entries: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
        let mut copies = Vec::new();
        let mut used = 0;
        let mut k = 0;
        while used < budget {
            if k == run.active.len() {
                // Another input, where a slot is free and pages for all of it are: an input
                // holds its pages from its first step to its last, so inputs never wait on each
                // other for pages.
                let Some(&slot) = self.free_slots.last() else {
                    break;
                };
                let Some(tokens) = run.job.inputs.get(run.next_input) else {
                    break;
                };
                let id = self.next_id;
                // Every position's rows are pooled, so none may come from the prefix cache.
                self.kv.add_sequence(id, &[]).map_err(fault)?;
                let others = !run.active.is_empty();
                match self.embed_pages(handle, id, tokens.len(), run.newer_than, others) {
                    Ok(Some(c)) => copies.extend(c),
                    Ok(None) => {
                        let _ = self.kv.release(id);
                        break;
                    }
                    Err(e) => {
                        let _ = self.kv.release(id);
                        return Err(e);
                    }
                }
                self.next_id += 1;
                self.free_slots.pop();
                run.active.push(EmbedSeq {
                    input: run.next_input,
                    id,
                    slot,
                    pooler: Pooler::new(run.job.pooling, n_embd),
                    n_done: 0,
                });
                run.next_input += 1;
            }
            let seq = &run.active[k];
            let len = run.job.inputs[seq.input].len();
            let range = seq.n_done..len.min(seq.n_done + budget - used);
            used += range.len();
            entries.push((k, range));
            k += 1;
        }
        if entries.is_empty() {
            return Ok(());
        }
        let mut step = StepRows::default();
        for (k, range) in &entries {
            let seq = &run.active[*k];
            step.add_all(
                seq.slot,
                range.start,
                &run.job.inputs[seq.input][range.clone()],
            );
        }
        let tables: Vec<(u32, &[u32])> = entries
            .iter()
            .map(|(k, _)| {
                let seq = &run.active[*k];
                (seq.slot, self.kv.pages(seq.id).unwrap_or(&[]))
            })
            .collect();
        let input = step.input(&tables);
        let forward = self
            .model
            .llama_mut()
            .step(&input, &copies, StepOutput::Hidden)
            .await?;
        let Forward::Hidden(rows) = forward else {
            return Err(EngineError::Failed("the step returned no hidden rows".into()).into());
        };
        let mut row = 0;
        for (k, range) in &entries {
            let seq = &mut run.active[*k];
            let n = range.len();
            seq.pooler
                .add(rows.get(row * n_embd..(row + n) * n_embd).unwrap_or(&[]));
            row += n;
            seq.n_done = range.end;
        }
        // Finished inputs give back their slot and pages (never offered to the prefix cache:
        // no generation would share an embedded text's pages often enough to earn their
        // place there).
        let mut i = 0;
        while i < run.active.len() {
            let seq = &run.active[i];
            let n_tokens = run.job.inputs[seq.input].len();
            if seq.n_done < n_tokens {
                i += 1;
                continue;
            }
            let seq = run.active.remove(i);
            let _ = self.kv.release(seq.id);
            self.free_slots.push(seq.slot);
            if seq.pooler.rows() != n_tokens {
                return Err(EngineError::Failed(format!(
                    "input {} pooled {} of its {n_tokens} rows",
                    seq.input,
                    seq.pooler.rows()
                ))
                .into());
            }
            run.done[seq.input] = Some(Embedding {
                values: seq.pooler.finish(run.job.normalize),
                n_tokens,
            });
            run.n_done += 1;
        }
        Ok(())
    }

    /// Frees what `run` holds, then answers its request (`None`: nobody is waiting), so that
    /// whoever sees the answer sees the slots, pages and queue place free.
    fn end_embedding(
        &mut self,
        handle: &EngineHandle,
        mut run: EmbedRun,
        reply: Option<EmbedReply>,
    ) {
        for seq in run.active.drain(..) {
            let _ = self.kv.release(seq.id);
            self.free_slots.push(seq.slot);
        }
        let EmbedJob {
            reply: sender,
            _in_flight,
            ..
        } = run.job;
        drop(_in_flight);
        self.publish(handle);
        if let Some(reply) = reply {
            let _ = sender.send(reply);
        }
    }

    /// Puts the newest running sequence back at the head of the queue and frees its pages.
    fn preempt_newest(&mut self) -> bool {
        let Some((i, _)) = self.running.iter().enumerate().max_by_key(|(_, r)| r.id) else {
            return false;
        };
        let mut r = self.running.swap_remove(i);
        let _ = self.kv.release(r.id);
        self.release_draft(r.id);
        self.free_slots.push(r.slot);
        r.tokens.extend(r.pending.take());
        tracing::debug!(sequence = r.id, "preempted: out of KV pages");
        self.waiting.push_front(Waiting {
            job: r.job,
            state: r.state,
            tokens: r.tokens,
            progress: r.progress,
        });
        true
    }

    /// This step's entries and the page copies they need; preempts while pages are short.
    fn plan(&mut self, handle: &EngineHandle) -> Option<(Vec<Entry>, Vec<PageCopy>)> {
        'retry: loop {
            if self.running.is_empty() {
                return None;
            }
            let mut entries = Vec::new();
            let mut budget = self.max_batch;
            let mut n_out = 0;
            // Decoding sequences first: each adds one token and waits on no one.
            for (index, r) in self.running.iter().enumerate() {
                if let Some(token) = r.pending
                    && budget > 0
                    && n_out < self.max_out
                {
                    entries.push(Entry {
                        index,
                        tokens: vec![token],
                        start: r.n_cached,
                        output: true,
                        drafted: 0,
                    });
                    budget -= 1;
                    n_out += 1;
                }
            }

            // Then prompts, in arrival order, in chunks that fill the rest of the batch.
            if !entries.is_empty() {
                budget = budget.min(self.prefill_chunk);
            }
            for (index, r) in self.running.iter().enumerate() {
                let remaining = r.tokens.len() - r.n_cached;
                if r.pending.is_some() || remaining == 0 || budget == 0 {
                    continue;
                }
                let n = remaining.min(budget);
                let output = n == remaining;
                if output && n_out >= self.max_out {
                    continue;
                }
                entries.push(Entry {
                    index,
                    tokens: r.tokens[r.n_cached..r.n_cached + n].to_vec(),
                    start: r.n_cached,
                    output,
                    drafted: 0,
                });
                budget -= n;
                n_out += usize::from(output);
            }
            let mut copies = Vec::new();
            for e in &entries {
                let id = self.running[e.index].id;
                match self.kv.reserve(id, e.start + e.tokens.len()) {
                    Ok(c) => copies.extend(c),
                    Err(crate::kv::KvError::OutOfPages { .. }) => {
                        if self.preempt_newest() {
                            handle.update(|m| m.requests_preempted += 1);
                            continue 'retry;
                        }
                        return None;
                    }
                    Err(e) => {
                        tracing::error!("KV cache: {e}");
                        return None;
                    }
                }
            }
            self.add_drafts(&mut entries, &mut copies, n_out);
            return Some((entries, copies));
        }
    }

    /// Drafts for the decoding sequences of a step that holds nothing else, in what the batch,
    /// the logit rows and the free pages leave: a draft never takes a page another sequence
    /// needs (nothing is preempted for one), and the step stays one the kernels run as exactly
    /// as one-token steps (runs of up to `max_exact_run` tokens, a step of at most
    /// `max_exact_step`), so drafts change no sequence's logits.
    fn add_drafts(&mut self, entries: &mut [Entry], copies: &mut Vec<PageCopy>, n_out: usize) {
        // A draft model drafts after planning (it runs steps of its own).
        if self.drafter.is_some()
            || entries
                .iter()
                .any(|e| self.running[e.index].pending.is_none())
        {
            return;
        }
        let mut room = self.draft_room(entries.len(), n_out);
        let page_size = self.kv.page_size();
        for e in entries.iter_mut() {
            let r = &self.running[e.index];
            let n = room.of(e.start);
            if n == 0 {
                continue;
            }
            let drafts = r.state.draft(n);
            if drafts.is_empty() {
                continue;
            }
            let n = self.attach_drafts(e, drafts, copies, page_size);
            room.take(n);
        }
    }

    /// The room a step of `n_entries` sequences and `n_out` output rows leaves for drafts.
    fn draft_room(&self, n_entries: usize, n_out: usize) -> DraftRoom {
        let llama = self.model.llama();
        DraftRoom {
            run: (llama.max_exact_run() as usize).saturating_sub(1),
            step: (llama.max_exact_step() as usize)
                .min(self.max_batch)
                .saturating_sub(n_entries),
            rows: self.max_out.saturating_sub(n_out),
            n_ctx: self.n_ctx,
        }
    }

    /// Puts `drafts` after the entry's token, in pages the sequence holds beyond it first and
    /// new ones only if free (fewer drafts where there are none); returns how many went in.
    fn attach_drafts(
        &mut self,
        e: &mut Entry,
        mut drafts: Vec<u32>,
        copies: &mut Vec<PageCopy>,
        page_size: usize,
    ) -> usize {
        let id = self.running[e.index].id;
        let held = self.kv.pages(id).map_or(0, |p| p.len()) * page_size;
        let end = e.start + 1 + drafts.len();
        if end > held {
            match self.kv.reserve(id, end) {
                Ok(c) => copies.extend(c),
                Err(_) => drafts.truncate(held.saturating_sub(e.start + 1)),
            }
        }
        e.drafted = drafts.len();
        e.tokens.extend(drafts);
        e.drafted
    }

    /// The draft model's guesses for the decoding sequences of a step that holds nothing else,
    /// in the room [`add_drafts`](Self::add_drafts) would give prompt lookup. A failure of the
    /// draft model costs the step its drafts, nothing else.
    async fn add_model_drafts(&mut self, entries: &mut [Entry], copies: &mut Vec<PageCopy>) {
        if entries
            .iter()
            .any(|e| self.running[e.index].pending.is_none())
        {
            return;
        }
        let mut room = self.draft_room(entries.len(), entries.len());
        let mut budgets = Vec::with_capacity(entries.len());
        for e in entries.iter() {
            let budget = self.running[e.index].state.draft_budget(room.of(e.start));
            room.take(budget);
            budgets.push(budget);
        }
        if budgets.iter().all(|&b| b == 0) {
            return;
        }
        let Some(d) = self.drafter.as_mut() else {
            return;
        };
        let proposals = match d.propose(&mut self.running, entries, &budgets).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("the draft model failed; this step has no drafts: {e}");
                return;
            }
        };
        let page_size = self.kv.page_size();
        for (e, drafts) in entries.iter_mut().zip(proposals) {
            if !drafts.is_empty() {
                self.attach_drafts(e, drafts, copies, page_size);
            }
        }
    }

    async fn step(
        &mut self,
        handle: &EngineHandle,
        entries: &[Entry],
        copies: &[PageCopy],
    ) -> Result<()> {
        let (mut tokens, mut positions, mut slots, mut out_rows) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for e in entries {
            let r = &self.running[e.index];
            for (k, &t) in e.tokens.iter().enumerate() {
                tokens.push(t);
                positions.push((e.start + k) as u32);
                slots.push(r.slot);
            }
            if e.output {
                let n = tokens.len() as u32;
                out_rows.extend(n - 1 - e.drafted as u32..n);
            }
        }
        let tables: Vec<(u32, &[u32])> = entries
            .iter()
            .map(|e| {
                let r = &self.running[e.index];
                (r.slot, self.kv.pages(r.id).unwrap_or(&[]))
            })
            .collect();
        let argmax = entries
            .iter()
            .filter(|e| e.output)
            .all(|e| self.running[e.index].state.argmax_suffices());
        let output = if argmax {
            StepOutput::Argmax
        } else {
            StepOutput::Logits
        };
        let input = StepInput {
            tokens: &tokens,
            positions: &positions,
            slots: &slots,
            out_rows: &out_rows,
            tables: &tables,
        };
        let start = Instant::now();
        let forward = self.model.llama_mut().step(&input, copies, output).await?;
        let seconds = start.elapsed().as_secs_f64();

        let vocab = self.model.config().n_vocab as usize;
        let mut finished = Vec::new();
        let mut failed = Vec::new();
        let mut n_generated = 0u64;
        let (mut n_drafted, mut n_draft_accepted) = (0u64, 0u64);
        let tokenizer = self.model.shared_tokenizer();
        let mut row = 0;
        for e in entries {
            let r = &mut self.running[e.index];
            // Everything but the drafts is kept; a draft is kept once the model samples it.
            let kept = &e.tokens[..e.tokens.len() - e.drafted];
            self.kv
                .commit(r.id, kept)
                .map_err(|e| EngineError::Stopped(e.to_string()))?;
            r.n_cached += kept.len();
            if r.pending.take().is_some() {
                r.tokens.extend_from_slice(kept);
            }
            if !e.output {
                continue;
            }
            let (mut accepted, mut checked) = (0, 0);
            for j in 0..=e.drafted {
                let logits =
                    Logits::of_row(&forward, row + j, vocab).ok_or(EngineError::NoCandidates)?;
                // A sequence that cannot go on (its grammar failed) fails alone; the step's
                // other sequences keep what they got.
                let step = match r.state.advance(&tokenizer, logits, r.n_cached < self.n_ctx) {
                    Ok(step) => step,
                    Err(err) => {
                        failed.push((e.index, err.to_string()));
                        break;
                    }
                };
                // Row j checks draft j (if any); rows after an end check nothing.
                if step.finished.is_none() && j < e.drafted {
                    checked += 1;
                }
                let now = Instant::now();
                if step.token.is_some() {
                    n_generated += 1;
                    match r.progress.last_token {
                        None => handle.update(|m| {
                            m.time_to_first_token_seconds_sum +=
                                (now - r.job.submitted).as_secs_f64();
                            m.time_to_first_token_count += 1;
                        }),
                        Some(last) => handle.update(|m| {
                            m.inter_token_seconds_sum += (now - last).as_secs_f64();
                            m.inter_token_count += 1;
                        }),
                    }
                    r.progress.first_token.get_or_insert(now);
                    r.progress.last_token = Some(now);
                }
                if step.token.is_some() || !step.text.is_empty() {
                    let _ = r.job.events.unbounded_send(Event::Delta {
                        token: step.token,
                        text: step.text,
                        logprob: step.logprob,
                    });
                }
                if let Some(stop) = step.finished {
                    finished.push((e.index, stop));
                    break;
                }
                match (step.token, e.tokens.get(1 + j)) {
                    // The model sampled the draft the step ran next: its K/V are in place.
                    (Some(token), Some(&draft)) if j < e.drafted && token == draft => {
                        self.kv
                            .commit(r.id, &[draft])
                            .map_err(|e| EngineError::Stopped(e.to_string()))?;
                        r.n_cached += 1;
                        r.tokens.push(draft);
                        accepted += 1;
                    }
                    (token, _) => {
                        r.pending = token;
                        break;
                    }
                }
            }
            row += e.drafted + 1;
            if e.drafted > 0 {
                // Pages taken only for drafts that were not kept go back to the pool.
                self.kv
                    .trim(r.id)
                    .map_err(|e| EngineError::Stopped(e.to_string()))?;
            }
            r.state.drafts_checked(e.drafted, accepted);
            n_drafted += checked as u64;
            n_draft_accepted += accepted as u64;
        }
        handle.update(|m| {
            m.generated_tokens += n_generated;
            m.draft_tokens += n_drafted;
            m.draft_tokens_accepted += n_draft_accepted;
            if seconds > 0.0 && n_generated > 0 {
                m.decode_tokens_per_second = n_generated as f64 / seconds;
            }
        });
        let mut leaving: Vec<(usize, Result<StopReason, String>)> = finished
            .into_iter()
            .map(|(i, stop)| (i, Ok(stop)))
            .chain(failed.into_iter().map(|(i, e)| (i, Err(e))))
            .collect();
        leaving.sort_unstable_by_key(|(i, _)| *i);
        for (i, end) in leaving.into_iter().rev() {
            let r = self.running.swap_remove(i);
            match end {
                Ok(stop) => self.finish(handle, r, stop),
                Err(message) => {
                    tracing::warn!("request failed: {message}");
                    handle.update(|m| m.requests_failed += 1);
                    let events = r.job.events.clone();
                    // Slot and pages first: whoever sees the stream end sees them free.
                    self.retire(r);
                    self.publish(handle);
                    let _ = events.unbounded_send(Event::Failed(message));
                }
            }
        }
        Ok(())
    }
}
