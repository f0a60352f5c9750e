//! The `sovereign` command line. Generated text goes to stdout; logs, progress and errors go to
//! stderr, so scripts can rely on stdout.

use std::io::{BufRead, IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use sovereign::engine::{
    Constraint, DraftModel, EngineError, GenerateParams, Model, SamplingParams, Session, StopReason,
};
use sovereign::format::GgufFile;
use sovereign::gpu::{GpuContext, GpuOptions};
use sovereign::model::LoadOptions;
use sovereign::tokenizer::ChatMessage;

/// `println!` for a command's output: a failed write (a full disk, a closed pipe) ends the
/// command with an error instead of a panic; `main` ends a closed pipe quietly.
macro_rules! out {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*).map_err(output_error)?
    };
}

fn output_error(source: std::io::Error) -> sovereign::Error {
    sovereign::Error::Io {
        what: "writing the output".into(),
        source,
    }
}

#[derive(Parser)]
#[command(
    name = "sovereign",
    version,
    about = "Run quantized LLMs on any GPU through WGSL compute shaders"
)]
struct Cli {
    /// GPU adapter: an index from `sovereign devices` or part of its name (also SOVEREIGN_ADAPTER).
    #[arg(long, global = true)]
    adapter: Option<String>,
    /// More logging on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Continue a prompt, streaming the generated text to stdout.
    Run(RunArgs),
    /// Chat interactively; the conversation goes through the model's chat template.
    Chat(ChatArgs),
    /// Show a GGUF file's metadata and tensor table, and check it.
    Inspect {
        /// Path to a GGUF file.
        model: PathBuf,
    },
    /// List the GPU adapters with their backend, features and limits.
    Devices,
    /// Measure prefill (pp) and decode (tg) tokens per second, as llama-bench does.
    Bench(BenchArgs),
    /// Perplexity over a text file, chunked as llama-perplexity chunks it (-c tokens per chunk,
    /// the second half of each scored), so the figures compare.
    Perplexity(PerplexityArgs),
    /// Embeddings of one or more texts: the final norm's output, pooled and normalized, as
    /// llama-embedding computes them; with several texts, their cosine similarities too.
    Embed(EmbedArgs),
    /// Write a Llama-shaped GGUF with random weights, to measure speed at real model sizes
    /// without downloading one (its text is noise).
    Synth(SynthArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (chat and text completions, models,
    /// health, Prometheus metrics).
    #[cfg(feature = "server")]
    Serve(ServeArgs),
    /// Serve the in-browser demo (built by scripts/build-web) and a model for it to load; the
    /// engine runs in the browser on WebGPU.
    #[cfg(feature = "server")]
    Web(WebArgs),
}

#[cfg(feature = "server")]
#[derive(Args)]
struct WebArgs {
    /// GGUF model the page loads; default: SmolLM2-135M-Instruct Q4_1, fetched on first use.
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// The built page.
    #[arg(long, default_value = "web/dist")]
    dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on; 0 picks a free one.
    #[arg(long, default_value_t = 8090)]
    port: u16,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// GGUF model file; default: SmolLM2-135M-Instruct Q4_1, fetched into the cache on first use.
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// Context (KV cache) length in tokens; default (or 0): the model's, at most 4096.
    #[arg(short = 'c', long = "ctx-size")]
    ctx_size: Option<u32>,
    /// Most tokens per forward step; longer prompts are prefilled in batches of this.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// How the KV cache holds K and V: f32, f16 (needs shader-f16) or q8_0 (about half of f16's
    /// memory, so nearly twice the context); default: f16 where the adapter has shader-f16, else
    /// f32.
    #[arg(long = "cache-type", visible_alias = "kv-type", value_name = "TYPE")]
    cache_type: Option<sovereign::kernels::KvType>,
}

#[derive(Args, Clone)]
struct SamplingArgs {
    /// Temperature; 0 is greedy.
    #[arg(long = "temp", default_value_t = 0.8, allow_negative_numbers = true)]
    temperature: f32,
    /// Top-k sampling; 0 disables.
    #[arg(long, default_value_t = 40, allow_negative_numbers = true)]
    top_k: usize,
    /// Top-p (nucleus) sampling; 1 disables, 0 keeps only the most likely token.
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    top_p: f32,
    /// Min-p sampling; 0 disables.
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    min_p: f32,
    /// Penalty for repeating recent tokens; 1 disables.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    repeat_penalty: f32,
    /// How many recent tokens the repeat penalty looks at.
    #[arg(long, default_value_t = 64, allow_negative_numbers = true)]
    repeat_last_n: usize,
    /// Random seed; the same seed gives the same output. Default (or -1): a random one.
    #[arg(short, long, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i64).range(-1..))]
    seed: Option<i64>,
    /// Stop before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Constrain the output to one JSON object.
    #[arg(long, group = "constraint")]
    json: bool,
    /// Constrain the output to JSON valid against this JSON schema (`{}`: any JSON value).
    #[arg(short = 'j', long, value_name = "SCHEMA", group = "constraint")]
    json_schema: Option<String>,
    /// As --json-schema, with the schema read from a file.
    #[arg(long, value_name = "FILE", group = "constraint")]
    json_schema_file: Option<PathBuf>,
    /// Constrain the output to this grammar: llama.cpp's GBNF (`root ::= ...`) or llguidance's
    /// Lark syntax (`start: ...`).
    #[arg(long, value_name = "GRAMMAR", group = "constraint")]
    grammar: Option<String>,
    /// As --grammar, with the grammar read from a file.
    #[arg(long, value_name = "FILE", group = "constraint")]
    grammar_file: Option<PathBuf>,
    /// Draft up to N tokens a step by prompt lookup (the tokens that followed the last few
    /// tokens where they appeared before) and check them in one step: faster where the reply
    /// repeats its prompt, the same output; 0 is off.
    #[arg(long, value_name = "N", default_value_t = 0)]
    draft: usize,
    /// A smaller model with the same vocabulary that drafts the tokens instead (greedy, a few
    /// ahead each step; --draft sets how many, 6 unless given): the same output, in fewer
    /// steps of the large model where the small one guesses well.
    #[arg(long = "model-draft", visible_alias = "md", value_name = "GGUF")]
    model_draft: Option<PathBuf>,
}

/// Tokens to draft a step: `--draft`, or 6 where a draft model is given without it.
fn draft_tokens(draft: usize, draft_model: bool) -> usize {
    if draft == 0 && draft_model { 6 } else { draft }
}

impl SamplingArgs {
    /// The draft model of `--model-draft`, loaded on `model`'s GPU with its context length.
    fn draft_model(
        &self,
        model: &Model,
        args: &ModelArgs,
    ) -> Result<Option<DraftModel>, sovereign::Error> {
        let Some(path) = &self.model_draft else {
            return Ok(None);
        };
        let file = GgufFile::open(path)?;
        let options = LoadOptions {
            n_ctx: Some(model.llama().n_ctx()),
            max_batch: args.batch_size,
            kv_type: args.cache_type,
            ..LoadOptions::default()
        };
        tracing::info!(model = %path.display(), "loading the draft model");
        let draft = pollster::block_on(Model::load(
            Arc::clone(model.llama().context()),
            &file,
            &options,
            &mut |_| {},
        ))?;
        Ok(Some(DraftModel::new(draft, model)?))
    }

    /// The generation settings of `run` and `chat`; `n_predict` < 0 generates until the end.
    fn generate(&self, n_predict: i64, constraint: Option<Constraint>) -> GenerateParams {
        GenerateParams {
            max_tokens: u32::try_from(n_predict).ok(),
            sampling: self.params(),
            stop: self.stop.clone(),
            ignore_eos: false,
            constraint,
            draft: draft_tokens(self.draft, self.model_draft.is_some()),
        }
    }

    /// The constraint the flags ask for, with its files read and its schema parsed: a bad one
    /// fails before the model loads. The grammar itself is compiled against the vocabulary
    /// when generation starts.
    fn constraint(&self) -> Result<Option<Constraint>, sovereign::Error> {
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path).map_err(|source| sovereign::Error::Io {
                what: format!("cannot read {}", path.display()),
                source,
            })
        };
        let schema = |text: &str, source: &str| {
            serde_json::from_str::<serde_json::Value>(text)
                .map(|schema| Some(Constraint::JsonSchema(schema)))
                .map_err(|e| {
                    sovereign::Error::from(EngineError::Grammar(format!(
                        "{source} is not JSON: {e}"
                    )))
                })
        };
        if self.json {
            Ok(Some(Constraint::JsonObject))
        } else if let Some(text) = &self.json_schema {
            schema(text, "the --json-schema")
        } else if let Some(path) = &self.json_schema_file {
            schema(&read(path)?, &path.display().to_string())
        } else if let Some(grammar) = &self.grammar {
            Ok(Some(Constraint::grammar(grammar.clone())))
        } else if let Some(path) = &self.grammar_file {
            Ok(Some(Constraint::grammar(read(path)?)))
        } else {
            Ok(None)
        }
    }

    fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed.and_then(|s| u64::try_from(s).ok()),
            ..Default::default()
        }
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Tokens to generate; -1: until end of generation or a full context.
    #[arg(
        short = 'n',
        long = "n-predict",
        default_value_t = 256,
        allow_negative_numbers = true
    )]
    n_predict: i64,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// The prompt, used as raw text (special tokens such as <|im_start|> are parsed).
    prompt: String,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Most tokens per reply; -1: until end of generation.
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, allow_negative_numbers = true)]
    n_predict: i64,
    /// System message.
    #[arg(long)]
    system: Option<String>,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt tokens for the prefill test (0 skips it).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    n_prompt: u32,
    /// Tokens for the decode test (0 skips it).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    n_gen: u32,
    /// Repetitions of each test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
    repetitions: u32,
    /// Instead of pp/tg: aggregate decode throughput of this many concurrent streams through
    /// the scheduler (comma-separated, e.g. 1,4,16,64), each with -p prompt tokens and -n
    /// generated tokens, and the KV memory their pages leave unused.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=256))]
    streams: Vec<u32>,
    /// Output: md (a table, as llama-bench prints it) or json (an array with one object per
    /// test, llama-bench's field names, every repetition listed).
    #[arg(short = 'o', long = "output", value_enum, default_value = "md")]
    output: BenchOutput,
    /// After the measured runs, run each test once more with every dispatch timed on the GPU
    /// (timestamp queries), and print the GPU time per kernel.
    #[arg(long)]
    profile: bool,
    /// Positions per KV page for --streams.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    kv_page_size: u32,
}

#[derive(Args)]
struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The text (UTF-8), e.g. wikitext-2's wiki.test.raw.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Score only the first N chunks.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    chunks: Option<u32>,
}

#[derive(Args)]
struct EmbedArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A text to embed (repeatable).
    #[arg(short, long = "prompt")]
    prompt: Vec<String>,
    /// A file of texts to embed, one per line (empty lines skipped).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// How positions are pooled into one vector; default: what the model's file says (mean
    /// where it says nothing).
    #[arg(long, value_parser = ["mean", "cls", "last"])]
    pooling: Option<String>,
    /// -1 none, 0 largest magnitude to 32760 (int16), 1 taxicab, 2 Euclidean (unit length),
    /// p > 2 the p-norm.
    #[arg(long = "embd-normalize", default_value_t = 2, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(-1..))]
    embd_normalize: i32,
    /// text: a line of numbers per text (and the similarity matrix); json: OpenAI's
    /// embeddings list; array: an array of vectors.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = EmbedOutput::Text)]
    output: EmbedOutput,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum EmbedOutput {
    Text,
    Json,
    Array,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum BenchOutput {
    Md,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SynthShape {
    /// Llama-3.2-1B (16 layers of 2048, tied embedding).
    #[value(name = "llama-3.2-1b")]
    Llama32_1B,
    /// Llama-3-8B (32 layers of 4096).
    #[value(name = "llama-3-8b")]
    Llama3_8B,
    /// SmolLM2-135M (30 layers of 576, tied embedding): the test model's shape.
    #[value(name = "smollm2-135m")]
    Smollm2_135M,
    /// A small model (2 layers of 256) for trying the pipeline.
    Tiny,
}

#[derive(Args)]
struct SynthArgs {
    /// The model's shape.
    #[arg(long, value_enum, default_value = "llama-3.2-1b")]
    shape: SynthShape,
    /// Type of every weight matrix, the embedding included unless --embd-type is given: Q4_0,
    /// Q4_K or Q8_0 (also Q4_1, Q5_K, Q6_K, F16, F32).
    #[arg(short = 't', long = "type", default_value = "Q4_0")]
    dtype: String,
    /// Type of the token embedding (and of the output matrix where it has its own) instead of
    /// --type: the test model keeps its embedding in Q8_0.
    #[arg(long = "embd-type")]
    embd_dtype: Option<String>,
    /// Fewer (or more) layers than the shape has.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=512))]
    layers: Option<u32>,
    /// Seed of the random weights: the same seed writes the same file.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output GGUF file.
    #[arg(short, long)]
    output: PathBuf,
    /// Replace the output file if it exists.
    #[arg(long)]
    force: bool,
}

#[cfg(feature = "server")]
#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on. Anything but a loopback address exposes the server to the network.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on; 0 picks a free one.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health (default:
    /// SOVEREIGN_API_KEY, which keeps the key out of the process list).
    #[arg(long)]
    api_key: Option<String>,
    /// The model name clients send; default: the model file's name without `.gguf`.
    #[arg(long)]
    alias: Option<String>,
    /// Let web pages from this origin call the API (repeatable; `*` allows any). Default: none.
    #[arg(long = "cors-origin")]
    cors_origins: Vec<String>,
    /// Answer requests for this Host besides localhost, 127.0.0.1 and [::1] (repeatable;
    /// `host` or `host:port`; `*` allows any).
    #[arg(long = "allowed-host")]
    allowed_hosts: Vec<String>,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = sovereign::server::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Requests that may wait for a sequence slot beside the --parallel running ones; more are
    /// answered 429 (0: a request runs at once or is refused).
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Sequences decoded together in one batched step; more requests wait in the queue.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    parallel: u32,
    /// KV cache budget in token positions, shared by all sequences in pages of 16 (at least
    /// one context). Default: --parallel full contexts, or what one buffer of the adapter
    /// holds if less. Sequences take pages as they grow; when pages run out the newest
    /// sequence waits and is recomputed later.
    #[arg(long, conflicts_with = "kv_memory")]
    kv_tokens: Option<u32>,
    /// KV cache budget in MiB (K and V of every layer), instead of --kv-tokens: the positions it
    /// holds depend on --cache-type (q8_0 holds nearly twice as many as f16).
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    kv_memory: Option<u64>,
    /// Positions per KV page: smaller pages waste less of each sequence's last page and share
    /// prefixes at a finer grain; larger ones make smaller block tables.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    kv_page_size: u32,
    /// Most prompt tokens a step runs while other sequences are decoding: smaller keeps their
    /// tokens flowing during a long prompt, larger prefills faster.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    prefill_chunk: u32,
    /// Draft up to N tokens a step for each request by prompt lookup and check them in the same
    /// step (as `run --draft`): faster replies that repeat their prompt, the same text; 0 is off.
    #[arg(long, value_name = "N", default_value_t = 0)]
    draft: usize,
    /// How embeddings (/v1/embeddings, /embedding, Ollama's /api/embed) pool positions into one
    /// vector; default: what the model's file says (mean where it says nothing).
    #[arg(long, value_parser = ["mean", "cls", "last"])]
    pooling: Option<String>,
    /// A smaller model with the same vocabulary that drafts for every request that drafts
    /// (--draft, or a request's own setting), instead of prompt lookup: the same text, in
    /// fewer steps of the large model where the small one guesses well.
    #[arg(long = "model-draft", visible_alias = "md", value_name = "GGUF")]
    model_draft: Option<PathBuf>,
}

fn main() -> ExitCode {
    // Vulkan drivers' window-system code complains on stderr when XDG_RUNTIME_DIR is unset (as
    // in containers and CI), though compute never opens a window. Give it a directory.
    #[cfg(target_os = "linux")]
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // SAFETY: nothing else runs yet: no thread has started that could read the environment.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
    let mut cli = Cli::parse();
    // -c 0 asks for the default context, as in llama.cpp.
    if let Some(m) = cli.command.model_args()
        && m.ctx_size == Some(0)
    {
        m.ctx_size = None;
    }
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SOVEREIGN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("warn,sovereign={level}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let result = match cli.command {
        Command::Run(args) => run(cli.adapter, args),
        Command::Chat(args) => chat(cli.adapter, args),
        Command::Inspect { model } => inspect(&model),
        Command::Devices => devices(),
        Command::Bench(args) => bench(cli.adapter, args),
        Command::Synth(args) => synth(args),
        Command::Perplexity(args) => perplexity(cli.adapter, args),
        Command::Embed(args) => embed(cli.adapter, args),
        #[cfg(feature = "server")]
        Command::Serve(args) => serve(cli.adapter, args),
        #[cfg(feature = "server")]
        Command::Web(args) => web(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`| head`) is a normal way to stop reading.
        Err(sovereign::Error::Io { source, .. })
            if source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            let message = sovereign::error::describe(&e);
            let _ = std::io::stdout().flush();
            eprintln!("error: {}", message.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

type CliResult = Result<(), sovereign::Error>;

impl Command {
    fn model_args(&mut self) -> Option<&mut ModelArgs> {
        match self {
            Command::Run(a) => Some(&mut a.model),
            Command::Chat(a) => Some(&mut a.model),
            Command::Bench(a) => Some(&mut a.model),
            Command::Perplexity(a) => Some(&mut a.model),
            Command::Embed(a) => Some(&mut a.model),
            #[cfg(feature = "server")]
            Command::Serve(a) => Some(&mut a.model),
            _ => None,
        }
    }
}

fn model_path(args: &ModelArgs) -> Result<PathBuf, sovereign::Error> {
    match &args.model {
        Some(p) => Ok(p.clone()),
        None => Ok(sovereign::fetch::ensure_default_model()?),
    }
}

fn gpu(adapter: Option<String>) -> Result<Arc<GpuContext>, sovereign::Error> {
    let mut options = GpuOptions::from_env();
    if adapter.is_some() {
        options.adapter = adapter;
    }
    Ok(Arc::new(pollster::block_on(GpuContext::new(&options))?))
}

/// Opens, checks and uploads a model, with a progress bar on a terminal.
fn load(adapter: Option<String>, args: &ModelArgs) -> Result<Model, sovereign::Error> {
    load_with(adapter, args, LoadOptions::default())
}

/// Loads with `base`'s settings for what `args` does not say.
fn load_with(
    adapter: Option<String>,
    args: &ModelArgs,
    base: LoadOptions,
) -> Result<Model, sovereign::Error> {
    let path = model_path(args)?;
    let file = GgufFile::open(&path)?;
    let ctx = gpu(adapter)?;
    tracing::info!(model = %path.display(), adapter = %ctx.adapter_info().name, "loading");
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("loading {bar:40} {bytes}/{total_bytes}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let options = LoadOptions {
        n_ctx: args.ctx_size.or(base.n_ctx),
        max_batch: args.batch_size,
        kv_type: args.cache_type.or(base.kv_type),
        ..base
    };
    let model = pollster::block_on(Model::load(ctx, &file, &options, &mut |p| {
        bar.set_length(p.total);
        bar.set_position(p.done);
    }));
    bar.finish_and_clear();
    let model = model?;
    let (n_ctx, n_ctx_train) = (model.llama().n_ctx(), model.config().n_ctx_train);
    if n_ctx_train > 0 && n_ctx > n_ctx_train {
        tracing::warn!(
            "the context of {n_ctx} tokens is longer than the {n_ctx_train} the model was trained on: expect worse text past that"
        );
    }
    Ok(model)
}

fn run(adapter: Option<String>, args: RunArgs) -> CliResult {
    let constraint = args.sampling.constraint()?;
    let mut model = load(adapter, &args.model)?;
    let mut draft = args.sampling.draft_model(&model, &args.model)?;
    let prompt = if args.chat {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", &args.prompt));
        model.encode_chat(&messages)?
    } else {
        model.encode(&args.prompt)?
    };
    let params = args.sampling.generate(args.n_predict, constraint);
    let mut stdout = std::io::stdout().lock();
    let mut write_error = None;
    let completion = pollster::block_on(Session::new().run_drafted(
        &mut model,
        draft.as_mut(),
        &prompt,
        &params,
        None,
        &mut |step| {
            if step.text.is_empty() {
                return ControlFlow::Continue(());
            }
            match stdout
                .write_all(step.text.as_bytes())
                .and_then(|()| stdout.flush())
            {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    write_error = Some(e);
                    ControlFlow::Break(())
                }
            }
        },
    ))?;
    if let Some(e) = write_error {
        return Err(output_error(e));
    }
    if std::io::stdout().is_terminal() {
        out!();
    }
    report(&completion);
    if completion.stop == StopReason::ContextFull {
        eprintln!(
            "(the context is full: generation stopped after {} tokens; raise it with --ctx-size)",
            completion.tokens.len()
        );
    }
    Ok(())
}

fn report(c: &sovereign::engine::Completion) {
    let per_s = |n: usize, d: std::time::Duration| n as f64 / d.as_secs_f64().max(1e-9);
    let new_prompt = c.n_prompt - c.n_reused;
    tracing::info!(
        "prompt: {new_prompt} tokens in {:.0} ms ({:.1} t/s), generation: {} tokens in {:.0} ms ({:.1} t/s), stop: {:?}",
        c.prefill_time.as_secs_f64() * 1e3,
        per_s(new_prompt, c.prefill_time),
        c.tokens.len(),
        c.decode_time.as_secs_f64() * 1e3,
        per_s(c.tokens.len(), c.decode_time),
        c.stop
    );
    if c.n_drafted > 0 {
        tracing::info!(
            "drafts: {} of {} drafted tokens were sampled",
            c.n_draft_accepted,
            c.n_drafted
        );
    }
}

fn chat(adapter: Option<String>, args: ChatArgs) -> CliResult {
    use std::sync::atomic::{AtomicBool, Ordering};
    let constraint = args.sampling.constraint()?;
    let mut model = load(adapter, &args.model)?;
    let mut draft = args.sampling.draft_model(&model, &args.model)?;
    if let Some(c) = &constraint {
        // A grammar that cannot compile fails now, not at the first message.
        model.grammars().parser(c)?;
    }
    let n_ctx = model.llama().n_ctx() as usize;
    let mut session = Session::new();
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::new("system", system));
    }
    // Ctrl-C stops the reply being written and keeps the conversation; at the prompt, or a
    // second time before the reply stops (a long prompt finishes its step first), it quits.
    let replying = Arc::new(AtomicBool::new(false));
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let (replying, interrupted) = (Arc::clone(&replying), Arc::clone(&interrupted));
        let handler = ctrlc::set_handler(move || {
            if replying.load(Ordering::Acquire) && !interrupted.swap(true, Ordering::AcqRel) {
                eprint!(" (stopping)");
            } else {
                eprintln!();
                std::process::exit(130);
            }
        });
        if let Err(e) = handler {
            tracing::warn!("Ctrl-C will end the chat, not only the reply: {e}");
        }
    }
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "{} ready. Type a message; /reset starts over, /exit or Ctrl-D quits, Ctrl-C stops a reply.",
            model.name()
        );
    }
    // When old turns must go, the room left for the reply: the -n limit, or a quarter of the
    // context.
    let reply_room = match usize::try_from(args.n_predict) {
        Ok(n) => n.min(n_ctx / 2),
        Err(_) => n_ctx / 4,
    };
    let mut input = std::io::stdin().lock();
    let mut line = Vec::new();
    loop {
        if interactive {
            eprint!("> ");
        }
        line.clear();
        let read = input
            .read_until(b'\n', &mut line)
            .map_err(|source| sovereign::Error::Io {
                what: "reading the input".into(),
                source,
            })?;
        if read == 0 {
            break;
        }
        let Ok(text) = std::str::from_utf8(&line) else {
            eprintln!("error: the message is not valid UTF-8; it was not sent");
            continue;
        };
        let text = text.trim();
        match text {
            "" => continue,
            "/exit" | "/quit" | "/bye" => break,
            "/reset" => {
                messages.retain(|m: &ChatMessage| m.role == "system");
                session.reset();
                continue;
            }
            "/help" | "/?" => {
                eprintln!("/reset starts over, /exit (or Ctrl-D) quits, Ctrl-C stops a reply");
                continue;
            }
            command if command.starts_with('/') && !command.contains(char::is_whitespace) => {
                eprintln!("unknown command {command}; /help lists them");
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage::new("user", text));
        let Some(prompt) = fit_conversation(&model, &mut messages, n_ctx, reply_room)? else {
            messages.pop();
            continue;
        };
        let params = args.sampling.generate(args.n_predict, constraint.clone());
        let mut stdout = std::io::stdout().lock();
        let mut write_error = None;
        interrupted.store(false, Ordering::Release);
        replying.store(true, Ordering::Release);
        let result = pollster::block_on(session.run_drafted(
            &mut model,
            draft.as_mut(),
            &prompt,
            &params,
            None,
            &mut |step| {
                if write_error.is_none()
                    && !step.text.is_empty()
                    && let Err(e) = stdout
                        .write_all(step.text.as_bytes())
                        .and_then(|()| stdout.flush())
                {
                    write_error = Some(e);
                }
                // Output that cannot be written ends the reply as Ctrl-C does.
                if write_error.is_some() || interrupted.load(Ordering::Acquire) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        ));
        replying.store(false, Ordering::Release);
        let completion = result?;
        if let Some(e) = write_error.or_else(|| writeln!(stdout).err()) {
            return Err(output_error(e));
        }
        report(&completion);
        match completion.stop {
            StopReason::ContextFull => {
                eprintln!(
                    "(the context is full: the reply was cut short; older turns make room for the next)"
                )
            }
            StopReason::Cancelled => eprintln!("(stopped)"),
            _ => {}
        }
        messages.push(ChatMessage::new("assistant", &completion.text));
    }
    Ok(())
}

/// The conversation's tokens, with its oldest turns dropped to leave `reply_room` positions for
/// the reply (saying so); `None`, with the reason on stderr, when the last message alone does
/// not fit.
fn fit_conversation(
    model: &Model,
    messages: &mut Vec<ChatMessage>,
    n_ctx: usize,
    reply_room: usize,
) -> Result<Option<Vec<u32>>, sovereign::Error> {
    use sovereign::engine::EngineError;
    match sovereign::engine::fit_conversation(messages, n_ctx, reply_room, |m| model.encode_chat(m))
    {
        Ok(fit) => {
            // Kept dropped, so the next turn's prompt starts as this one's and reuses its cache.
            *messages = fit.messages;
            if fit.dropped > 0 {
                eprintln!(
                    "(the oldest turn was dropped to keep the conversation within {n_ctx} tokens)"
                );
            }
            Ok(Some(fit.tokens))
        }
        Err(sovereign::Error::Engine(EngineError::PromptTooLong { n_prompt, .. })) => {
            eprintln!(
                "error: this message takes {n_prompt} tokens in the chat template, and the context holds {n_ctx} (raise it with --ctx-size); it was not sent"
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn inspect(path: &PathBuf) -> CliResult {
    let file = GgufFile::open(path)?;
    out!(
        "{}: GGUF version {}, {} bytes",
        path.display(),
        file.version,
        file.file_len()
    );
    out!(
        "alignment {}, data at byte {}",
        file.alignment,
        file.data_offset()
    );
    out!("\n{} metadata entries:", file.metadata().len());
    for (key, value) in file.metadata().iter() {
        let mut shown = value.to_string();
        if shown.len() > 200 {
            let mut cut = 200;
            while !shown.is_char_boundary(cut) {
                cut -= 1;
            }
            shown = format!("{}... ({} chars)", &shown[..cut], shown.len());
        }
        out!(
            "  {key} = {} [{}]",
            shown.replace('\n', "\\n"),
            value.value_type().name()
        );
    }
    out!("\n{} tensors:", file.tensors().len());
    out!(
        "  {:<40} {:<8} {:<22} {:>12} {:>12}",
        "name",
        "type",
        "shape",
        "bytes",
        "offset"
    );
    let mut params = 0u64;
    for t in file.tensors() {
        params += t.n_elements;
        let shape = format!("{:?}", t.dims);
        out!(
            "  {:<40} {:<8} {:<22} {:>12} {:>12}",
            t.name,
            t.dtype.name(),
            shape,
            t.n_bytes,
            t.offset
        );
    }
    out!("\n{:.2} M parameters", params as f64 / 1e6);

    // The file parsed; now check that it is a model this build can run.
    let arch = file
        .metadata()
        .get_str("general.architecture")
        .unwrap_or("");
    // The tables above are shown either way; a model this build cannot run fails the check.
    if !sovereign::model::arch::LLAMA_LIKE.contains(&arch) && !arch.is_empty() {
        return Err(sovereign::model::ModelError::UnsupportedArchitecture(arch.to_string()).into());
    }
    let (cfg, tokenizer) = Model::check(&file)?;
    out!(
        "{} layers, {} heads ({} K/V), embedding {}, feed-forward {}, vocabulary {} ({} tokenizer entries), trained context {}: runnable",
        cfg.n_layer,
        cfg.n_head,
        cfg.n_head_kv,
        cfg.n_embd,
        cfg.n_ff,
        cfg.n_vocab,
        tokenizer.n_vocab(),
        cfg.n_ctx_train
    );
    Ok(())
}

fn devices() -> CliResult {
    let adapters = pollster::block_on(sovereign::gpu::list_adapters());
    if adapters.is_empty() {
        return Err(sovereign::gpu::GpuError::NoAdapter.into());
    }
    for a in adapters {
        out!("{}: {} ({}, {})", a.index, a.name, a.backend, a.device_type);
        out!("   driver: {}", a.driver);
        out!(
            "   features: shader-f16 {}, subgroups {} (sizes {}..{})",
            yes(a.shader_f16),
            yes(a.subgroups),
            a.subgroup_sizes.0,
            a.subgroup_sizes.1
        );
        out!(
            "   limits: storage binding {} MiB, buffer {} MiB, workgroup memory {} KiB, {} invocations per workgroup",
            a.max_storage_binding >> 20,
            a.max_buffer >> 20,
            a.max_workgroup_storage >> 10,
            a.max_invocations
        );
        let shapes = if a.cooperative_shapes.is_empty() {
            "none reported".to_string()
        } else {
            a.cooperative_shapes.join(", ")
        };
        out!(
            "   cooperative matrices: {} in wgpu; driver: {shapes}",
            yes(a.cooperative_matrix)
        );
    }
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn bench(adapter: Option<String>, args: BenchArgs) -> CliResult {
    if args.repetitions == 0 {
        return Err(sovereign::engine::EngineError::InvalidParameter {
            name: "repetitions".into(),
            message: "must be at least 1".into(),
        }
        .into());
    }
    if !args.streams.is_empty() {
        return bench_streams(adapter, args);
    }
    if args.n_prompt == 0 && args.n_gen == 0 {
        return Err(sovereign::engine::EngineError::InvalidParameter {
            name: "n-prompt".into(),
            message: "nothing to measure: -p and -n are both 0".into(),
        }
        .into());
    }
    let mut margs = args.model.clone();
    let needed = args.n_prompt.max(args.n_gen);
    if margs.ctx_size.is_none() {
        margs.ctx_size = Some(needed.max(512));
    }
    let mut model = load(adapter, &margs)?;
    let results = pollster::block_on(sovereign::bench::run(
        &mut model,
        args.n_prompt,
        args.n_gen,
        args.repetitions,
        args.profile,
    ))?;
    let info = model.llama().context().adapter_info().clone();
    let cfg = model.config();
    let size = model.llama().weight_bytes() as f64 / (1024.0 * 1024.0);
    let params = params_of(&margs)?;
    let label = format!("{} {}", cfg.arch, human_params(params));
    if args.output == BenchOutput::Json {
        let path = model_path(&margs)?;
        let tests: Vec<serde_json::Value> = results
            .iter()
            .map(|r| {
                let samples_ns: Vec<f64> = r
                    .tokens_per_second
                    .iter()
                    .map(|tps| (f64::from(r.n_tokens) / tps * 1e9).round())
                    .collect();
                let mean_ns = samples_ns.iter().sum::<f64>() / samples_ns.len().max(1) as f64;
                let sd_ns = if samples_ns.len() < 2 {
                    0.0
                } else {
                    (samples_ns
                        .iter()
                        .map(|v| (v - mean_ns).powi(2))
                        .sum::<f64>()
                        / (samples_ns.len() - 1) as f64)
                        .sqrt()
                };
                let (n_prompt, n_gen) = if r.test.starts_with("pp") {
                    (r.n_tokens, 0)
                } else {
                    (0, r.n_tokens)
                };
                serde_json::json!({
                    "build_version": env!("CARGO_PKG_VERSION"),
                    "model_filename": path.display().to_string(),
                    "model_type": label,
                    "model_size": model.llama().weight_bytes(),
                    "model_n_params": params,
                    "backends": format!("wgpu/{:?}", info.backend),
                    "gpu_info": info.name,
                    "n_ctx": model.llama().n_ctx(),
                    "n_prompt": n_prompt,
                    "n_gen": n_gen,
                    "test": r.test,
                    "repetitions": r.tokens_per_second.len(),
                    "avg_ns": mean_ns.round(),
                    "stddev_ns": sd_ns.round(),
                    "avg_ts": r.mean(),
                    "stddev_ts": r.stddev(),
                    "samples_ns": samples_ns,
                    "samples_ts": r.tokens_per_second,
                    // Not llama-bench's: the host's share of a forward step.
                    "steps": r.steps.steps,
                    "host_ns_per_step": (r.host_and_step_seconds().0 * 1e9).round(),
                    "step_ns": (r.host_and_step_seconds().1 * 1e9).round(),
                    "profile": r.profile.iter().map(|k| serde_json::json!({
                        "kernel": k.kernel,
                        "workgroups": k.workgroups,
                        "dispatches": k.dispatches,
                        "gpu_ns": k.gpu_time.as_nanos() as u64,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        out!("{}", serde_json::Value::Array(tests));
        return Ok(());
    }
    out!("| model | size | params | backend | adapter | test | t/s |");
    out!("| --- | ---: | ---: | --- | --- | ---: | ---: |");
    for r in &results {
        out!(
            "| {label} | {size:.2} MiB | {:.2} M | wgpu/{:?} | {} | {} | {:.2} ± {:.2} |",
            params as f64 / 1e6,
            info.backend,
            info.name,
            r.test,
            r.mean(),
            r.stddev()
        );
    }
    // Like llama-bench, the table alone on stdout; the host's share goes with the diagnostics.
    for r in &results {
        let (host, step) = r.host_and_step_seconds();
        eprintln!(
            "{}: host {:.3} ms of {:.3} ms per forward step ({:.2}%: check, step buffer write, encode, submit), {} steps",
            r.test,
            host * 1e3,
            step * 1e3,
            100.0 * host / step.max(f64::MIN_POSITIVE),
            r.steps.steps
        );
    }
    for r in results.iter().filter(|r| !r.profile.is_empty()) {
        print_profile(r)?;
    }
    Ok(())
}

/// The kernels of a profiled run, the costliest first.
fn print_profile(r: &sovereign::bench::BenchResult) -> CliResult {
    let total: f64 = r.profile.iter().map(|k| k.gpu_time.as_secs_f64()).sum();
    let dispatches: u64 = r.profile.iter().map(|k| k.dispatches).sum();
    out!();
    out!(
        "{}: GPU time per kernel over one profiled run (each dispatch in its own pass): {:.3} ms in {dispatches} dispatches",
        r.test,
        total * 1e3
    );
    out!("| kernel | workgroups | dispatches | GPU ms | share |");
    out!("| --- | ---: | ---: | ---: | ---: |");
    for k in &r.profile {
        let t = k.gpu_time.as_secs_f64();
        out!(
            "| {} | {}x{}x{} | {} | {:.3} | {:.1}% |",
            k.kernel,
            k.workgroups[0],
            k.workgroups[1],
            k.workgroups[2],
            k.dispatches,
            t * 1e3,
            100.0 * t / total.max(f64::MIN_POSITIVE)
        );
    }
    Ok(())
}

fn embed(adapter: Option<String>, args: EmbedArgs) -> CliResult {
    use sovereign::engine::{Normalize, Pooling};
    let mut texts = args.prompt.clone();
    if let Some(path) = &args.file {
        let text = std::fs::read_to_string(path).map_err(|source| sovereign::Error::Io {
            what: format!("reading {}", path.display()),
            source,
        })?;
        texts.extend(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string),
        );
    }
    let invalid = |name: &str, message: String| sovereign::engine::EngineError::InvalidParameter {
        name: name.into(),
        message,
    };
    if texts.is_empty() {
        return Err(invalid("prompt", "nothing to embed: give -p TEXT or -f FILE".into()).into());
    }
    let normalize = Normalize::new(args.embd_normalize)?;
    let mut model = load(adapter, &args.model)?;
    let pooling = match &args.pooling {
        Some(name) => Pooling::parse(name)?,
        None => model.pooling(),
    };
    let mut session = Session::new();
    let mut vectors = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let tokens = model.encode(text)?;
        if tokens.is_empty() {
            return Err(invalid("prompt", format!("text {i} holds no tokens")).into());
        }
        vectors.push(pollster::block_on(
            session.embed(&mut model, &tokens, pooling, normalize),
        )?);
    }
    match args.output {
        EmbedOutput::Text => {
            for (i, e) in vectors.iter().enumerate() {
                let numbers: Vec<String> = e.values.iter().map(|v| format!("{v:.6}")).collect();
                out!("embedding {i}: {}", numbers.join(" "));
            }
            if vectors.len() > 1 {
                out!("\ncosine similarity matrix:");
                for a in &vectors {
                    let row: Vec<String> = vectors
                        .iter()
                        .map(|b| format!("{:6.3}", cosine(&a.values, &b.values)))
                        .collect();
                    out!("{}", row.join(" "));
                }
            }
        }
        EmbedOutput::Json => {
            let body = sovereign::openai::response::embeddings_body(
                &vectors,
                sovereign::openai::request::EncodingFormat::Float,
                model.name(),
            );
            out!("{body}");
        }
        EmbedOutput::Array => {
            let all: Vec<&[f32]> = vectors.iter().map(|e| &e.values[..]).collect();
            out!("{}", serde_json::json!(all));
        }
    }
    Ok(())
}

/// The cosine of the angle between two vectors (0 where one is zero).
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let d = norm(a) * norm(b);
    if d > 0.0 { dot / d } else { 0.0 }
}

fn perplexity(adapter: Option<String>, args: PerplexityArgs) -> CliResult {
    use sovereign::perplexity::{PerplexityOptions, perplexity};
    let text = std::fs::read_to_string(&args.file).map_err(|source| sovereign::Error::Io {
        what: format!("reading {}", args.file.display()),
        source,
    })?;
    let mut margs = args.model.clone();
    // As in llama-perplexity, -c is the chunk length; 512 unless given.
    let n_ctx = *margs.ctx_size.get_or_insert(512);
    let mut model = load(adapter, &margs)?;
    let tokenizer = model.tokenizer();
    let tokens = tokenizer.encode(&text, true)?;
    let bos = tokenizer.add_bos().then(|| tokenizer.bos()).flatten();
    let n_chunks = tokens.len() / n_ctx as usize;
    eprintln!(
        "{} tokens; {n_chunks} chunks of {n_ctx}{}",
        tokens.len(),
        args.chunks
            .filter(|&c| (c as usize) < n_chunks)
            .map_or(String::new(), |c| format!(", scoring {c}"))
    );
    let options = PerplexityOptions {
        n_ctx,
        max_chunks: args.chunks,
        bos,
    };
    let mut out = std::io::stdout();
    let mut write_error = None;
    let result = pollster::block_on(perplexity(model.llama_mut(), &tokens, options, &mut |e| {
        if e.chunk == 1 {
            eprintln!(
                "{:.2} s per chunk, about {:.1} min in all",
                e.seconds,
                e.seconds * e.n_chunks as f64 / 60.0
            );
        }
        if write_error.is_none()
            && let Err(e) = write!(out, "[{}]{:.4},", e.chunk, e.ppl).and_then(|()| out.flush())
        {
            write_error = Some(e);
        }
    }))?;
    if let Some(e) = write_error {
        return Err(output_error(e));
    }
    out!();
    out!(
        "Final estimate: PPL = {:.4} +/- {:.5} ({} chunks, {} tokens scored)",
        result.ppl,
        result.ppl_stderr,
        result.n_chunks,
        result.n_scored
    );
    Ok(())
}

fn synth(args: SynthArgs) -> CliResult {
    use sovereign::model::synthetic::{SyntheticSpec, synthetic_llama};
    let invalid = |name: &str, message: String| sovereign::engine::EngineError::InvalidParameter {
        name: name.into(),
        message,
    };
    let weight_type = |option: &str, name: &str| {
        sovereign::format::DType::from_name(name)
            .filter(|d| sovereign::kernels::WEIGHT_DTYPES.contains(d))
            .ok_or_else(|| {
                invalid(
                    option,
                    format!(
                        "{name:?} is not a weight type the engine runs (one of: {})",
                        sovereign::kernels::WEIGHT_DTYPES
                            .map(|d| d.name())
                            .join(", ")
                    ),
                )
            })
    };
    let dtype = weight_type("type", &args.dtype)?;
    let embd_dtype = match &args.embd_dtype {
        Some(name) => weight_type("embd-type", name)?,
        None => dtype,
    };
    let mut spec = match args.shape {
        SynthShape::Llama32_1B => SyntheticSpec::llama_3_2_1b(dtype),
        SynthShape::Llama3_8B => SyntheticSpec::llama_3_8b(dtype),
        SynthShape::Smollm2_135M => SyntheticSpec::smollm2_135m(dtype),
        SynthShape::Tiny => SyntheticSpec {
            dtype,
            n_embd: 256,
            n_ff: 512,
            ..Default::default()
        },
    };
    spec.embd_dtype = embd_dtype;
    if let Some(n) = args.layers {
        spec.n_layer = n;
    }
    spec.seed = args.seed;
    // Every row of a matrix is a whole number of its type's blocks.
    let rows_fit = |option: &str, dtype: sovereign::format::DType, what: &str, lens: &[u32]| {
        let block = dtype.block_len() as u32;
        if lens.iter().all(|n| n.is_multiple_of(block)) {
            return Ok(());
        }
        let lens: Vec<String> = lens.iter().map(u32::to_string).collect();
        Err(invalid(
            option,
            format!(
                "{dtype} rows are multiples of {block}; this shape's {what} are {}",
                lens.join(" and ")
            ),
        ))
    };
    rows_fit("type", dtype, "rows", &[spec.n_embd, spec.n_ff])?;
    rows_fit("embd-type", embd_dtype, "embedding rows", &[spec.n_embd])?;
    if args.output.exists() && !args.force {
        return Err(invalid(
            "output",
            format!(
                "{} exists; pass --force to replace it",
                args.output.display()
            ),
        )
        .into());
    }
    // Written beside the target and renamed into place: an interrupted run leaves no
    // half-written model under the output name.
    let dir = match args.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let io = |source: std::io::Error| sovereign::Error::Io {
        what: format!("writing {}", args.output.display()),
        source,
    };
    if !dir.is_dir() {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("the directory {} does not exist", dir.display()),
        )));
    }
    let n_params = spec.n_params() as f64;
    eprintln!(
        "writing {} parameters as {dtype}, the embedding as {embd_dtype} ({} layers) to {}",
        if n_params >= 1e9 {
            format!("{:.2} B", n_params / 1e9)
        } else {
            format!("{:.2} M", n_params / 1e6)
        },
        spec.n_layer,
        args.output.display()
    );
    let writer = synthetic_llama(&spec)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".synth-");
    // Temporary files are private (0600); a model file is as readable as any other output.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let mut tmp = builder.tempfile_in(&dir).map_err(io)?;
    {
        let mut sink = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        writer.write_to(&mut sink).map_err(io)?;
        sink.flush().map_err(io)?;
    }
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(&args.output).map_err(|e| io(e.error))?;
    eprintln!("wrote {}", args.output.display());
    Ok(())
}

/// `bench --streams`: one engine with a slot for the most streams, each count run in turn.
fn bench_streams(adapter: Option<String>, args: BenchArgs) -> CliResult {
    use sovereign::engine::service::{Engine, EngineOptions};
    let most = args.streams.iter().copied().max().unwrap_or(1);
    if args.n_gen == 0 {
        return Err(sovereign::engine::EngineError::InvalidParameter {
            name: "n-gen".into(),
            message: "the streams benchmark needs tokens to generate".into(),
        }
        .into());
    }
    let mut margs = args.model.clone();
    let per_stream = args.n_prompt + args.n_gen + 1;
    margs.ctx_size = Some(margs.ctx_size.unwrap_or(per_stream.max(256)));
    let model = load_with(
        adapter,
        &margs,
        LoadOptions {
            n_seq: most,
            kv_tokens: Some(
                most * (per_stream.next_multiple_of(args.kv_page_size) + args.kv_page_size),
            ),
            page_size: args.kv_page_size,
            ..Default::default()
        },
    )?;
    let info = model.llama().context().adapter_info().clone();
    let pool = model.llama().n_pages() * model.llama().page_size();
    let engine = Engine::start(
        model,
        EngineOptions {
            max_queue: most as usize,
            ..Default::default()
        },
    )?;
    let h = engine.handle();
    // Warm-up, unmeasured.
    pollster::block_on(sovereign::bench::streams(&h, 1, 8, 4, 1))?;
    eprintln!(
        "{} ({:?}), KV pool of {pool} positions in pages of {}, prompts of {} tokens, {} generated per stream",
        info.name, info.backend, args.kv_page_size, args.n_prompt, args.n_gen
    );
    out!(
        "| streams | decode t/s (all streams) | t/s per stream | vs 1 stream | KV allocated | KV used | KV waste |"
    );
    out!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut single = None;
    for (i, &n) in args.streams.iter().enumerate() {
        let r = pollster::block_on(sovereign::bench::streams(
            &h,
            n as usize,
            args.n_prompt,
            args.n_gen,
            1000 + i as u64,
        ))?;
        let tps = r.tokens_per_second();
        // The window opens when the last stream has its first token: streams whose prompts
        // wait behind others' chunked prefill leave the early ones little to decode in it.
        if (r.window_tokens as u64) * 4 < u64::from(n) * u64::from(args.n_gen) {
            eprintln!(
                "note: {n} streams decoded together for only {} of their {} tokens; raise -n (or lower -p) for a steadier figure",
                r.window_tokens,
                u64::from(n) * u64::from(args.n_gen)
            );
        }
        if n == 1 {
            single = Some(tps);
        }
        let ratio = single.map_or_else(|| "-".to_string(), |one| format!("{:.2}x", tps / one));
        let samples = r.kv_samples.max(1) as f64;
        out!(
            "| {n} | {tps:.2} | {:.2} | {ratio} | {:.0} | {:.0} | {:.2}% |",
            tps / f64::from(n),
            r.kv_allocated as f64 / samples,
            r.kv_stored as f64 / samples,
            100.0 * r.kv_waste()
        );
    }
    Ok(())
}

fn params_of(args: &ModelArgs) -> Result<u64, sovereign::Error> {
    let file = GgufFile::open(model_path(args)?)?;
    Ok(file.tensors().iter().map(|t| t.n_elements).sum())
}

fn human_params(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.1}B", n as f64 / 1e9)
    } else {
        format!("{}M", n / 1_000_000)
    }
}

/// Serves the browser demo and its model until Ctrl-C.
#[cfg(feature = "server")]
fn web(args: WebArgs) -> CliResult {
    use sovereign::server::web::{WebConfig, WebServer};
    let model = match args.model {
        Some(p) => p,
        None => sovereign::fetch::ensure_default_model()?,
    };
    let server = WebServer::bind(WebConfig {
        host: args.host,
        port: args.port,
        dir: args.dir,
        model: Some(model),
    })?;
    let addr = server.local_addr()?;
    eprintln!("serving the browser demo at http://{addr}/ (Ctrl-C stops)");
    server.run().map_err(sovereign::Error::from)
}

/// Binds first (a busy port fails before the model loads), then loads the model, starts the
/// engine and serves until Ctrl-C or SIGTERM.
#[cfg(feature = "server")]
fn serve(adapter: Option<String>, args: ServeArgs) -> CliResult {
    use sovereign::engine::Pooling;
    use sovereign::engine::service::{Engine, EngineOptions};
    use sovereign::server::{Server, ServerConfig};
    let path = model_path(&args.model)?;
    let model_id = args.alias.clone().unwrap_or_else(|| {
        path.file_stem()
            .map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned())
    });
    let server = Server::bind(ServerConfig {
        host: args.host.clone(),
        port: args.port,
        model_id: model_id.clone(),
        api_key: args
            .api_key
            .clone()
            .or_else(|| std::env::var("SOVEREIGN_API_KEY").ok()),
        cors_origins: args.cors_origins.clone(),
        allowed_hosts: args.allowed_hosts.clone(),
        max_body_bytes: args.max_body_bytes,
    })?;
    let mut model_args = args.model.clone();
    model_args.model = Some(path);
    let model = load_with(
        adapter,
        &model_args,
        LoadOptions {
            n_seq: args.parallel,
            kv_tokens: args.kv_tokens,
            kv_memory: args.kv_memory.map(|mib| mib << 20),
            page_size: args.kv_page_size,
            ..Default::default()
        },
    )?;
    tracing::info!(
        sequences = model.llama().n_seq(),
        kv_pages = model.llama().n_pages(),
        page_tokens = model.llama().page_size(),
        kv_type = model.llama().kv_type().name(),
        kv_mib = model.llama().kv_bytes() >> 20,
        "KV cache"
    );
    let draft = match &args.model_draft {
        None => None,
        Some(path) => {
            let file = GgufFile::open(path)?;
            let l = model.llama();
            // Its cache mirrors the model's: as many sequences, contexts and positions.
            let options = LoadOptions {
                n_ctx: Some(l.n_ctx()),
                n_seq: l.n_seq(),
                kv_tokens: Some(l.n_pages() * l.page_size()),
                page_size: l.page_size(),
                max_batch: args.model.batch_size,
                kv_type: args.model.cache_type,
                ..Default::default()
            };
            tracing::info!(model = %path.display(), "loading the draft model");
            Some(pollster::block_on(Model::load(
                Arc::clone(l.context()),
                &file,
                &options,
                &mut |_| {},
            ))?)
        }
    };
    let engine = Engine::start_with_draft(
        model,
        draft,
        EngineOptions {
            max_queue: args.max_queue,
            prefill_chunk: args.prefill_chunk as usize,
            draft: draft_tokens(args.draft, args.model_draft.is_some()),
            pooling: args.pooling.as_deref().map(Pooling::parse).transpose()?,
        },
    )?;
    let addr = server.local_addr()?;
    eprintln!("serving {model_id} at http://{addr}/v1 (Ctrl-C stops)");
    let result = server.run(engine.handle()).map_err(sovereign::Error::from);
    // Stops the engine once its running request has seen its stream dropped.
    drop(engine);
    result
}
