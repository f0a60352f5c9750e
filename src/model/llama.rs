//! The Llama forward pass on the GPU: weights uploaded as they are in the file, every dispatch
//! of a step built at load time, one command encoder and one submit per step.

use std::sync::Arc;
use std::time::Duration;

use web_time::Instant;

use super::arch::{self, block_tensor};
use super::{LlamaConfig, ModelError};
use crate::Result;
use crate::format::{DType, TensorSource};
use crate::gpu::{GpuContext, ReadbackBuffer, WeightTensor};
use crate::kernels::argmax::Argmax;
use crate::kernels::attention::{Attention, AttentionParams, SPLIT_KEYS};
use crate::kernels::embed::Embed;
use crate::kernels::kv_store::{KvStore, KvStoreParams};
use crate::kernels::matmul::{Matmul, MatmulKernel, MatmulLayout};
use crate::kernels::rms_norm::RmsNorm;
use crate::kernels::silu_mul::SiluMul;
use crate::kernels::{
    Dispatch, KernelError, KvType, PagedLayout, StepBuffer, StepInput, StepShape, encode_all,
    profile::{KernelTime, Profiler},
    submit_in_parts,
};

/// Steps of fewer tokens than this use the matrix-vector kernels (each weight row read once per
/// token); longer ones the tiled matrix-matrix kernels. On GPUs with the batched decode kernel
/// the decode layers take steps up to `BATCH_DECODE_MAX_TOKENS`, and this bound only picks,
/// within them, the per-token kernels and flash-decoding (whose partials are sized for it) and
/// the output projection's kernel.
const VECTOR_MAX_TOKENS: u32 = 8;
/// The most tokens a decode-layer step takes on GPUs with the batched decode kernel: a batch of
/// one token from each of up to this many sequences reads each weight row once per eight tokens,
/// where the tiled kernel would fill a 64-token tile.
const BATCH_DECODE_MAX_TOKENS: u32 = 32;

/// Whether the per-token matrix-vector kernel serves a decode-layer step (else the batched one).
/// A kernel of a product and the steps it serves (all steps if `None`).
type MatmulChoice = (Matmul, Option<fn(&StepShape) -> bool>);

fn per_token_matvec(s: &StepShape) -> bool {
    s.n_tokens < 4
}

fn batched_matvec(s: &StepShape) -> bool {
    !per_token_matvec(s)
}

/// A decode product's per-token kernel and, where the adapter has one, its batched kernel, each
/// with the steps it serves; without a batched kernel the per-token one serves every step.
fn decode_choices(single: Matmul, batch: Option<Matmul>) -> Vec<MatmulChoice> {
    match batch {
        Some(batch) => vec![
            (single, Some(per_token_matvec as fn(&StepShape) -> bool)),
            (batch, Some(batched_matvec)),
        ],
        None => vec![(single, None)],
    }
}

/// Flash-decoding for decode steps whose keys fill more than one split. Up to one split's keys
/// the unsplit kernel does the same work in as many workgroups and leaves out the merge pass:
/// 32 dispatches fewer per step on the 8B shape at the start of every sequence.
fn split_attention(s: &StepShape) -> bool {
    s.n_tokens < VECTOR_MAX_TOKENS && s.n_keys > SPLIT_KEYS
}

fn per_token_attention(s: &StepShape) -> bool {
    !split_attention(s)
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Context length of one sequence in tokens; `None`: the training context, capped at 4096.
    pub n_ctx: Option<u32>,
    /// Most tokens in one forward step (longer prompts are prefilled in chunks of this).
    pub max_batch: u32,
    /// How the KV cache holds its elements; `None`: f16 where the adapter has shader-f16, else
    /// f32.
    pub kv_type: Option<KvType>,
    /// Sequences the cache can hold at once (rows of the block table).
    pub n_seq: u32,
    /// Positions the KV page pool holds across all sequences (at least one full context);
    /// `None`: as many as `kv_memory` holds, else `n_seq` full contexts, or as many positions as
    /// one binding of the adapter holds if that is less.
    pub kv_tokens: Option<u32>,
    /// Bytes the KV page pool may take, K and V of every layer together (used when `kv_tokens`
    /// is `None`): the cache type sets how many positions that is.
    pub kv_memory: Option<u64>,
    /// Positions per KV page.
    pub page_size: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            n_ctx: None,
            max_batch: 512,
            kv_type: None,
            n_seq: 1,
            kv_tokens: None,
            kv_memory: None,
            page_size: 16,
        }
    }
}

/// What a batched step returns for its output rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutput {
    /// Nothing: the step only fills the KV cache.
    Nothing,
    /// The most likely next token of each output row.
    Argmax,
    /// The logits of each output row: (n_out, n_vocab).
    Logits,
    /// The final norm's output of each output row, before the output projection:
    /// (n_out, n_embd). Embeddings are pooled from these.
    Hidden,
}

/// A page copy before a step: every layer's K and V of page `src` into page `dst` (copy on
/// write of a shared page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCopy {
    pub src: u32,
    pub dst: u32,
}

/// What a forward step returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Nothing: the step only fills the KV cache (the first chunks of a long prompt).
    Nothing,
    /// The most likely next token after the last position (greedy decoding, reads 4 bytes).
    Argmax,
    /// The logits after the last position: (n_vocab).
    LastLogits,
    /// The logits after every position: (n_tokens, n_vocab).
    AllLogits,
    /// The most likely next token after every position (greedy checks of drafted tokens).
    AllArgmax,
    /// The final norm's output at every position: (n_tokens, n_embd).
    AllHidden,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Forward {
    Nothing,
    /// Single-sequence greedy: the next token.
    Token(u32),
    /// Batched greedy: the next token of each output row.
    Tokens(Vec<u32>),
    /// Logits of the requested rows, (rows, n_vocab).
    Logits(Vec<f32>),
    /// The final norm's output of the requested rows, (rows, n_embd).
    Hidden(Vec<f32>),
}

/// An activation to read back in traced runs: `rows` rows of `row_len` values.
#[derive(Debug, Clone)]
struct TracePoint {
    name: String,
    buffer: wgpu::Buffer,
    row_len: u32,
    /// Token t's row is at pos0 + t (the KV pool of the single-sequence layout), else at t.
    rows_at_pos: bool,
    /// How the buffer holds the values (F32 but for the rows of a KV cache).
    kv_type: KvType,
    /// Elements between the rows of an F32 buffer (row_len unless the values are the first
    /// columns of wider rows, as q is of the q | k | v rows).
    row_stride: u32,
}

/// Dispatches that produce one named activation.
#[derive(Debug)]
struct Stage {
    dispatches: Vec<Dispatch>,
    /// What a traced run reads back after the stage.
    traces: Vec<TracePoint>,
}

/// Activation buffers, each (max_batch, width).
struct Activations {
    x: wgpu::Buffer,
    xn: wgpu::Buffer,
    /// Rows of q | k | v: the attention projections' outputs side by side, so that one
    /// dispatch can compute all three.
    qkv: wgpu::Buffer,
    attn: wgpu::Buffer,
    /// Rows of gate | up, for the same reason.
    gate_up: wgpu::Buffer,
    /// silu(gate) * up.
    ffn: wgpu::Buffer,
    /// Flash-decoding's partial rows, for decode steps, where splitting the keys pays.
    attn_partials: Option<wgpu::Buffer>,
    /// A product's input quantized to 8 bits, where its kernel reads that: every such product
    /// quantizes its input here just before it runs, so one buffer serves them all.
    xq: wgpu::Buffer,
}

struct Weights {
    token_embd: WeightTensor,
    output: Option<WeightTensor>,
    output_norm: wgpu::Buffer,
    layers: Vec<LayerWeights>,
}

struct LayerWeights {
    attn_norm: wgpu::Buffer,
    /// attn_q, attn_k and attn_v, joined where they share a type (see `upload_joined`).
    attn_qkv: Vec<WeightTensor>,
    attn_output: WeightTensor,
    ffn_norm: wgpu::Buffer,
    /// ffn_gate and ffn_up, joined where they share a type.
    ffn_gate_up: Vec<WeightTensor>,
    ffn_down: WeightTensor,
}

/// Load progress: bytes of weights uploaded so far, of the total.
/// Where the time of forward steps went, summed since the last [`LlamaGpu::take_step_times`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepTimes {
    pub steps: u64,
    /// On the host before the GPU has the step: checking it, writing the step buffer, encoding
    /// the pre-built dispatches and submitting them.
    pub host: Duration,
    /// From the call to its result (host time, the GPU's work and the readback).
    pub total: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct LoadProgress {
    pub done: u64,
    pub total: u64,
}

pub struct LlamaGpu {
    ctx: Arc<GpuContext>,
    cfg: LlamaConfig,
    n_ctx: u32,
    max_batch: u32,
    logit_rows: u32,
    step: StepBuffer,
    /// Layers for steps of many tokens (tiled matmuls) and of few (matrix-vector).
    prefill: Vec<Stage>,
    decode: Vec<Stage>,
    /// Final norm of the output rows and the output projection, for few and for many rows.
    tail_vector: Vec<Dispatch>,
    tail_tiled: Vec<Dispatch>,
    /// Argmax of each output row.
    tail_argmax: Dispatch,
    /// K and V page pools, per layer (for page copies).
    k_cache: Vec<wgpu::Buffer>,
    v_cache: Vec<wgpu::Buffer>,
    /// One page: a copy within a pool goes through it, since a buffer cannot be both the
    /// source and the destination of one copy.
    page_scratch: wgpu::Buffer,
    page_bytes: u64,
    n_pages: u32,
    n_seq: u32,
    logits: wgpu::Buffer,
    next_token: wgpu::Buffer,
    readback: ReadbackBuffer,
    weight_bytes: u64,
    kv_bytes: u64,
    kv_type: KvType,
    // Kept for the trace of the final norm.
    xn: wgpu::Buffer,
    times: StepTimes,
    /// Steps of fewer tokens run the decode layers.
    decode_below: u32,
    /// Per-kernel GPU timing of every step while set (`set_profiling`).
    profiler: Option<Profiler>,
}

impl std::fmt::Debug for LlamaGpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaGpu")
            .field("cfg", &self.cfg)
            .field("n_ctx", &self.n_ctx)
            .field("max_batch", &self.max_batch)
            .finish()
    }
}

async fn upload_matrix(
    ctx: &GpuContext,
    src: &dyn TensorSource,
    name: &str,
    progress: &mut dyn FnMut(u64),
) -> Result<WeightTensor> {
    let t = src
        .tensor(name)
        .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
    let too_large = || ModelError::Invalid(format!("tensor {name} is too large ({:?})", t.dims));
    let row_len = u32::try_from(t.row_len()).map_err(|_| too_large())?;
    let n_rows = u32::try_from(t.n_rows()).map_err(|_| too_large())?;
    let w = WeightTensor::upload(ctx, name, t.dtype, row_len, n_rows, t.data).await?;
    progress(t.data.len() as u64);
    Ok(w)
}

/// The attention of a layer: q from the q | k | v rows, out in rows of n_embd_q.
fn attention_params(c: &LlamaConfig) -> AttentionParams {
    AttentionParams {
        n_head: c.n_head,
        n_head_kv: c.n_head_kv,
        head_dim: c.head_dim,
        q_stride: c.n_embd_qkv(),
        kv_stride: c.n_embd_kv(),
        scale: 1.0 / (c.head_dim as f32).sqrt(),
        out_stride: c.n_embd_q(),
        _pad1: 0,
    }
}

/// Uploads matrices of one row length that the same input multiplies (q, k and v; gate and
/// up), joining each run of one type into a single tensor of their rows, so that one dispatch
/// computes the run: fewer dispatches and one pass over the input. Their outputs land side by
/// side in the order named.
async fn upload_joined(
    ctx: &GpuContext,
    src: &dyn TensorSource,
    names: &[String],
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<WeightTensor>> {
    let mut runs: Vec<Vec<&str>> = Vec::new();
    let mut last: Option<DType> = None;
    for name in names {
        let t = src
            .tensor(name)
            .ok_or_else(|| ModelError::MissingTensor(name.clone()))?;
        match runs.last_mut() {
            Some(run) if last == Some(t.dtype) => run.push(name),
            _ => runs.push(vec![name]),
        }
        last = Some(t.dtype);
    }
    let mut tensors = Vec::with_capacity(runs.len());
    for run in runs {
        if let [name] = run[..] {
            tensors.push(upload_matrix(ctx, src, name, progress).await?);
            continue;
        }
        let joined_name = run.join("+");
        let (mut data, mut n_rows, mut row_len, mut dtype) = (Vec::new(), 0u64, None, None);
        for name in &run {
            let t = src
                .tensor(name)
                .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
            if row_len.is_some_and(|len| len != t.row_len()) {
                return Err(ModelError::Invalid(format!(
                    "{joined_name}: rows of different lengths ({:?})",
                    t.dims
                ))
                .into());
            }
            row_len = Some(t.row_len());
            dtype = Some(t.dtype);
            n_rows += t.n_rows();
            data.extend_from_slice(t.data);
        }
        let too_large = || ModelError::Invalid(format!("{joined_name} is too large"));
        let (Some(row_len), Some(dtype)) = (row_len, dtype) else {
            continue;
        };
        let row_len = u32::try_from(row_len).map_err(|_| too_large())?;
        let n_rows = u32::try_from(n_rows).map_err(|_| too_large())?;
        let w = WeightTensor::upload(ctx, &joined_name, dtype, row_len, n_rows, &data).await?;
        progress(data.len() as u64);
        tensors.push(w);
    }
    Ok(tensors)
}

/// Norm weights are tiny: widen them to f32 whatever their stored type.
async fn upload_vector(
    ctx: &GpuContext,
    src: &dyn TensorSource,
    name: &str,
    progress: &mut dyn FnMut(u64),
) -> Result<wgpu::Buffer> {
    let t = src
        .tensor(name)
        .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
    let values = crate::reference::dequantize(t.dtype, t.data, t.n_elements() as usize)?;
    let buffer = ctx
        .storage_buffer_init(name, bytemuck::cast_slice(&values))
        .await?;
    progress(t.data.len() as u64);
    Ok(buffer)
}

impl LlamaGpu {
    /// Uploads the weights of a model whose `cfg` was read (and its tensors checked) from the
    /// same source, and builds every dispatch.
    pub async fn load(
        ctx: Arc<GpuContext>,
        cfg: LlamaConfig,
        src: &dyn TensorSource,
        options: &LoadOptions,
        on_progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let n_ctx = options.n_ctx.unwrap_or(cfg.n_ctx_train.min(4096)).max(1);
        let max_batch = options.max_batch.clamp(1, n_ctx);
        let kv_type = options.kv_type.unwrap_or(if ctx.features().shader_f16 {
            KvType::F16
        } else {
            KvType::F32
        });
        if kv_type.needs_shader_f16() && !ctx.features().shader_f16 {
            return Err(ModelError::BadRequest(format!(
                "an f16 KV cache needs shader-f16, which {} lacks",
                ctx.adapter_info().name
            ))
            .into());
        }
        if let Some(why) = kv_type.unfit(cfg.n_head_kv, cfg.head_dim) {
            return Err(ModelError::BadRequest(why).into());
        }
        let page_size = options.page_size.clamp(1, 4096);
        let n_seq = options.n_seq.max(1);
        let pages_per_seq = n_ctx.div_ceil(page_size);
        let kv_row_bytes = kv_type.row_bytes(cfg.n_embd_kv());
        // Bytes of one position across the layers' K and V pools.
        let position_bytes = 2 * u64::from(cfg.n_layer) * kv_row_bytes;
        let kv_tokens = match (options.kv_tokens, options.kv_memory) {
            (Some(tokens), _) => tokens,
            (None, Some(bytes)) => {
                // A budget is a ceiling: past what one binding holds, the pool stops there.
                // Whole pages only, so that the pool stays within the budget.
                let fits = (bytes / position_bytes.max(1))
                    .min(ctx.max_binding_size() / kv_row_bytes.max(1))
                    / u64::from(page_size)
                    * u64::from(page_size);
                if fits < u64::from(n_ctx) {
                    return Err(ModelError::ContextTooLong {
                        requested: u64::from(n_ctx),
                        reason: format!(
                            "a KV memory budget of {} MiB holds {fits} positions of a {kv_type} cache ({position_bytes} bytes each), less than one context",
                            bytes >> 20
                        ),
                    }
                    .into());
                }
                u32::try_from(fits).unwrap_or(u32::MAX)
            }
            (None, None) => {
                let fits = ctx.max_binding_size() / kv_row_bytes.max(1);
                let wanted = u64::from(n_seq) * u64::from(n_ctx);
                u32::try_from(wanted.min(fits)).unwrap_or(u32::MAX)
            }
        };
        // The pool always holds one whole context: one sequence can never run out of pages.
        let n_pages = kv_tokens.max(n_ctx).div_ceil(page_size).max(pages_per_seq);
        let cache_bytes = u64::from(n_pages) * u64::from(page_size) * kv_row_bytes;
        if cache_bytes > ctx.max_binding_size() {
            return Err(ModelError::ContextTooLong {
                requested: u64::from(n_pages) * u64::from(page_size),
                reason: format!(
                    "one layer's K pool would take {cache_bytes} bytes, over this adapter's binding limit of {}; at most {} tokens fit",
                    ctx.max_binding_size(),
                    ctx.max_binding_size() / kv_row_bytes
                ),
            }
            .into());
        }

        let total: u64 = cfg
            .expected_tensors()
            .iter()
            .filter_map(|(name, _)| src.tensor(name).map(|t| t.data.len() as u64))
            .sum();
        let mut done = 0u64;
        let mut progress = |bytes: u64| {
            done += bytes;
            on_progress(LoadProgress { done, total });
        };

        let mut layers = Vec::with_capacity(cfg.n_layer as usize);
        for i in 0..cfg.n_layer {
            let name = |n: &str| block_tensor(i, n);
            layers.push(LayerWeights {
                attn_norm: upload_vector(&ctx, src, &name(arch::ATTN_NORM), &mut progress).await?,
                attn_qkv: upload_joined(
                    &ctx,
                    src,
                    &[name(arch::ATTN_Q), name(arch::ATTN_K), name(arch::ATTN_V)],
                    &mut progress,
                )
                .await?,
                attn_output: upload_matrix(&ctx, src, &name(arch::ATTN_OUTPUT), &mut progress)
                    .await?,
                ffn_norm: upload_vector(&ctx, src, &name(arch::FFN_NORM), &mut progress).await?,
                ffn_gate_up: upload_joined(
                    &ctx,
                    src,
                    &[name(arch::FFN_GATE), name(arch::FFN_UP)],
                    &mut progress,
                )
                .await?,
                ffn_down: upload_matrix(&ctx, src, &name(arch::FFN_DOWN), &mut progress).await?,
            });
        }
        let weights = Weights {
            token_embd: upload_matrix(&ctx, src, arch::TOKEN_EMBD, &mut progress).await?,
            output: if cfg.tied_embeddings {
                None
            } else {
                Some(upload_matrix(&ctx, src, arch::OUTPUT, &mut progress).await?)
            },
            output_norm: upload_vector(&ctx, src, arch::OUTPUT_NORM, &mut progress).await?,
            layers,
        };

        let act_buffer = |label: &'static str, width: u32| {
            let ctx = Arc::clone(&ctx);
            async move {
                ctx.create_buffer(
                    label,
                    u64::from(max_batch) * u64::from(width) * 4,
                    wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                )
                .await
            }
        };
        let act = Activations {
            x: act_buffer("x", cfg.n_embd).await?,
            xn: act_buffer("xn", cfg.n_embd).await?,
            qkv: act_buffer("qkv", cfg.n_embd_qkv()).await?,
            attn: act_buffer("attn", cfg.n_embd_q()).await?,
            gate_up: act_buffer("gate_up", 2 * cfg.n_ff).await?,
            ffn: act_buffer("ffn", cfg.n_ff).await?,
            attn_partials: if Attention::split_pays(&ctx, n_ctx) {
                let len =
                    Attention::partials_len(&attention_params(&cfg), VECTOR_MAX_TOKENS - 1, n_ctx);
                Some(
                    ctx.create_buffer("attn_partials", len * 4, wgpu::BufferUsages::STORAGE)
                        .await?,
                )
            } else {
                None
            },
            xq: ctx
                .create_buffer(
                    "xq",
                    if ctx.features().dot4 {
                        let widest = cfg.n_embd.max(cfg.n_embd_q()).max(cfg.n_ff);
                        Matmul::scratch_len(widest, max_batch).max(16)
                    } else {
                        16
                    },
                    wgpu::BufferUsages::STORAGE,
                )
                .await?,
        };
        let mut k_cache = Vec::with_capacity(cfg.n_layer as usize);
        let mut v_cache = Vec::with_capacity(cfg.n_layer as usize);
        let cache_usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        for i in 0..cfg.n_layer {
            k_cache.push(
                ctx.create_buffer(&format!("blk.{i}.k_cache"), cache_bytes, cache_usage)
                    .await?,
            );
            v_cache.push(
                ctx.create_buffer(&format!("blk.{i}.v_cache"), cache_bytes, cache_usage)
                    .await?,
            );
        }
        let page_bytes = u64::from(page_size) * kv_row_bytes;
        let page_scratch = ctx
            .create_buffer(
                "kv_page_scratch",
                page_bytes,
                wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            )
            .await?;

        let vocab_row_bytes = u64::from(cfg.n_vocab) * 4;
        let logit_rows =
            (ctx.max_binding_size() / vocab_row_bytes).clamp(1, u64::from(max_batch)) as u32;
        let logits = ctx
            .create_buffer(
                "logits",
                u64::from(logit_rows) * vocab_row_bytes,
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            )
            .await?;
        let next_token = ctx
            .create_buffer(
                "next_token",
                4 * u64::from(logit_rows),
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            )
            .await?;
        // Read back: the logit rows, or the final norm of every row of a batch (embeddings).
        let readback_bytes = (u64::from(logit_rows) * vocab_row_bytes)
            .max(u64::from(max_batch) * u64::from(cfg.n_embd) * 4);
        let readback = ReadbackBuffer::new(&ctx, "readback", readback_bytes).await?;
        let layout = PagedLayout {
            page_size,
            pages_per_seq,
            max_slots: n_seq,
        };
        let step = StepBuffer::new(&ctx, max_batch, layout).await?;

        let decode_below = if Matmul::has_batch(ctx.features()) {
            BATCH_DECODE_MAX_TOKENS + 1
        } else {
            VECTOR_MAX_TOKENS
        };
        // On a CPU adapter, the rowwise products are measured on this model's gate|up type and
        // shape before any product is built: the products follow the choice.
        // A measurement that fails costs the load nothing but the choice.
        if let Some(gate_up) = weights.layers.first().and_then(|l| l.ffn_gate_up.first()) {
            let chosen = crate::kernels::cpu_products::choose(
                &ctx,
                gate_up.dtype,
                cfg.n_ff,
                gate_up.row_len,
            )
            .await;
            if let Err(e) = chosen {
                tracing::warn!("CPU products not measured, the default kept: {e}");
            }
        }
        let builder = PlanBuilder {
            ctx: &ctx,
            cfg: &cfg,
            step: step.buffer(),
            act: &act,
            weights: &weights,
            k_cache: &k_cache,
            v_cache: &v_cache,
            pool_rows: n_pages * page_size,
            max_batch,
            kv_type,
            n_ctx,
        };
        let prefill = builder.layers(false).await?;
        let decode = builder.layers(true).await?;
        let tail_vector = builder.tail(true, &logits).await?;
        let tail_tiled = builder.tail(false, &logits).await?;
        let tail_argmax = Argmax::new(&ctx).await?.bind(
            &ctx,
            step.buffer(),
            &logits,
            &next_token,
            cfg.n_vocab,
            logit_rows,
        )?;
        ctx.check()?;

        let weight_bytes = total;
        let kv_bytes = 2 * cache_bytes * u64::from(cfg.n_layer);
        tracing::info!(
            weights_mib = weight_bytes >> 20,
            kv_mib = kv_bytes >> 20,
            kv_type = kv_type.name(),
            n_ctx,
            n_seq,
            n_pages,
            max_batch,
            "model on the GPU"
        );
        Ok(LlamaGpu {
            ctx,
            cfg,
            n_ctx,
            max_batch,
            logit_rows,
            step,
            prefill,
            decode,
            tail_vector,
            tail_tiled,
            tail_argmax,
            page_scratch,
            page_bytes,
            n_pages,
            n_seq,
            k_cache,
            v_cache,
            logits,
            next_token,
            readback,
            weight_bytes,
            kv_bytes,
            kv_type,
            xn: act.xn,
            times: StepTimes::default(),
            decode_below,
            profiler: None,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Context length of one sequence.
    pub fn n_ctx(&self) -> u32 {
        self.n_ctx
    }

    /// Most tokens one forward step takes.
    pub fn max_batch(&self) -> u32 {
        self.max_batch
    }

    /// Most output rows (logits) one step computes.
    pub fn max_logit_rows(&self) -> u32 {
        self.logit_rows
    }

    /// The most output rows a step may ask `output` of: hidden rows fit wherever the batch's
    /// rows do, logit rows only as many as the logits buffer holds.
    pub fn max_out_rows(&self, output: StepOutput) -> u32 {
        match output {
            StepOutput::Hidden => self.max_batch,
            _ => self.logit_rows,
        }
    }

    /// The most tokens of one sequence a step runs with the logits of one-token steps: longer
    /// runs take the prefill attention, which sums in another order. Drafted steps stay within.
    pub fn max_exact_run(&self) -> u32 {
        VECTOR_MAX_TOKENS - 1
    }

    /// The most tokens a step of one-token and drafted runs may hold and still take the decode
    /// layers: past it the prefill products take over, which round differently on GPUs.
    pub fn max_exact_step(&self) -> u32 {
        self.decode_below.saturating_sub(1).max(1)
    }

    /// Pages in the KV pool.
    pub fn n_pages(&self) -> u32 {
        self.n_pages
    }

    /// Positions per KV page.
    pub fn page_size(&self) -> u32 {
        self.step.layout().page_size
    }

    /// Sequence slots (rows of the block table).
    pub fn n_seq(&self) -> u32 {
        self.n_seq
    }

    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    pub fn kv_bytes(&self) -> u64 {
        self.kv_bytes
    }

    /// How the KV cache holds its elements.
    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// The time steps took since the last call, and a fresh count.
    pub fn take_step_times(&mut self) -> StepTimes {
        std::mem::take(&mut self.times)
    }

    /// Times every dispatch of the following steps on the GPU (each in its own pass, which
    /// makes steps a little slower) until turned off. Returns whether the device can: it needs
    /// timestamp queries.
    pub fn set_profiling(&mut self, on: bool) -> bool {
        if !on {
            self.profiler = None;
            return true;
        }
        if self.profiler.is_none() {
            self.profiler = Profiler::new(&self.ctx);
        }
        self.profiler.is_some()
    }

    /// GPU time per kernel and grid over the profiled steps since the last call.
    pub fn take_profile(&mut self) -> Vec<KernelTime> {
        self.profiler
            .as_mut()
            .map(Profiler::take)
            .unwrap_or_default()
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        if let Some(&token) = tokens.iter().find(|&&t| t >= self.cfg.n_vocab) {
            return Err(ModelError::TokenOutOfRange {
                token,
                n_vocab: self.cfg.n_vocab,
            }
            .into());
        }
        Ok(())
    }

    /// Runs one step of one or more sequences: `copies` first (copy-on-write of shared pages),
    /// then every token of `input` at its position in its sequence, then `output` for the
    /// step's output rows.
    pub async fn step(
        &mut self,
        input: &StepInput<'_>,
        copies: &[PageCopy],
        output: StepOutput,
    ) -> Result<Forward> {
        let start = Instant::now();
        self.check_tokens(input.tokens)?;
        let max_out = self.max_out_rows(output);
        if input.out_rows.len() > max_out as usize {
            return Err(ModelError::BadRequest(format!(
                "{} output rows in one step; at most {max_out}",
                input.out_rows.len(),
            ))
            .into());
        }
        if let Some(c) = copies
            .iter()
            .find(|c| c.src >= self.n_pages || c.dst >= self.n_pages)
        {
            return Err(ModelError::BadRequest(format!(
                "page copy {} -> {} outside the pool of {} pages",
                c.src, c.dst, self.n_pages
            ))
            .into());
        }
        let shape = self.step.write(&self.ctx, input)?;
        self.run(start, shape, copies, output).await
    }

    /// Encodes and submits a step whose buffer is written, and waits for its `output`. The
    /// step's host work began at `start`.
    async fn run(
        &mut self,
        start: Instant,
        shape: StepShape,
        copies: &[PageCopy],
        output: StepOutput,
    ) -> Result<Forward> {
        let result = self.encode_and_wait(start, shape, copies, output).await;
        self.times.steps += 1;
        self.times.total += start.elapsed();
        result
    }

    async fn encode_and_wait(
        &mut self,
        start: Instant,
        shape: StepShape,
        copies: &[PageCopy],
        output: StepOutput,
    ) -> Result<Forward> {
        let output = if shape.n_out == 0 {
            StepOutput::Nothing
        } else {
            output
        };
        let layers = if shape.n_tokens < self.decode_below {
            &self.decode
        } else {
            &self.prefill
        };
        let tail: &[Dispatch] = match output {
            StepOutput::Nothing => &[],
            // The tail's first dispatch is the final norm of the output rows.
            StepOutput::Hidden => &self.tail_vector[..1],
            _ if shape.n_out < VECTOR_MAX_TOKENS => &self.tail_vector,
            _ => &self.tail_tiled,
        };
        let argmax: &[Dispatch] = match output {
            StepOutput::Argmax => std::slice::from_ref(&self.tail_argmax),
            _ => &[],
        };
        let mut encoder =
            self.ctx
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("forward"),
                });
        for c in copies {
            let (src, dst) = (
                u64::from(c.src) * self.page_bytes,
                u64::from(c.dst) * self.page_bytes,
            );
            for pool in self.k_cache.iter().chain(&self.v_cache) {
                encoder.copy_buffer_to_buffer(pool, src, &self.page_scratch, 0, self.page_bytes);
                encoder.copy_buffer_to_buffer(&self.page_scratch, 0, pool, dst, self.page_bytes);
            }
        }
        let dispatches = layers
            .iter()
            .flat_map(|s| &s.dispatches)
            .chain(tail)
            .chain(argmax);
        let mut encoder = match self.profiler.as_mut() {
            Some(p) => {
                p.encode(&self.ctx, &mut encoder, dispatches, shape);
                encoder
            }
            None => submit_in_parts(&self.ctx, encoder, dispatches, shape),
        };
        let n_out = u64::from(shape.n_out);
        let vocab = u64::from(self.cfg.n_vocab);
        match output {
            StepOutput::Nothing => {}
            StepOutput::Argmax => {
                self.readback
                    .copy_from(&mut encoder, &self.next_token, 0, 4 * n_out)?
            }
            StepOutput::Logits => {
                self.readback
                    .copy_from(&mut encoder, &self.logits, 0, 4 * n_out * vocab)?
            }
            StepOutput::Hidden => self.readback.copy_from(
                &mut encoder,
                &self.xn,
                0,
                4 * n_out * u64::from(self.cfg.n_embd),
            )?,
        }
        self.ctx.queue().submit([encoder.finish()]);
        self.times.host += start.elapsed();
        let forward = self.wait_output(output, n_out).await?;
        if let Some(p) = self.profiler.as_mut() {
            p.collect(&self.ctx).await?;
        }
        Ok(forward)
    }

    async fn wait_output(&self, output: StepOutput, n_out: u64) -> Result<Forward> {
        let vocab = u64::from(self.cfg.n_vocab);
        Ok(match output {
            StepOutput::Nothing => {
                self.ctx.check()?;
                Forward::Nothing
            }
            StepOutput::Argmax => {
                let ids = self.readback.read_u32(&self.ctx, n_out as usize).await?;
                if ids.iter().any(|&id| id >= self.cfg.n_vocab) {
                    return Err(
                        ModelError::Invalid("the logits hold no finite value".into()).into(),
                    );
                }
                Forward::Tokens(ids)
            }
            StepOutput::Logits => Forward::Logits(
                self.readback
                    .read_f32(&self.ctx, (n_out * vocab) as usize)
                    .await?,
            ),
            StepOutput::Hidden => Forward::Hidden(
                self.readback
                    .read_f32(&self.ctx, (n_out * u64::from(self.cfg.n_embd)) as usize)
                    .await?,
            ),
        })
    }

    /// The single-sequence layout: slot 0, pages 0, 1, 2, ... Checks a step of `tokens` at
    /// `pos0..` and returns its output rows.
    fn single_rows(&self, tokens: &[u32], pos0: u32, output: Output) -> Result<Vec<u32>> {
        let n = tokens.len() as u64;
        let max = if matches!(output, Output::AllLogits | Output::AllArgmax) {
            self.logit_rows
        } else {
            self.max_batch
        };
        if n == 0 || n > u64::from(max) {
            return Err(
                ModelError::BadRequest(format!("a step takes 1..={max} tokens, got {n}")).into(),
            );
        }
        let end = u64::from(pos0) + n;
        if end > u64::from(self.n_ctx) {
            return Err(ModelError::ContextFull {
                pos0,
                end,
                n_ctx: self.n_ctx,
            }
            .into());
        }
        self.check_tokens(tokens)?;
        let n = n as u32;
        Ok(match output {
            Output::Nothing => Vec::new(),
            Output::Argmax | Output::LastLogits => vec![n - 1],
            Output::AllLogits | Output::AllArgmax | Output::AllHidden => (0..n).collect(),
        })
    }

    /// Runs `tokens` of the single sequence (slot 0) at positions `pos0..`, storing their K/V,
    /// and returns what `output` asks for. Positions past `pos0 + tokens.len()` keep stale K/V
    /// that later steps overwrite, so rewinding is just passing an earlier `pos0`.
    pub async fn forward(&mut self, tokens: &[u32], pos0: u32, output: Output) -> Result<Forward> {
        let start = Instant::now();
        let out_rows = self.single_rows(tokens, pos0, output)?;
        let shape = self.step.write_single(&self.ctx, pos0, tokens, &out_rows)?;
        let step_output = match output {
            Output::Nothing => StepOutput::Nothing,
            Output::Argmax | Output::AllArgmax => StepOutput::Argmax,
            Output::LastLogits | Output::AllLogits => StepOutput::Logits,
            Output::AllHidden => StepOutput::Hidden,
        };
        Ok(match self.run(start, shape, &[], step_output).await? {
            Forward::Tokens(ids) if output == Output::Argmax => {
                Forward::Token(ids.first().copied().unwrap_or(0))
            }
            other => other,
        })
    }

    /// Runs `tokens` like [`forward`](Self::forward) with every logit row, stage by stage, and
    /// returns the named activations (as in the reference layer dump) followed by `logits`.
    pub async fn forward_traced(
        &mut self,
        tokens: &[u32],
        pos0: u32,
    ) -> Result<Vec<(String, Vec<f32>)>> {
        let out_rows = self.single_rows(tokens, pos0, Output::AllLogits)?;
        let shape = self.step.write_single(&self.ctx, pos0, tokens, &out_rows)?;
        let n = shape.n_tokens;
        let layers = if n < self.decode_below {
            &self.decode
        } else {
            &self.prefill
        };
        let tail = if n < VECTOR_MAX_TOKENS {
            &self.tail_vector
        } else {
            &self.tail_tiled
        };
        let final_norm = TracePoint {
            name: "output_norm".into(),
            buffer: self.xn.clone(),
            row_len: self.cfg.n_embd,
            rows_at_pos: false,
            kv_type: KvType::F32,
            row_stride: self.cfg.n_embd,
        };
        let mut out = Vec::new();
        let stages = layers
            .iter()
            .map(|s| (&s.dispatches[..], &s.traces[..]))
            .chain([(&tail[..], std::slice::from_ref(&final_norm))]);
        for (dispatches, traces) in stages {
            let mut encoder = self
                .ctx
                .device()
                .create_command_encoder(&Default::default());
            encode_all(&self.ctx, &mut encoder, dispatches, shape);
            let mut copies = Vec::new();
            for tp in traces {
                let row_bytes = tp.kv_type.row_bytes(tp.row_stride);
                let offset = if tp.rows_at_pos {
                    u64::from(pos0) * row_bytes
                } else {
                    0
                };
                let bytes = u64::from(n) * row_bytes;
                // Copies move whole words; an f16 row of odd length ends mid-word.
                let copy = bytes.next_multiple_of(4);
                let rb = ReadbackBuffer::new(&self.ctx, "trace", copy).await?;
                rb.copy_from(&mut encoder, &tp.buffer, offset, copy)?;
                copies.push((tp, rb, bytes, copy));
            }
            self.ctx.queue().submit([encoder.finish()]);
            for (tp, rb, bytes, copy) in copies {
                let raw = rb.read(&self.ctx, copy).await?;
                out.push((tp.name.clone(), trace_values(tp, &raw, bytes)));
            }
        }
        let bytes = u64::from(n) * u64::from(self.cfg.n_vocab) * 4;
        let mut encoder = self
            .ctx
            .device()
            .create_command_encoder(&Default::default());
        self.readback
            .copy_from(&mut encoder, &self.logits, 0, bytes)?;
        self.ctx.queue().submit([encoder.finish()]);
        out.push((
            "logits".into(),
            self.readback
                .read_f32(&self.ctx, (bytes / 4) as usize)
                .await?,
        ));
        Ok(out)
    }
}

/// Builds the dispatch lists once, at load time.
struct PlanBuilder<'a> {
    ctx: &'a GpuContext,
    cfg: &'a LlamaConfig,
    step: &'a wgpu::Buffer,
    act: &'a Activations,
    weights: &'a Weights,
    k_cache: &'a [wgpu::Buffer],
    v_cache: &'a [wgpu::Buffer],
    kv_type: KvType,
    /// Positions of one sequence.
    n_ctx: u32,
    /// Rows of each layer's K/V page pool.
    pool_rows: u32,
    max_batch: u32,
}

impl PlanBuilder<'_> {
    /// The kernels of a product in the decode (`vector`) or prefill layers, each with the steps
    /// it serves where there are two.
    async fn matmul_kernels(
        &self,
        vector: bool,
        dtype: DType,
    ) -> Result<Vec<MatmulChoice>, KernelError> {
        if !vector {
            return Ok(vec![(Matmul::tiled(self.ctx, dtype).await?, None)]);
        }
        let single = Matmul::vector(self.ctx, dtype).await?;
        let batch = Matmul::vector_batch(self.ctx, dtype).await?;
        Ok(decode_choices(single, batch))
    }

    /// The gated kernels (`Matmul::gated`) for the joined gate and up projections `ws`, each
    /// with the steps it serves, where they cover every step of the layers (`vector`: decode):
    /// when gate and up share a type and fit one buffer, on GPUs with subgroups (decode) and on
    /// CPU adapters (the rowwise products, every step). Else `None`, and two products and
    /// `SiluMul` do the same.
    async fn gated_kernels<'w>(
        &self,
        vector: bool,
        ws: &'w [WeightTensor],
    ) -> Result<Option<(Vec<MatmulChoice>, &'w WeightTensor)>, KernelError> {
        let [w] = ws else {
            return Ok(None);
        };
        if w.chunks.len() != 1 {
            return Ok(None);
        }
        if !vector {
            let tiled = Matmul::gated(self.ctx, MatmulKernel::Tiled, w.dtype).await?;
            return Ok(tiled.map(|k| (vec![(k, None)], w)));
        }
        let single = Matmul::gated(self.ctx, MatmulKernel::Vector, w.dtype).await?;
        let batch = Matmul::gated(self.ctx, MatmulKernel::VectorBatch, w.dtype).await?;
        // Where the adapter has a batched product but no gated one, the gated per-token kernel
        // cannot serve every step.
        Ok(match (single, batch) {
            (Some(single), batch) if batch.is_some() || !Matmul::has_batch(self.ctx.features()) => {
                Some((decode_choices(single, batch), w))
            }
            _ => None,
        })
    }

    /// Binds each of `kernels` (see `matmul_kernels`) for the steps it serves.
    fn bind_kernels(
        &self,
        kernels: Vec<MatmulChoice>,
        w: &WeightTensor,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        layout: MatmulLayout,
    ) -> Result<Vec<Dispatch>, KernelError> {
        let mut out = Vec::new();
        for (kernel, when) in kernels {
            for d in kernel.bind_with_scratch(
                self.ctx,
                self.step,
                w,
                x,
                y,
                layout,
                Some(&self.act.xq),
            )? {
                out.push(match when {
                    Some(when) => d.only_when(when),
                    None => d,
                });
            }
        }
        Ok(out)
    }

    /// Joined projections of `x` (see `upload_joined`) into side-by-side columns of `y`.
    async fn matmul_joined(
        &self,
        vector: bool,
        ws: &[WeightTensor],
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        y_width: u32,
    ) -> Result<Vec<Dispatch>, KernelError> {
        let mut dispatches = Vec::new();
        let mut col0 = 0;
        for w in ws {
            dispatches.extend(self.matmul(vector, w, x, y, y_width, col0, false).await?);
            col0 += w.n_rows;
        }
        Ok(dispatches)
    }

    /// `y = x w^T` into columns `y_col0..` of `y`'s rows of `y_width` (activation buffers of
    /// max_batch rows), or `y += x w^T` (a residual add folded in).
    #[allow(clippy::too_many_arguments)]
    async fn matmul(
        &self,
        vector: bool,
        w: &WeightTensor,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        y_width: u32,
        y_col0: u32,
        accumulate: bool,
    ) -> Result<Vec<Dispatch>, KernelError> {
        let kernels = self.matmul_kernels(vector, w.dtype).await?;
        self.bind_kernels(
            kernels,
            w,
            x,
            y,
            MatmulLayout {
                y_col0,
                accumulate,
                ..MatmulLayout::rows(w.row_len, y_width, self.max_batch)
            },
        )
    }

    /// An f32 activation of the step's rows, to read back in traced runs.
    fn trace(&self, name: String, buffer: &wgpu::Buffer, row_len: u32) -> TracePoint {
        self.trace_columns(name, buffer, row_len, row_len)
    }

    /// The first `row_len` columns of rows of `row_stride`.
    fn trace_columns(
        &self,
        name: String,
        buffer: &wgpu::Buffer,
        row_len: u32,
        row_stride: u32,
    ) -> TracePoint {
        TracePoint {
            name,
            buffer: buffer.clone(),
            row_len,
            rows_at_pos: false,
            kv_type: KvType::F32,
            row_stride,
        }
    }

    async fn layers(&self, vector: bool) -> Result<Vec<Stage>> {
        let c = self.cfg;
        let a = self.act;
        let (ctx, step, mb) = (self.ctx, self.step, self.max_batch);
        let rms = RmsNorm::new(ctx).await?;
        let attention = Attention::new(ctx, self.kv_type, c.head_dim).await?;
        let attention_split = if vector && self.act.attn_partials.is_some() {
            Some(Attention::split(ctx, self.kv_type).await?)
        } else {
            None
        };
        let attention_tiled = if vector || !Attention::tiled_runs(ctx, c.head_dim, self.n_ctx) {
            None
        } else {
            Some(Attention::tiled(ctx, self.kv_type).await?)
        };
        let kv_store = KvStore::new(ctx, self.kv_type).await?;
        let silu_mul = SiluMul::new(ctx).await?;
        let embed = Embed::new(ctx, self.weights.token_embd.dtype).await?;

        let mut stages = vec![Stage {
            dispatches: embed.bind(ctx, step, &self.weights.token_embd, &a.x, mb)?,
            traces: vec![self.trace("embd".into(), &a.x, c.n_embd)],
        }];
        let kv_params = KvStoreParams {
            n_head_kv: c.n_head_kv,
            head_dim: c.head_dim,
            n_rot: c.rope.n_rot as u32,
            neox: u32::from(c.rope.neox),
            freq_base: c.rope.freq_base,
            freq_scale: c.rope.freq_scale,
            kv_stride: c.n_embd_kv(),
            src_stride: c.n_embd_qkv(),
            k_col0: c.n_embd_q(),
            v_col0: c.n_embd_q() + c.n_embd_kv(),
            n_head: c.n_head,
            ..Default::default()
        };
        for (i, l) in self.weights.layers.iter().enumerate() {
            let (kc, vc) = (&self.k_cache[i], &self.v_cache[i]);
            stages.push(Stage {
                dispatches: vec![rms.bind(
                    ctx,
                    step,
                    &a.x,
                    &l.attn_norm,
                    &a.xn,
                    c.n_embd,
                    c.norm_eps,
                    false,
                    mb,
                )?],
                traces: vec![self.trace(format!("blk.{i}.attn_norm"), &a.xn, c.n_embd)],
            });
            stages.push(Stage {
                dispatches: self
                    .matmul_joined(vector, &l.attn_qkv, &a.xn, &a.qkv, c.n_embd_qkv())
                    .await?,
                traces: Vec::new(),
            });
            // One dispatch rotates Q in place and K on its way into the cache.
            stages.push(Stage {
                dispatches: vec![kv_store.bind(
                    ctx,
                    step,
                    &a.qkv,
                    kc,
                    vc,
                    kv_params,
                    mb,
                    self.pool_rows,
                )?],
                traces: vec![
                    self.trace_columns(
                        format!("blk.{i}.q_rope"),
                        &a.qkv,
                        c.n_embd_q(),
                        c.n_embd_qkv(),
                    ),
                    TracePoint {
                        name: format!("blk.{i}.k_rope"),
                        buffer: kc.clone(),
                        row_len: c.n_embd_kv(),
                        rows_at_pos: true,
                        kv_type: self.kv_type,
                        row_stride: c.n_embd_kv(),
                    },
                ],
            });
            let attn_params = attention_params(c);
            let bind = |kernel: &Attention| {
                kernel.bind(
                    ctx,
                    step,
                    &a.qkv,
                    kc,
                    vc,
                    &a.attn,
                    attn_params,
                    mb,
                    self.pool_rows,
                )
            };
            let mut dispatches = Vec::new();
            if let (Some(split), Some(partials)) = (&attention_split, &a.attn_partials) {
                // Flash-decoding for steps of under VECTOR_MAX_TOKENS tokens, for which the
                // partials are sized; longer decode-layer steps (batched decode) have a
                // workgroup per token and head to fill the GPU without splitting.
                for d in split.bind_path(
                    ctx,
                    step,
                    &a.qkv,
                    kc,
                    vc,
                    partials,
                    &a.attn,
                    attn_params,
                    mb.min(VECTOR_MAX_TOKENS - 1),
                    self.pool_rows,
                    self.n_ctx,
                )? {
                    dispatches.push(d.only_when(split_attention));
                }
                dispatches.push(bind(&attention)?.only_when(per_token_attention));
            } else if let Some(tiled) = &attention_tiled {
                // Prompts go to the tiled kernel; batched decode steps (a token per sequence)
                // to the per-token one.
                dispatches.push(bind(tiled)?.only_when(StepShape::long_runs));
                dispatches.push(bind(&attention)?.only_when(|s| !s.long_runs()));
            } else {
                dispatches.push(bind(&attention)?);
            }
            stages.push(Stage {
                dispatches,
                traces: vec![self.trace(
                    format!("blk.{i}.attn_out_before_proj"),
                    &a.attn,
                    c.n_embd_q(),
                )],
            });
            // The residual add is folded into the output projection: x += attn W^T.
            let d = self
                .matmul(vector, &l.attn_output, &a.attn, &a.x, c.n_embd, 0, true)
                .await?;
            stages.push(Stage {
                dispatches: d,
                traces: vec![self.trace(format!("blk.{i}.after_attn_residual"), &a.x, c.n_embd)],
            });
            let mut d = vec![rms.bind(
                ctx,
                step,
                &a.x,
                &l.ffn_norm,
                &a.xn,
                c.n_embd,
                c.norm_eps,
                false,
                mb,
            )?];
            match self.gated_kernels(vector, &l.ffn_gate_up).await? {
                Some((kernels, w)) => {
                    let layout = MatmulLayout::rows(w.row_len, c.n_ff, mb);
                    d.extend(self.bind_kernels(kernels, w, &a.xn, &a.ffn, layout)?);
                }
                None => {
                    d.extend(
                        self.matmul_joined(vector, &l.ffn_gate_up, &a.xn, &a.gate_up, 2 * c.n_ff)
                            .await?,
                    );
                    d.push(silu_mul.bind(ctx, step, &a.gate_up, &a.ffn, c.n_ff, mb)?);
                }
            }
            // x += ffn W_down^T: the second residual add, folded in too.
            d.extend(
                self.matmul(vector, &l.ffn_down, &a.ffn, &a.x, c.n_embd, 0, true)
                    .await?,
            );
            stages.push(Stage {
                dispatches: d,
                traces: vec![self.trace(format!("blk.{i}.out"), &a.x, c.n_embd)],
            });
        }
        Ok(stages)
    }

    /// Final norm and output projection: of the last row only (and its argmax), or of all rows.
    /// Final norm of the step's output rows and the output projection into `logits`, with the
    /// matrix-vector kernel (`vector`) or the tiled one.
    async fn tail(&self, vector: bool, logits: &wgpu::Buffer) -> Result<Vec<Dispatch>> {
        let c = self.cfg;
        let a = self.act;
        let output = self
            .weights
            .output
            .as_ref()
            .unwrap_or(&self.weights.token_embd);
        let logit_rows = (logits.size() / (u64::from(c.n_vocab) * 4)) as u32;
        let mut d = vec![RmsNorm::new(self.ctx).await?.bind(
            self.ctx,
            self.step,
            &a.x,
            &self.weights.output_norm,
            &a.xn,
            c.n_embd,
            c.norm_eps,
            true,
            self.max_batch,
        )?];
        // The output rows are the step's n_out, not its tokens: the per-token kernel serves
        // them alone (the tail's choice between kernels is by n_out).
        let kernel = if vector {
            Matmul::vector(self.ctx, output.dtype).await?
        } else {
            Matmul::tiled(self.ctx, output.dtype).await?
        };
        d.extend(kernel.bind_with_scratch(
            self.ctx,
            self.step,
            output,
            &a.xn,
            logits,
            MatmulLayout {
                x_stride: c.n_embd,
                y_stride: c.n_vocab,
                x_rows: logit_rows.min(self.max_batch),
                y_rows: logit_rows,
                y_col0: 0,
                out_rows: true,
                accumulate: false,
            },
            Some(&a.xq),
        )?);
        Ok(d)
    }
}

/// A trace point's rows as f32, from the bytes read back.
fn trace_values(tp: &TracePoint, raw: &[u8], bytes: u64) -> Vec<f32> {
    match tp.kv_type {
        KvType::F16 => raw
            .chunks_exact(2)
            .take((bytes / 2) as usize)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        KvType::F32 => {
            let rows: Vec<f32> = raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            rows.chunks(tp.row_stride as usize)
                .flat_map(|row| &row[..tp.row_len as usize])
                .copied()
                .collect()
        }
        KvType::Q8_0 => {
            let words: Vec<u32> = raw
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            crate::reference::kv_q8_decode(&words, tp.row_len)
        }
    }
}
