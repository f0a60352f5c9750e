//! K and V of a step into the cache at their positions, K rotated on the way, and the step's Q
//! rotated in place by the same dispatch: `shaders/kv_store.wgsl` (f32 cache),
//! `shaders/kv_store_f16.wgsl` (f16 cache, where the adapter has shader-f16) and
//! `shaders/kv_store_q8.wgsl` (Q8_0 cache, on every adapter).

use std::fmt;
use std::str::FromStr;

use super::{Dispatch, Grid, Kernel, KernelError, Variant, check_len, shape_error};
use crate::gpu::GpuContext;

/// How the KV cache holds its elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvType {
    F32,
    /// Half the memory and attention reads of f32; needs shader-f16.
    F16,
    /// Signed bytes with one f16 scale per block of 32 (as GGUF's Q8_0): 34 bytes per 32
    /// elements, so about 1.9 times the context of an f16 cache in the same memory. Rows must be
    /// whole blocks, and so must each head.
    Q8_0,
}

impl KvType {
    pub const ALL: [KvType; 3] = [KvType::F32, KvType::F16, KvType::Q8_0];

    /// The name used on the command line and in stats (llama.cpp's `--cache-type` names).
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
        }
    }

    pub fn needs_shader_f16(self) -> bool {
        self == KvType::F16
    }

    /// Bytes of one cache row (one position of one layer's K or V) of `kv_stride` elements.
    pub fn row_bytes(self, kv_stride: u32) -> u64 {
        match self {
            KvType::F32 => 4 * u64::from(kv_stride),
            KvType::F16 => 2 * u64::from(kv_stride),
            KvType::Q8_0 => 4 * u64::from(q8_row_words(kv_stride)),
        }
    }

    /// Why rows of `n_head_kv` heads of `head_dim` cannot be held in this type, if they cannot.
    pub fn unfit(self, n_head_kv: u32, head_dim: u32) -> Option<String> {
        (self == KvType::Q8_0 && (head_dim == 0 || !head_dim.is_multiple_of(32))).then(|| {
            format!(
                "a q8_0 KV cache needs heads of a multiple of 32 elements; this model's {n_head_kv} K/V heads have {head_dim}"
            )
        })
    }
}

impl fmt::Display for KvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KvType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        KvType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown KV cache type {s:?} (expected f32, f16 or q8_0)"))
    }
}

/// u32 words of one Q8_0 cache row (`shaders/common/kv_q8.wgsl`): the packed bytes, then the
/// f16 scales two to a word.
pub fn q8_row_words(kv_stride: u32) -> u32 {
    kv_stride / 4 + (kv_stride / 32).div_ceil(2)
}

/// Checks that `ctx` can run a cache of `kv_type`.
pub(crate) fn check_kv_type(
    op: &'static str,
    ctx: &GpuContext,
    kv_type: KvType,
) -> Result<(), KernelError> {
    if kv_type.needs_shader_f16() && !ctx.features().shader_f16 {
        return Err(shape_error(op, "an f16 cache needs shader-f16"));
    }
    Ok(())
}

pub(crate) fn check_kv_shape(
    op: &'static str,
    kv_type: KvType,
    n_head_kv: u32,
    head_dim: u32,
) -> Result<(), KernelError> {
    match kv_type.unfit(n_head_kv, head_dim) {
        Some(why) => Err(shape_error(op, why)),
        None => Ok(()),
    }
}

crate::gpu_params! {
    pub struct KvStoreParams {
        pub n_head_kv: u32,
        pub head_dim: u32,
        pub n_rot: u32,
        pub neox: u32,
        pub freq_base: f32,
        pub freq_scale: f32,
        pub kv_stride: u32,
        /// Elements between rows of qkv (q | k | v, Q from column 0), and the first column of
        /// K and of V in them.
        pub src_stride: u32,
        pub k_col0: u32,
        pub v_col0: u32,
        /// Q heads (of head_dim) rotated in place; 0 leaves Q alone.
        pub n_head: u32,
        pub _pad1: u32,
        pub _pad2: u32,
    }
}

const WG_SIZE: u32 = 64;

pub struct KvStore {
    kernel: Kernel,
    kv_type: KvType,
}

impl KvStore {
    fn variant(kv_type: KvType) -> Variant {
        let shader = match kv_type {
            KvType::F32 => "kv_store",
            KvType::F16 => "kv_store_f16",
            KvType::Q8_0 => "kv_store_q8",
        };
        Variant::sized(shader, WG_SIZE)
    }

    pub fn variants() -> Vec<Variant> {
        KvType::ALL.into_iter().map(Self::variant).collect()
    }

    /// A store into a cache of `kv_type` (F16 needs shader-f16).
    pub async fn new(ctx: &GpuContext, kv_type: KvType) -> Result<Self, KernelError> {
        check_kv_type("kv_store", ctx, kv_type)?;
        Ok(KvStore {
            kernel: Kernel::new(ctx, &Self::variant(kv_type)).await?,
            kv_type,
        })
    }

    /// Rotates the K of `qkv` and copies it and its V (max_tokens rows of src_stride, K and V
    /// kv_stride long from k_col0 and v_col0) into rows pos0.. of the caches (pool_rows,
    /// kv_stride), each token at its slot's page for its position; rotates the n_head Q heads at
    /// the start of each row in place.
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &self,
        ctx: &GpuContext,
        step: &wgpu::Buffer,
        qkv: &wgpu::Buffer,
        k_cache: &wgpu::Buffer,
        v_cache: &wgpu::Buffer,
        params: KvStoreParams,
        max_tokens: u32,
        pool_rows: u32,
    ) -> Result<Dispatch, KernelError> {
        let op = "kv_store";
        if !params.head_dim.is_multiple_of(2)
            || !params.n_rot.is_multiple_of(2)
            || params.n_rot == 0
            || params.n_rot > params.head_dim
        {
            return Err(shape_error(
                op,
                format!(
                    "n_rot {} and head_dim {} must be even, n_rot in 2..=head_dim",
                    params.n_rot, params.head_dim
                ),
            ));
        }
        if params.kv_stride != params.n_head_kv * params.head_dim {
            return Err(shape_error(op, "kv_stride must be n_head_kv * head_dim"));
        }
        check_kv_shape(op, self.kv_type, params.n_head_kv, params.head_dim)?;
        for (what, col0) in [("k_col0", params.k_col0), ("v_col0", params.v_col0)] {
            if u64::from(col0) + u64::from(params.kv_stride) > u64::from(params.src_stride) {
                return Err(shape_error(
                    op,
                    format!(
                        "{what} {col0} + kv_stride {} overflows source rows of {}",
                        params.kv_stride, params.src_stride
                    ),
                ));
            }
        }
        // Q is rotated in place while K and V are read: its columns must be neither.
        let q_width = u64::from(params.n_head) * u64::from(params.head_dim);
        if q_width > u64::from(params.k_col0.min(params.v_col0)) {
            return Err(shape_error(
                op,
                format!(
                    "{} Q heads of {} overlap K (from column {}) or V (from {})",
                    params.n_head, params.head_dim, params.k_col0, params.v_col0
                ),
            ));
        }
        check_len(
            op,
            "qkv",
            qkv,
            u64::from(max_tokens) * u64::from(params.src_stride),
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
        // Invocations: pairs of elements, or pairs of Q8_0 blocks; then Q's rotated pairs.
        let stores = if self.kv_type == KvType::Q8_0 {
            (params.kv_stride / 32).div_ceil(2)
        } else {
            params.kv_stride / 2
        };
        let q_pairs = params.n_head * (params.n_rot / 2);
        let workgroups = (stores + q_pairs).div_ceil(WG_SIZE);
        // The shaders index by x alone: a grid that spills into z would run invocations twice,
        // and rotate Q twice.
        if workgroups > ctx.limits().max_compute_workgroups_per_dimension {
            return Err(shape_error(
                op,
                format!("{workgroups} workgroups a token: more than one grid row holds"),
            ));
        }
        Ok(self.kernel.dispatch(
            ctx,
            &params,
            vec![
                step.as_entire_binding(),
                qkv.as_entire_binding(),
                k_cache.as_entire_binding(),
                v_cache.as_entire_binding(),
            ],
            Grid::Tokens {
                x: workgroups,
                tile: 1,
            },
        ))
    }
}
