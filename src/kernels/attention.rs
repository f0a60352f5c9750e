//! Causal attention over the KV cache with grouped K/V heads: `shaders/attention.wgsl` (f32
//! cache), `shaders/attention_f16.wgsl` (f16 cache, where the adapter has shader-f16) and
//! `shaders/attention_q8.wgsl` (Q8_0 cache), one workgroup per query head and token, for decode;
//! and `shaders/attention_tiled*.wgsl` for prefill, one workgroup per K/V head and block of
//! tokens, which reads each K/V row once per block. Decode at long contexts on GPUs splits each
//! token's keys across workgroups (flash-decoding, [`Attention::split`]) and joins the partial
//! results in `shaders/attention_merge.wgsl`.

use super::kv_store::{KvType, check_kv_shape, check_kv_type};
use super::{Dispatch, Grid, Kernel, KernelError, Variant, check_len, shape_error};
use crate::gpu::GpuContext;

crate::gpu_params! {
    pub struct AttentionParams {
        pub n_head: u32,
        pub n_head_kv: u32,
        pub head_dim: u32,
        pub q_stride: u32,
        pub kv_stride: u32,
        pub scale: f32,
        pub out_stride: u32,
        pub _pad1: u32,
    }
}

crate::gpu_params! {
    pub struct AttentionMergeParams {
        pub n_head: u32,
        pub head_dim: u32,
        pub n_splits: u32,
        pub out_stride: u32,
    }
}

/// Keys per workgroup in flash-decoding (`SPLIT_KEYS` in the shader).
pub const SPLIT_KEYS: u32 = 64;

/// The attention kernels: decode (a workgroup per query head and token), flash-decoding (the
/// same with each token's keys split across workgroups, then a merge pass) and the tiled prefill
/// kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionPath {
    Decode,
    Split,
    Tiled,
}

impl AttentionPath {
    pub const ALL: [AttentionPath; 3] = [Self::Decode, Self::Split, Self::Tiled];
}

const WG_SIZE: u32 = 64;
/// The decode kernel's workgroups on CPU adapters: a quarter of head_dim (each invocation keeps
/// four output dimensions), at least 16. A workgroup runs on one core there and each of its
/// barriers switches between all its lanes: at 16 lanes SwiftShader's attention took 8 ms of a
/// decode step at a context of 64 against 30 ms at 64 lanes (benches/RESULTS.md).
fn cpu_decode_wg(head_dim: u32) -> u32 {
    (head_dim / 4).next_power_of_two().clamp(16, WG_SIZE)
}
/// Values of K (and of V) one tile of the tiled kernel holds (`TILE_VALUES` in the shader).
const TILED_TILE_VALUES: u32 = 1536;
/// Loop iterations after which Mesa's llvmpipe ends an invocation's loops (its
/// `LP_MAX_TGSI_LOOP_ITERATIONS`), with room to spare.
const LLVMPIPE_LOOP_LIMIT: u64 = 60_000;
/// The shader keeps four output dimensions per thread and the query head in workgroup memory.
pub const MAX_HEAD_DIM: u32 = 256;

pub struct Attention {
    kernel: Kernel,
    kv_type: KvType,
    tiled: bool,
    /// Workgroup size of the kernel (the shader's WG_SIZE).
    wg: u32,
    /// Flash-decoding: the merge pass, present when the kernel writes partials.
    merge: Option<Kernel>,
}

impl Attention {
    fn variant(kv_type: KvType, tiled: bool, wg: u32) -> Variant {
        let shader = match (kv_type, tiled) {
            (KvType::F32, false) => "attention",
            (KvType::F16, false) => "attention_f16",
            (KvType::Q8_0, false) => "attention_q8",
            (KvType::F32, true) => "attention_tiled",
            (KvType::F16, true) => "attention_tiled_f16",
            (KvType::Q8_0, true) => "attention_tiled_q8",
        };
        Variant::sized(shader, wg)
    }

    fn split_variant(kv_type: KvType) -> Variant {
        let mut v = Self::variant(kv_type, false, WG_SIZE);
        v.constants.push(("SPLIT_KEYS", f64::from(SPLIT_KEYS)));
        v
    }

    fn merge_variant() -> Variant {
        let mut v = Variant::sized("attention_merge", WG_SIZE);
        v.constants.push(("SPLIT_KEYS", f64::from(SPLIT_KEYS)));
        v
    }

    pub fn variants() -> Vec<Variant> {
        KvType::ALL
            .into_iter()
            .flat_map(|t| {
                [
                    Self::variant(t, false, WG_SIZE),
                    Self::variant(t, false, cpu_decode_wg(64)),
                    Self::variant(t, false, cpu_decode_wg(128)),
                    Self::variant(t, true, WG_SIZE),
                    Self::split_variant(t),
                ]
            })
            .chain([Self::merge_variant()])
            .collect()
    }

    /// The kernel of `path` for heads of `head_dim`.
    pub async fn of_path(
        ctx: &GpuContext,
        kv_type: KvType,
        path: AttentionPath,
        head_dim: u32,
    ) -> Result<Self, KernelError> {
        match path {
            AttentionPath::Decode => Self::new(ctx, kv_type, head_dim).await,
            AttentionPath::Split => Self::split(ctx, kv_type).await,
            AttentionPath::Tiled => Self::tiled(ctx, kv_type).await,
        }
    }

    /// Flash-decoding: the decode kernel with each token's keys split across workgroups of
    /// [`SPLIT_KEYS`] keys, and the pass that merges their partial results ([`Self::bind_path`]).
    pub async fn split(ctx: &GpuContext, kv_type: KvType) -> Result<Self, KernelError> {
        check_kv_type("attention", ctx, kv_type)?;
        Ok(Attention {
            kernel: Kernel::new(ctx, &Self::split_variant(kv_type)).await?,
            kv_type,
            tiled: false,
            wg: WG_SIZE,
            merge: Some(Kernel::new(ctx, &Self::merge_variant()).await?),
        })
    }

    /// Whether decode steps with a context of `n_ctx` gain from splitting their keys on `ctx`:
    /// on GPUs, where a few heads and tokens leave most compute units idle at long contexts,
    /// and not on CPU adapters, whose few cores the heads alone fill.
    pub fn split_pays(ctx: &GpuContext, n_ctx: u32) -> bool {
        !ctx.features().cpu && n_ctx > 2 * SPLIT_KEYS
    }

    /// Splits of a context of `n_ctx` positions.
    pub fn n_splits(n_ctx: u32) -> u32 {
        n_ctx.div_ceil(SPLIT_KEYS).max(1)
    }

    /// Elements of the partials buffer [`Self::bind_path`] needs for the split kernel.
    pub fn partials_len(params: &AttentionParams, max_tokens: u32, n_ctx: u32) -> u64 {
        u64::from(max_tokens)
            * u64::from(params.n_head)
            * u64::from(Self::n_splits(n_ctx))
            * u64::from(params.head_dim + 2)
    }

    /// Attention over a cache of `kv_type` (F16 needs shader-f16), for decode: one workgroup
    /// per query head and token, sized for heads of `head_dim` on CPU adapters.
    pub async fn new(
        ctx: &GpuContext,
        kv_type: KvType,
        head_dim: u32,
    ) -> Result<Self, KernelError> {
        let wg = if ctx.features().cpu {
            cpu_decode_wg(head_dim)
        } else {
            WG_SIZE
        };
        Self::build(ctx, kv_type, false, wg).await
    }

    /// The prefill kernel: one workgroup per K/V head and block of tokens, sharing each K/V
    /// tile among the block's queries and the head's group.
    pub async fn tiled(ctx: &GpuContext, kv_type: KvType) -> Result<Self, KernelError> {
        Self::build(ctx, kv_type, true, WG_SIZE).await
    }

    /// Loop iterations the tiled kernel's longest invocation runs for a query at position
    /// `n_ctx - 1` (an upper bound): per key, the unrolled loops over head_dim for its score and
    /// its value, and one step of each loop over the tile's keys; per tile, the rescaling and
    /// the tile load. Mesa's llvmpipe (lavapipe) stops an invocation's loops after 65535
    /// iterations in all, so there the tiled kernel is used only well below that ([`Self::tiled_runs`]).
    pub fn tiled_loop_iterations(head_dim: u32, n_ctx: u32) -> u64 {
        let chunks = u64::from(head_dim.div_ceil(32));
        let tile_keys = u64::from((TILED_TILE_VALUES / head_dim.max(1)).clamp(1, 32));
        let tiles = u64::from(n_ctx).div_ceil(tile_keys);
        let load = (tile_keys * u64::from(head_dim / 4)).div_ceil(u64::from(WG_SIZE));
        u64::from(n_ctx) * (2 * chunks + 2) + tiles * (8 * chunks + load + 4) + u64::from(head_dim)
    }

    /// Whether the tiled kernel can serve prompts of a model with heads of `head_dim` and a
    /// context of `n_ctx` on `ctx`: heads of whole 32s, and on a CPU adapter (lavapipe) only
    /// while its invocations stay under llvmpipe's loop limit.
    pub fn tiled_runs(ctx: &GpuContext, head_dim: u32, n_ctx: u32) -> bool {
        let on_cpu = ctx.adapter_info().device_type == wgpu::DeviceType::Cpu;
        head_dim.is_multiple_of(32)
            && (!on_cpu || Self::tiled_loop_iterations(head_dim, n_ctx) <= LLVMPIPE_LOOP_LIMIT)
    }

    async fn build(
        ctx: &GpuContext,
        kv_type: KvType,
        tiled: bool,
        wg: u32,
    ) -> Result<Self, KernelError> {
        check_kv_type("attention", ctx, kv_type)?;
        Ok(Attention {
            kernel: Kernel::new(ctx, &Self::variant(kv_type, tiled, wg)).await?,
            kv_type,
            tiled,
            wg,
            merge: None,
        })
    }

    /// `out[t, head] = softmax(q[t, head] . K[..=pos] * scale) V[..=pos]` over the positions of
    /// token t's own sequence, found through its block table in a pool of `pool_rows` rows.
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &self,
        ctx: &GpuContext,
        step: &wgpu::Buffer,
        q: &wgpu::Buffer,
        k_cache: &wgpu::Buffer,
        v_cache: &wgpu::Buffer,
        out: &wgpu::Buffer,
        params: AttentionParams,
        max_tokens: u32,
        pool_rows: u32,
    ) -> Result<Dispatch, KernelError> {
        if self.merge.is_some() {
            return Err(shape_error(
                "attention",
                "the split kernel binds through bind_path",
            ));
        }
        self.check(q, k_cache, v_cache, out, params, max_tokens, pool_rows)?;
        let grid = if self.tiled {
            // One invocation per (token, query head of the group).
            let group = params.n_head / params.n_head_kv;
            Grid::Tokens {
                x: params.n_head_kv,
                tile: WG_SIZE / group,
            }
        } else {
            Grid::Tokens {
                x: params.n_head,
                tile: 1,
            }
        };
        Ok(self.dispatch(ctx, step, q, k_cache, v_cache, out, params, grid))
    }

    /// The attention kernel's dispatch, writing into `target` (the output, or the split
    /// kernel's partials).
    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &self,
        ctx: &GpuContext,
        step: &wgpu::Buffer,
        q: &wgpu::Buffer,
        k_cache: &wgpu::Buffer,
        v_cache: &wgpu::Buffer,
        target: &wgpu::Buffer,
        params: AttentionParams,
        grid: Grid,
    ) -> Dispatch {
        self.kernel.dispatch(
            ctx,
            &params,
            vec![
                step.as_entire_binding(),
                q.as_entire_binding(),
                k_cache.as_entire_binding(),
                v_cache.as_entire_binding(),
                target.as_entire_binding(),
            ],
            grid,
        )
    }

    /// Binds any path for a context of `n_ctx` positions. The split kernel gives two
    /// dispatches: it writes each (token, head, split)'s partial into `partials` (at least
    /// [`Self::partials_len`] elements), and the merge pass writes `out`. The other kernels give
    /// [`Self::bind`]'s one dispatch (`partials` and `n_ctx` unused).
    #[allow(clippy::too_many_arguments)]
    pub fn bind_path(
        &self,
        ctx: &GpuContext,
        step: &wgpu::Buffer,
        q: &wgpu::Buffer,
        k_cache: &wgpu::Buffer,
        v_cache: &wgpu::Buffer,
        partials: &wgpu::Buffer,
        out: &wgpu::Buffer,
        params: AttentionParams,
        max_tokens: u32,
        pool_rows: u32,
        n_ctx: u32,
    ) -> Result<Vec<Dispatch>, KernelError> {
        let op = "attention";
        let Some(merge) = &self.merge else {
            return Ok(vec![self.bind(
                ctx, step, q, k_cache, v_cache, out, params, max_tokens, pool_rows,
            )?]);
        };
        self.check(q, k_cache, v_cache, out, params, max_tokens, pool_rows)?;
        check_len(
            op,
            "partials",
            partials,
            Self::partials_len(&params, max_tokens, n_ctx),
        )?;
        let n_splits = Self::n_splits(n_ctx);
        let workgroups = u64::from(params.n_head) * u64::from(n_splits);
        if workgroups > u64::from(ctx.limits().max_compute_workgroups_per_dimension) {
            return Err(shape_error(
                op,
                format!("{workgroups} workgroups per token in one dimension"),
            ));
        }
        let merge_params = AttentionMergeParams {
            n_head: params.n_head,
            head_dim: params.head_dim,
            n_splits,
            out_stride: params.out_stride,
        };
        Ok(vec![
            self.dispatch(
                ctx,
                step,
                q,
                k_cache,
                v_cache,
                partials,
                params,
                Grid::Tokens {
                    x: workgroups as u32,
                    tile: 1,
                },
            ),
            merge.dispatch(
                ctx,
                &merge_params,
                vec![
                    step.as_entire_binding(),
                    partials.as_entire_binding(),
                    out.as_entire_binding(),
                ],
                Grid::Tokens {
                    x: params.n_head,
                    tile: 1,
                },
            ),
        ])
    }

    /// The checks every binding of the kernel shares: heads, strides, q, out and the caches.
    #[allow(clippy::too_many_arguments)]
    fn check(
        &self,
        q: &wgpu::Buffer,
        k_cache: &wgpu::Buffer,
        v_cache: &wgpu::Buffer,
        out: &wgpu::Buffer,
        params: AttentionParams,
        max_tokens: u32,
        pool_rows: u32,
    ) -> Result<(), KernelError> {
        let op = "attention";
        if params.n_head_kv == 0 || !params.n_head.is_multiple_of(params.n_head_kv) {
            return Err(shape_error(
                op,
                format!(
                    "{} query heads cannot share {} K/V heads",
                    params.n_head, params.n_head_kv
                ),
            ));
        }
        let max_head_dim = MAX_HEAD_DIM.min(4 * self.wg);
        if params.head_dim == 0 || params.head_dim > max_head_dim {
            return Err(shape_error(
                op,
                format!(
                    "head_dim {} outside 1..={max_head_dim} (this kernel's workgroups of {})",
                    params.head_dim, self.wg
                ),
            ));
        }
        if params.q_stride < params.n_head * params.head_dim
            || params.out_stride < params.n_head * params.head_dim
            || params.kv_stride < params.n_head_kv * params.head_dim
        {
            return Err(shape_error(op, "heads do not fit in the row strides"));
        }
        check_kv_shape(op, self.kv_type, params.n_head_kv, params.head_dim)?;
        if self.kv_type == KvType::Q8_0 && !params.kv_stride.is_multiple_of(32) {
            return Err(shape_error(
                op,
                "a q8_0 cache row must be whole blocks of 32",
            ));
        }
        check_len(
            op,
            "q",
            q,
            u64::from(max_tokens) * u64::from(params.q_stride),
        )?;
        check_len(
            op,
            "out",
            out,
            u64::from(max_tokens) * u64::from(params.out_stride),
        )?;
        let cache_bytes = u64::from(pool_rows) * self.kv_type.row_bytes(params.kv_stride);
        for (what, b) in [("k_cache", k_cache), ("v_cache", v_cache)] {
            if b.size() < cache_bytes {
                return Err(shape_error(
                    op,
                    format!("{what} holds {} bytes, {cache_bytes} needed", b.size()),
                ));
            }
        }
        if self.tiled && !params.head_dim.is_multiple_of(32) {
            return Err(shape_error(
                op,
                format!(
                    "the tiled kernel needs head_dim a multiple of 32, not {}",
                    params.head_dim
                ),
            ));
        }
        if self.tiled && params.n_head / params.n_head_kv > WG_SIZE {
            return Err(shape_error(
                op,
                format!(
                    "{} query heads per K/V head, over {WG_SIZE}",
                    params.n_head / params.n_head_kv
                ),
            ));
        }
        Ok(())
    }
}
