//! The engine as a service: requests are submitted from any thread, each returns an async stream
//! of events, and dropping or cancelling the stream stops its generation. One loop owns the model
//! and the GPU; on native targets it runs on its own thread.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_channel::mpsc;
use web_time::{Duration, Instant};

use super::sequence::TokenLogprob;
use super::{EngineError, GenerateParams, Model, Session, StopReason};
use crate::Result;
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
    pub prefix_cache_hits: u64,
    pub time_to_first_token_seconds_sum: f64,
    pub time_to_first_token_count: u64,
    pub inter_token_seconds_sum: f64,
    pub inter_token_count: u64,
    /// Generated tokens per second over the last busy stretch.
    pub decode_tokens_per_second: f64,
    pub kv_pages_total: u64,
    pub kv_pages_used: u64,
    pub kv_page_tokens: u64,
}

/// What the service knows about its model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    pub arch: String,
    pub n_ctx: u32,
    pub n_vocab: u32,
    pub adapter: String,
    pub backend: String,
}

#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Requests waiting beyond the running ones; more are refused with `QueueFull`.
    pub max_queue: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { max_queue: 64 }
    }
}

struct Job {
    tokens: Vec<u32>,
    params: GenerateParams,
    logprobs: Option<usize>,
    events: mpsc::UnboundedSender<Event>,
    cancelled: Arc<AtomicBool>,
    submitted: Instant,
}

enum Command {
    Submit(Job),
    Shutdown,
}

struct Shared {
    commands: mpsc::UnboundedSender<Command>,
    tokenizer: Arc<Tokenizer>,
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
        };
        let shared = Arc::new(Shared {
            commands: tx,
            tokenizer: model.shared_tokenizer(),
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
                .spawn(move || pollster::block_on(run_loop(model, rx, shared)))
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
            wasm_bindgen_futures::spawn_local(run_loop(model, rx, shared));
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
            Prompt::Chat(messages) => {
                let text = t.apply_chat_template(messages, true)?;
                let bos_written = t
                    .bos()
                    .and_then(|b| t.token_text(b))
                    .is_some_and(|b| !b.is_empty() && text.starts_with(b));
                t.encode(&text, !bos_written)?
            }
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
        // Sampling settings and stop strings are checked here so a bad one fails the call.
        super::SequenceState::new(&tokens, request.params.clone(), request.logprobs)?;
        let queued = self.metrics().queue_depth as usize;
        if queued >= self.shared.options.max_queue {
            self.update(|m| m.requests_rejected += 1);
            return Err(EngineError::QueueFull {
                max: self.shared.options.max_queue,
            }
            .into());
        }
        let (events, rx) = mpsc::unbounded();
        let cancelled = Arc::new(AtomicBool::new(false));
        let job = Job {
            tokens,
            params: request.params,
            logprobs: request.logprobs,
            events,
            cancelled: Arc::clone(&cancelled),
            submitted: Instant::now(),
        };
        self.update(|m| {
            m.requests_submitted += 1;
            m.queue_depth += 1;
        });
        self.shared
            .commands
            .unbounded_send(Command::Submit(job))
            .map_err(|_| EngineError::Stopped("the engine has stopped".into()))?;
        Ok(RequestStream { rx, cancelled })
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

    /// The next event, or `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Event> {
        futures_util::StreamExt::next(&mut self.rx).await
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
    mut model: Model,
    mut commands: mpsc::UnboundedReceiver<Command>,
    shared: Arc<Shared>,
) {
    let handle = EngineHandle { shared };
    let mut session = Session::new();
    let mut queue: VecDeque<Job> = VecDeque::new();
    loop {
        let next = match queue.pop_front() {
            Some(job) => Some(Command::Submit(job)),
            None => futures_util::StreamExt::next(&mut commands).await,
        };
        let job = match next {
            Some(Command::Submit(job)) => job,
            Some(Command::Shutdown) | None => return,
        };
        handle.update(|m| {
            m.queue_depth = m.queue_depth.saturating_sub(1);
            m.running_sequences = 1;
        });
        run_job(&handle, &mut model, &mut session, job).await;
        handle.update(|m| m.running_sequences = 0);
        // Requests that arrived meanwhile keep their order.
        while let Ok(cmd) = commands.try_recv() {
            match cmd {
                Command::Submit(job) => queue.push_back(job),
                Command::Shutdown => return,
            }
        }
    }
}

async fn run_job(handle: &EngineHandle, model: &mut Model, session: &mut Session, job: Job) {
    let started = Instant::now();
    let cached = session
        .cached()
        .iter()
        .zip(&job.tokens)
        .take_while(|(a, b)| a == b)
        .count()
        .min(job.tokens.len() - 1);
    let _ = job.events.unbounded_send(Event::Started {
        prompt_tokens: job.tokens.len(),
        cached_tokens: cached,
    });
    handle.update(|m| {
        m.prompt_tokens += job.tokens.len() as u64;
        m.cached_prompt_tokens += cached as u64;
        if cached > 0 {
            m.prefix_cache_hits += 1;
        }
    });
    let mut first_token: Option<Instant> = None;
    let mut last_token = Instant::now();
    let mut n_generated = 0u64;
    let result = session
        .run(model, &job.tokens, &job.params, job.logprobs, &mut |step| {
            if job.cancelled.load(Ordering::Relaxed) || job.events.is_closed() {
                return std::ops::ControlFlow::Break(());
            }
            let now = Instant::now();
            if step.token.is_some() {
                n_generated += 1;
                match first_token {
                    None => {
                        first_token = Some(now);
                        handle.update(|m| {
                            m.time_to_first_token_seconds_sum +=
                                (now - job.submitted).as_secs_f64();
                            m.time_to_first_token_count += 1;
                        });
                    }
                    Some(_) => handle.update(|m| {
                        m.inter_token_seconds_sum += (now - last_token).as_secs_f64();
                        m.inter_token_count += 1;
                    }),
                }
                last_token = now;
            }
            if step.token.is_some() || !step.text.is_empty() {
                let _ = job.events.unbounded_send(Event::Delta {
                    token: step.token,
                    text: step.text.clone(),
                    logprob: step.logprob.clone(),
                });
            }
            std::ops::ControlFlow::Continue(())
        })
        .await;
    let total = job.submitted.elapsed();
    match result {
        Ok(completion) => {
            let decode_seconds = completion.decode_time.as_secs_f64();
            handle.update(|m| {
                m.generated_tokens += n_generated;
                if decode_seconds > 0.0 {
                    m.decode_tokens_per_second = n_generated as f64 / decode_seconds;
                }
                if completion.stop == StopReason::Cancelled {
                    m.requests_cancelled += 1;
                } else {
                    m.requests_finished += 1;
                }
            });
            let _ = job.events.unbounded_send(Event::Finished {
                stop: completion.stop,
                usage: Usage {
                    prompt_tokens: job.tokens.len(),
                    completion_tokens: completion.tokens.len(),
                    cached_tokens: cached,
                },
                timings: Timings {
                    queued: started - job.submitted,
                    time_to_first_token: first_token.map(|t| t - job.submitted),
                    total,
                },
            });
        }
        Err(e) => {
            // A failed step leaves the cache in an unknown state: start the next request clean.
            session.reset();
            handle.update(|m| m.requests_failed += 1);
            let _ = job.events.unbounded_send(Event::Failed(e.to_string()));
        }
    }
}
