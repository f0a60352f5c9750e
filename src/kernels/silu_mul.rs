//! SwiGLU activation, `out = silu(gate) * up` from rows of `gate | up`: `shaders/silu_mul.wgsl`.

use super::{Dispatch, Grid, Kernel, KernelError, Variant, check_len};
use crate::gpu::GpuContext;

crate::gpu_params! {
    pub struct SiluMulParams {
        pub n: u32,
        pub _pad0: u32,
        pub _pad1: u32,
        pub _pad2: u32,
    }
}

const WG_SIZE: u32 = 256;

pub struct SiluMul {
    kernel: Kernel,
}

impl SiluMul {
    fn variant() -> Variant {
        Variant::sized("silu_mul", WG_SIZE)
    }

    pub fn variants() -> Vec<Variant> {
        vec![Self::variant()]
    }

    pub async fn new(ctx: &GpuContext) -> Result<Self, KernelError> {
        Ok(SiluMul {
            kernel: Kernel::new(ctx, &Self::variant()).await?,
        })
    }

    /// `out` (max_tokens, n) from `gate_up` (max_tokens, 2 n): each row's gate, then its up.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        step: &wgpu::Buffer,
        gate_up: &wgpu::Buffer,
        out: &wgpu::Buffer,
        n: u32,
        max_tokens: u32,
    ) -> Result<Dispatch, KernelError> {
        let len = u64::from(n) * u64::from(max_tokens);
        check_len("silu_mul", "gate_up", gate_up, 2 * len)?;
        check_len("silu_mul", "out", out, len)?;
        let params = SiluMulParams {
            n,
            ..Default::default()
        };
        Ok(self.kernel.dispatch(
            ctx,
            &params,
            vec![
                step.as_entire_binding(),
                gate_up.as_entire_binding(),
                out.as_entire_binding(),
            ],
            Grid::Tokens {
                x: n.div_ceil(WG_SIZE),
                tile: 1,
            },
        ))
    }
}
