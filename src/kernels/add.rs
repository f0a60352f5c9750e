//! Residual add, `x += y`: `shaders/add.wgsl`.

use super::{Dispatch, Grid, Kernel, KernelError, Variant, check_len};
use crate::gpu::GpuContext;

crate::gpu_params! {
    pub struct AddParams {
        pub n: u32,
        pub _pad0: u32,
        pub _pad1: u32,
        pub _pad2: u32,
    }
}

const WG_SIZE: u32 = 256;

pub struct Add {
    kernel: Kernel,
}

impl Add {
    fn variant() -> Variant {
        Variant::sized("add", WG_SIZE)
    }

    pub fn variants() -> Vec<Variant> {
        vec![Self::variant()]
    }

    pub async fn new(ctx: &GpuContext) -> Result<Self, KernelError> {
        Ok(Add {
            kernel: Kernel::new(ctx, &Self::variant()).await?,
        })
    }

    pub fn bind(
        &self,
        ctx: &GpuContext,
        step: &wgpu::Buffer,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        n: u32,
        max_tokens: u32,
    ) -> Result<Dispatch, KernelError> {
        let len = u64::from(n) * u64::from(max_tokens);
        check_len("add", "x", x, len)?;
        check_len("add", "y", y, len)?;
        let params = AddParams {
            n,
            ..Default::default()
        };
        Ok(self.kernel.dispatch(
            ctx,
            &params,
            vec![
                step.as_entire_binding(),
                x.as_entire_binding(),
                y.as_entire_binding(),
            ],
            Grid::Tokens {
                x: n.div_ceil(WG_SIZE),
                tile: 1,
            },
        ))
    }
}
