//! Rotary position embedding, normal and NeoX pairing: `shaders/rope.wgsl`.

use super::{Dispatch, Grid, Kernel, KernelError, Variant, check_len, shape_error};
use crate::gpu::GpuContext;

crate::gpu_params! {
    pub struct RopeParams {
        pub n_head: u32,
        pub head_dim: u32,
        pub n_rot: u32,
        pub neox: u32,
        pub freq_base: f32,
        pub freq_scale: f32,
        pub row_stride: u32,
        pub _pad: u32,
    }
}

const WG_SIZE: u32 = 64;

pub struct Rope {
    kernel: Kernel,
}

impl Rope {
    fn variant() -> Variant {
        Variant::sized("rope", WG_SIZE)
    }

    pub fn variants() -> Vec<Variant> {
        vec![Self::variant()]
    }

    pub async fn new(ctx: &GpuContext) -> Result<Self, KernelError> {
        Ok(Rope {
            kernel: Kernel::new(ctx, &Self::variant()).await?,
        })
    }

    /// Rotates `x` (rows, row_stride) in place: row t at position pos0 + t.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        step: &wgpu::Buffer,
        x: &wgpu::Buffer,
        params: RopeParams,
        rows: u32,
    ) -> Result<Dispatch, KernelError> {
        if !params.n_rot.is_multiple_of(2) || params.n_rot > params.head_dim || params.n_rot == 0 {
            return Err(shape_error(
                "rope",
                format!(
                    "n_rot {} must be even and in 2..={}",
                    params.n_rot, params.head_dim
                ),
            ));
        }
        if params.n_head * params.head_dim > params.row_stride {
            return Err(shape_error("rope", "heads do not fit in a row"));
        }
        check_len(
            "rope",
            "x",
            x,
            u64::from(rows) * u64::from(params.row_stride),
        )?;
        let pairs = params.n_head * params.n_rot / 2;
        Ok(self.kernel.dispatch(
            ctx,
            &params,
            vec![step.as_entire_binding(), x.as_entire_binding()],
            Grid::Tokens {
                x: pairs.div_ceil(WG_SIZE),
                tile: 1,
            },
        ))
    }
}
