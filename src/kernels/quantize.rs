//! Activations quantized to two planes of 8 bits in blocks of 32 (`shaders/quantize_q8.wgsl`), for the
//! products that multiply quantized weights with packed 4x8 integer dot products.

use super::{Dispatch, Grid, Kernel, KernelError, Variant, check_len, shape_error};
use crate::gpu::GpuContext;

crate::gpu_params! {
    pub struct QuantizeParams {
        pub n_in: u32,
        pub x_stride: u32,
        pub out_rows: u32,
        pub _pad: u32,
    }
}

const WG_SIZE: u32 = 64;
/// Elements per block.
pub const Q8_BLOCK: u32 = 32;
/// Bytes per block in the quantized buffer: two planes of 32 bytes, then d, d / 254 and the
/// sum as f32 bits, padded to a vec4.
pub const Q8_BLOCK_BYTES: u64 = 80;

/// Bytes a quantized buffer takes for `rows` rows of `n_in` elements.
pub fn q8_len(rows: u32, n_in: u32) -> u64 {
    u64::from(rows) * u64::from(n_in / Q8_BLOCK) * Q8_BLOCK_BYTES
}

pub struct QuantizeQ8 {
    kernel: Kernel,
}

impl QuantizeQ8 {
    fn variant() -> Variant {
        Variant::sized("quantize_q8", WG_SIZE)
    }

    pub fn variants() -> Vec<Variant> {
        vec![Self::variant()]
    }

    pub async fn new(ctx: &GpuContext) -> Result<Self, KernelError> {
        Ok(QuantizeQ8 {
            kernel: Kernel::new(ctx, &Self::variant()).await?,
        })
    }

    /// `xq` (`rows` rows of n_in / 32 blocks) from the step's rows of `x` (rows of `x_stride`):
    /// its tokens, or with `out_rows` its output rows.
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &self,
        ctx: &GpuContext,
        step: &wgpu::Buffer,
        x: &wgpu::Buffer,
        xq: &wgpu::Buffer,
        n_in: u32,
        x_stride: u32,
        rows: u32,
        out_rows: bool,
    ) -> Result<Dispatch, KernelError> {
        let op = "quantize_q8";
        if !n_in.is_multiple_of(Q8_BLOCK) || !x_stride.is_multiple_of(4) || x_stride < n_in {
            return Err(shape_error(
                op,
                format!("rows of {n_in} (a multiple of {Q8_BLOCK} needed) in x rows of {x_stride}"),
            ));
        }
        check_len(op, "x", x, u64::from(rows) * u64::from(x_stride))?;
        if xq.size() < q8_len(rows, n_in) {
            return Err(shape_error(
                op,
                format!(
                    "xq holds {} bytes, {} needed",
                    xq.size(),
                    q8_len(rows, n_in)
                ),
            ));
        }
        let params = QuantizeParams {
            n_in,
            x_stride,
            out_rows: u32::from(out_rows),
            _pad: 0,
        };
        let x_groups = (n_in / Q8_BLOCK).div_ceil(WG_SIZE);
        let grid = if out_rows {
            Grid::Outputs {
                x: x_groups,
                tile: 1,
            }
        } else {
            Grid::Tokens {
                x: x_groups,
                tile: 1,
            }
        };
        Ok(self.kernel.dispatch(
            ctx,
            &params,
            vec![
                step.as_entire_binding(),
                x.as_entire_binding(),
                xq.as_entire_binding(),
            ],
            grid,
        ))
    }
}
