//! Row-wise argmax (greedy sampling on the GPU): `shaders/argmax.wgsl`.

use super::{Dispatch, Grid, Kernel, KernelError, Variant, check_len};
use crate::gpu::GpuContext;

crate::gpu_params! {
    pub struct ArgmaxParams {
        pub n: u32,
        pub _pad: u32,
        pub _pad0: u32,
        pub _pad1: u32,
    }
}

const WG_SIZE: u32 = 256;

pub struct Argmax {
    kernel: Kernel,
}

impl Argmax {
    fn variant() -> Variant {
        Variant::sized("argmax", WG_SIZE)
    }

    pub fn variants() -> Vec<Variant> {
        vec![Self::variant()]
    }

    pub async fn new(ctx: &GpuContext) -> Result<Self, KernelError> {
        Ok(Argmax {
            kernel: Kernel::new(ctx, &Self::variant()).await?,
        })
    }

    /// `out[r] = argmax(x[r, ..n])` for the step's n_out rows; `max_rows` is what the buffers
    /// hold.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        step: &wgpu::Buffer,
        x: &wgpu::Buffer,
        out: &wgpu::Buffer,
        n: u32,
        max_rows: u32,
    ) -> Result<Dispatch, KernelError> {
        check_len("argmax", "x", x, u64::from(n) * u64::from(max_rows))?;
        check_len("argmax", "out", out, u64::from(max_rows))?;
        let params = ArgmaxParams {
            n,
            ..Default::default()
        };
        Ok(self.kernel.dispatch(
            ctx,
            &params,
            vec![
                step.as_entire_binding(),
                x.as_entire_binding(),
                out.as_entire_binding(),
            ],
            Grid::Outputs { x: 1, tile: 1 },
        ))
    }
}
