//! Embedding lookup from a (possibly quantized, possibly split) token table: `shaders/embed.wgsl`.

use super::{
    Dispatch, Grid, Kernel, KernelError, Variant, check_len, check_weight_dtype, shape_error,
};
use crate::format::DType;
use crate::gpu::{GpuContext, WeightTensor};

crate::gpu_params! {
    pub struct EmbedParams {
        pub n_embd: u32,
        pub first_row: u32,
        pub n_rows: u32,
        pub row_bytes: u32,
    }
}

const WG_SIZE: u32 = 64;

pub struct Embed {
    kernel: Kernel,
    dtype: DType,
}

impl Embed {
    fn variant(dtype: DType) -> Variant {
        let mut v = Variant::sized("embed", WG_SIZE);
        v.constants.push(("W_DTYPE", f64::from(dtype.ggml_id())));
        v
    }

    pub fn variants(dtype: DType) -> Vec<Variant> {
        vec![Self::variant(dtype)]
    }

    pub async fn new(ctx: &GpuContext, dtype: DType) -> Result<Self, KernelError> {
        check_weight_dtype("embed", dtype)?;
        let kernel = Kernel::new(ctx, &Self::variant(dtype)).await?;
        Ok(Embed { kernel, dtype })
    }

    /// One dispatch per buffer of `table` (n_vocab, n_embd): each copies the rows of the step's
    /// tokens that it holds into `out` (max_tokens, n_embd).
    pub fn bind(
        &self,
        ctx: &GpuContext,
        step: &wgpu::Buffer,
        table: &WeightTensor,
        out: &wgpu::Buffer,
        max_tokens: u32,
    ) -> Result<Vec<Dispatch>, KernelError> {
        if table.dtype != self.dtype {
            return Err(shape_error(
                "embed",
                format!("table is {}, kernel built for {}", table.dtype, self.dtype),
            ));
        }
        if !table.row_len.is_multiple_of(4) {
            return Err(shape_error(
                "embed",
                format!("row length {} is not a multiple of 4", table.row_len),
            ));
        }
        check_len(
            "embed",
            "out",
            out,
            u64::from(max_tokens) * u64::from(table.row_len),
        )?;
        Ok(table
            .chunks
            .iter()
            .map(|chunk| {
                let params = EmbedParams {
                    n_embd: table.row_len,
                    first_row: chunk.first_row,
                    n_rows: chunk.n_rows,
                    row_bytes: table.row_bytes as u32,
                };
                self.kernel.dispatch(
                    ctx,
                    &params,
                    vec![
                        step.as_entire_binding(),
                        chunk.buffer.as_entire_binding(),
                        out.as_entire_binding(),
                    ],
                    Grid::Tokens { x: 1, tile: 1 },
                )
            })
            .collect())
    }
}
