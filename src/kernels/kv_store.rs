//! K and V of a step into the cache at their positions, K rotated on the way:
//! `shaders/kv_store.wgsl` (f32 cache) and `shaders/kv_store_f16.wgsl` (f16 cache, where the
//! adapter has shader-f16).

use super::{Dispatch, Grid, Kernel, KernelError, Variant, check_len, shape_error};
use crate::gpu::GpuContext;

crate::gpu_params! {
    pub struct KvStoreParams {
        pub n_head_kv: u32,
        pub head_dim: u32,
        pub n_rot: u32,
        pub neox: u32,
        pub freq_base: f32,
        pub freq_scale: f32,
        pub kv_stride: u32,
        pub _pad: u32,
    }
}

const WG_SIZE: u32 = 64;

pub struct KvStore {
    kernel: Kernel,
    f16: bool,
}

impl KvStore {
    fn variant(f16: bool) -> Variant {
        Variant::sized(if f16 { "kv_store_f16" } else { "kv_store" }, WG_SIZE)
    }

    pub fn variants() -> Vec<Variant> {
        [false, true].into_iter().map(Self::variant).collect()
    }

    /// `f16`: the cache holds f16 (the adapter must have shader-f16).
    pub async fn new(ctx: &GpuContext, f16: bool) -> Result<Self, KernelError> {
        if f16 && !ctx.features().shader_f16 {
            return Err(shape_error("kv_store", "an f16 cache needs shader-f16"));
        }
        Ok(KvStore {
            kernel: Kernel::new(ctx, &Self::variant(f16)).await?,
            f16,
        })
    }

    /// Bytes per cache element.
    pub fn element_bytes(&self) -> u64 {
        if self.f16 { 2 } else { 4 }
    }

    /// Rotates `k_new` and copies it and `v_new` (max_tokens, kv_stride) into rows pos0.. of the
    /// caches (pool_rows, kv_stride): each token at its slot's page for its position.
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &self,
        ctx: &GpuContext,
        step: &wgpu::Buffer,
        k_new: &wgpu::Buffer,
        v_new: &wgpu::Buffer,
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
        let rows = u64::from(max_tokens) * u64::from(params.kv_stride);
        check_len(op, "k_new", k_new, rows)?;
        check_len(op, "v_new", v_new, rows)?;
        let cache_bytes = u64::from(pool_rows) * u64::from(params.kv_stride) * self.element_bytes();
        for (what, b) in [("k_cache", k_cache), ("v_cache", v_cache)] {
            if b.size() < cache_bytes {
                return Err(shape_error(
                    op,
                    format!("{what} holds {} bytes, {cache_bytes} needed", b.size()),
                ));
            }
        }
        let pairs = params.n_head_kv * params.head_dim / 2;
        Ok(self.kernel.dispatch(
            ctx,
            &params,
            vec![
                step.as_entire_binding(),
                k_new.as_entire_binding(),
                v_new.as_entire_binding(),
                k_cache.as_entire_binding(),
                v_cache.as_entire_binding(),
            ],
            Grid::Tokens {
                x: pairs.div_ceil(WG_SIZE),
                tile: 1,
            },
        ))
    }
}
