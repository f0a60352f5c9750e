//! RMSNorm with a learned scale: `shaders/rms_norm.wgsl`.

use super::{Dispatch, Grid, Kernel, KernelError, Variant, check_len, shape_error};
use crate::gpu::GpuContext;

crate::gpu_params! {
    pub struct RmsNormParams {
        pub n_embd: u32,
        pub eps: f32,
        pub gather: u32,
        pub _pad: u32,
    }
}

const WG_SIZE: u32 = 256;
/// On CPU adapters, where a workgroup runs on one core and each barrier switches between its
/// lanes: a decode step's 61 norms took 23 ms of SwiftShader's 337 ms step at 256 lanes and
/// 3 ms at 16 (lavapipe: 5.5 ms and 2.1 ms; benches/RESULTS.md).
const CPU_WG_SIZE: u32 = 16;

pub struct RmsNorm {
    kernel: Kernel,
}

impl RmsNorm {
    fn variant(cpu: bool) -> Variant {
        Variant::sized("rms_norm", if cpu { CPU_WG_SIZE } else { WG_SIZE })
    }

    pub fn variants() -> Vec<Variant> {
        vec![Self::variant(false), Self::variant(true)]
    }

    pub async fn new(ctx: &GpuContext) -> Result<Self, KernelError> {
        Ok(RmsNorm {
            kernel: Kernel::new(ctx, &Self::variant(ctx.features().cpu)).await?,
        })
    }

    /// `out = rms_norm(x) * weight` over rows of `n_embd`; with `gather`, output row i holds the
    /// step's out row i (the rows whose logits the step computes).
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &self,
        ctx: &GpuContext,
        step: &wgpu::Buffer,
        x: &wgpu::Buffer,
        weight: &wgpu::Buffer,
        out: &wgpu::Buffer,
        n_embd: u32,
        eps: f32,
        gather: bool,
        max_tokens: u32,
    ) -> Result<Dispatch, KernelError> {
        if !n_embd.is_multiple_of(4) {
            return Err(shape_error(
                "rms_norm",
                format!("row length {n_embd} is not a multiple of 4"),
            ));
        }
        let rows = u64::from(max_tokens);
        check_len("rms_norm", "x", x, rows * u64::from(n_embd))?;
        check_len("rms_norm", "weight", weight, u64::from(n_embd))?;
        check_len("rms_norm", "out", out, rows * u64::from(n_embd))?;
        let params = RmsNormParams {
            n_embd,
            eps,
            gather: u32::from(gather),
            _pad: 0,
        };
        let grid = if gather {
            Grid::Outputs { x: 1, tile: 1 }
        } else {
            Grid::Tokens { x: 1, tile: 1 }
        };
        Ok(self.kernel.dispatch(
            ctx,
            &params,
            vec![
                step.as_entire_binding(),
                x.as_entire_binding(),
                weight.as_entire_binding(),
                out.as_entire_binding(),
            ],
            grid,
        ))
    }
}
